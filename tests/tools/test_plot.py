"""Loss plots: each run's loss.png, and python -m aurora_tg.plot overlaying several runs."""
import json
import numpy as np
import pytest
from aurora_tg.cli import plot as plot_command
from aurora_tg.tools import plot
from conftest import run_main

matplotlib = pytest.importorskip("matplotlib")
COLORS = {"C0": (0x1f, 0x77, 0xb4), "C1": (0xff, 0x7f, 0x0e)}  # matplotlib's first two line colours


def pixels_of(png, color) -> int:
  image = (matplotlib.image.imread(png)[..., :3] * 255).round()
  return int((np.abs(image - np.array(color)).max(-1) <= 8).sum())


def fake_run(folder, losses):
  folder.mkdir()
  lines = [{"step": 0, "train_loss": None, "val_loss": losses[0], "elapsed_s": 0.0}]
  for step, loss in enumerate(losses[1:], 1):
    lines += [{"step": step, "train_loss": loss, "lr": 1e-3, "elapsed_s": step * 30.0},
              {"step": step, "train_loss": loss, "val_loss": loss + 0.1, "elapsed_s": step * 30.0}]
  (folder / "metrics.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
  return folder


def test_curves_split_log_lines_from_evaluations(tmp_path):
  run = fake_run(tmp_path / "a", [5.0, 4.0, 3.0])
  curves = plot.curves(plot.read_metrics(run))
  assert curves["train"] == [(1, 30.0, 4.0), (2, 60.0, 3.0)]
  assert curves["val"] == [(0, 0.0, 5.0), (1, 30.0, 4.1), (2, 60.0, 3.1)]


def test_a_finished_run_has_its_loss_png(finished_run):
  png = finished_run[0] / "loss.png"
  assert png.is_file() and pixels_of(png, COLORS["C0"]) > 50


def test_plot_overlays_several_runs_in_one_png(tmp_path):
  runs = [fake_run(tmp_path / "adamw", [6.0, 5.0, 4.5, 4.2]), fake_run(tmp_path / "aurora", [6.0, 4.6, 4.0, 3.7])]
  proc = run_main(plot_command.main, [*runs, "--out", tmp_path / "both.png"])
  assert proc.returncode == 0 and "wrote" in proc.stdout, proc.stderr
  assert pixels_of(tmp_path / "both.png", COLORS["C0"]) > 50 and pixels_of(tmp_path / "both.png", COLORS["C1"]) > 50
  single = run_main(plot_command.main, [runs[0], "--out", tmp_path / "one.png"])
  assert single.returncode == 0 and pixels_of(tmp_path / "one.png", COLORS["C1"]) == 0


def test_a_folder_without_metrics_is_one_error_line(tmp_path):
  proc = run_main(plot_command.main, [tmp_path, "--out", tmp_path / "x.png"])
  assert proc.returncode == 2 and proc.stderr.startswith("error:") and "no metrics.jsonl" in proc.stderr
