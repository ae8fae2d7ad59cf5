"""Run records: the typed, versioned RunRecord, and checkpoints in Aurora 0.1's format (an untyped dict)."""
import json, shutil
from dataclasses import asdict
from tinygrad.nn.state import safe_load, safe_save
from aurora_tg import checkpoint
from test_chat import chat
from test_train_cli import finished_run, train  # noqa: F401  (finished_run is a fixture)


def write_version_1(source, out, corpus):
  """The checkpoint at source rewritten as Aurora 0.1 wrote it: the same tensors, and its record as a plain dict of
  config, tokenizer, stage, the recorded arguments, step, rng and settings (copied from a real 0.1 checkpoint)."""
  record = checkpoint.read_record(source)
  settings = asdict(record.run.train) | {"devices": []}
  old = {"config": record.model.to_dict(), "tokenizer": record.tokenizer, "stage": "pretrain",
         "args": {"size": "tiny", "data": str(corpus), "tokenizer": None, "optimizer": None, "init": None, "teacher": None,
                  "freeze": None, "norm": None, "pos": None, "mlp": None},
         "step": record.step, "rng": record.rng, "settings": settings}
  out.mkdir()
  safe_save({k: v.to("CPU") for k, v in safe_load(str(source / checkpoint.CHECKPOINT_NAME)).items()},
            str(out / checkpoint.CHECKPOINT_NAME), metadata={"aurora": json.dumps(old)})
  shutil.copy(source / checkpoint.TOKENIZER_NAME, out / checkpoint.TOKENIZER_NAME)
  return record


def test_a_version_1_checkpoint_loads_chats_and_resumes(finished_run, tmp_path):
  source, corpus, _ = finished_run
  original = write_version_1(source, tmp_path / "old", corpus)
  upgraded = checkpoint.read_record(tmp_path / "old")
  assert upgraded.model == original.model and upgraded.step == original.step and upgraded.rng == original.rng
  assert upgraded.run.train == original.run.train and upgraded.run.size == "tiny" and upgraded.run.tokenizer == "bpe"
  answer = chat("--checkpoint", tmp_path / "old", "--complete", "the cat", "--temperature", "0", "--max-tokens", "4")
  assert answer.returncode == 0 and answer.stdout.startswith("the cat"), answer.stderr
  resumed = train("--resume", "--out", tmp_path / "old", "--steps", "6", check_code=0)
  assert f"resuming at step {original.step}" in resumed.stdout and "step     6: val loss" in resumed.stdout
  now = checkpoint.read_record(tmp_path / "old")
  assert now.version == checkpoint.FORMAT_VERSION and now.step == 6


def test_a_record_from_a_newer_aurora_is_refused(finished_run, tmp_path):
  source, _, _ = finished_run
  tensors = {k: v.to("CPU") for k, v in safe_load(str(source / checkpoint.CHECKPOINT_NAME)).items()}
  (tmp_path / "new").mkdir()
  future = json.loads(checkpoint.read_record(source).to_json(source)) | {"version": checkpoint.FORMAT_VERSION + 1}
  safe_save(tensors, str(tmp_path / "new" / checkpoint.CHECKPOINT_NAME), metadata={"aurora": json.dumps(future)})
  proc = train("--resume", "--out", tmp_path / "new")
  assert proc.returncode == 2 and "newer than this Aurora's" in proc.stderr
