"""The metrics log: metrics.jsonl and, with --wandb, Weights & Biases (offline: local files, no account)."""
import json, sys
import pytest
from aurora_tg.formats import checkpoint
from aurora_tg.tools.metrics import RunLog, read_metrics
from test_train import TINY_RUN, assert_one_line_error, train


def test_a_resumed_log_drops_what_came_after_its_checkpoint(tmp_path):
  log = RunLog(tmp_path, step=0)
  for step in range(1, 6): log({"step": step, "train_loss": 1.0 / step})
  log.close()
  again = RunLog(tmp_path, step=3)
  again({"step": 4, "train_loss": 0.2})
  again.close()
  assert [(m["step"], m["train_loss"]) for m in read_metrics(tmp_path)] == [(1, 1.0), (2, 0.5), (3, 1 / 3), (4, 0.2)]


def test_wandb_offline_gets_the_same_metrics_and_a_resumed_run_continues_it(monkeypatch, tmp_path, text_file):
  pytest.importorskip("wandb")
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")
  out = tmp_path / "run"
  train(*TINY_RUN, "--data", text_file, "--out", out, "--wandb", "aurora-test", check_code=0)
  run_id = checkpoint.read_record(out).wandb_id
  logs = list((out / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
  assert len(logs) == 1
  # W&B's log holds each value as the JSON text of the float
  written = logs[0].read_bytes()
  losses = [m["val_loss"] for m in read_metrics(out) if m.get("val_loss") is not None]
  assert len(losses) == 3 and all(json.dumps(v).encode() in written for v in losses)
  train("--resume", "--out", out, "--steps", "6", check_code=0)
  assert checkpoint.read_record(out).wandb_id == run_id
  assert len(list((out / "wandb").glob(f"offline-run-*-{run_id}"))) == 2  # the same run id, resumed


def test_without_wandb_installed_the_flag_is_one_error_line(monkeypatch, tmp_path, text_file):
  monkeypatch.setitem(sys.modules, "wandb", None)  # what `import wandb` meets where it is not installed
  assert_one_line_error(train(*TINY_RUN, "--data", text_file, "--out", tmp_path / "o", "--wandb", "p"), "pip install wandb")
