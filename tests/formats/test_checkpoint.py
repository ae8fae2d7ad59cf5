"""Run records: the typed, versioned RunRecord, and checkpoints in Aurora 0.1's format (an untyped dict)."""
import errno, json, os, shutil, subprocess
import pytest
from dataclasses import asdict
from tinygrad.nn.state import safe_load, safe_load_metadata, safe_save
from aurora_tg.formats import checkpoint
from aurora_tg.formats import files
from test_chat import chat
from test_train import assert_one_line_error, train


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


def mount_tmpfs(folder, size: int) -> bool:
  """A real small file system, where this machine lets the tests mount one (root, no container rule against it)."""
  if os.geteuid() != 0 or shutil.which("mount") is None: return False
  return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True).returncode == 0


def test_a_full_disk_stops_the_run_with_one_line_and_the_last_checkpoint_intact(monkeypatch, tmp_path, text_file):
  args = ["--stage", "pretrain", "--size", "tiny", "--batch-size", "4", "--data", text_file, "--eval-every", "2"]
  train(*args, "--steps", "2", "--out", tmp_path / "sizing", check_code=0)
  size = (tmp_path / "sizing" / checkpoint.CHECKPOINT_NAME).stat().st_size
  disk = tmp_path / "disk"
  disk.mkdir()
  # room for the first checkpoint (with tokenizer and metrics), not for the second's temporary beside it
  mounted = mount_tmpfs(disk, (size * 3 // 2 + (tmp_path / "sizing" / "tokenizer.json").stat().st_size) // 4096 * 4096 + 8192)
  if not mounted:  # the same failure, raised by the write itself once half of the second checkpoint is out
    written, write_all = [0], files._write_all
    def filling(fd, data):
      written[0] += len(memoryview(data).cast("B"))
      if written[0] > size * 3 // 2: raise OSError(errno.ENOSPC, "No space left on device")
      write_all(fd, data)
    monkeypatch.setattr(files, "_write_all", filling)
  try:
    proc = train(*args, "--steps", "4", "--out", disk / "run")
    assert_one_line_error(proc, "No space left on device (needed")
    assert checkpoint.read_record(disk / "run").step == 2 and checkpoint.load(disk / "run")[2].step == 2
    assert not list((disk / "run").glob("*.tmp*")) and "Traceback" not in proc.stderr
  finally:
    if mounted: subprocess.run(["umount", str(disk)], check=True)


def test_a_flipped_byte_in_a_checkpoint_is_one_error_line_naming_the_tensor(finished_run, tmp_path):
  source = finished_run[0]
  shutil.copytree(source, tmp_path / "run", ignore=shutil.ignore_patterns(".lock"))
  path = tmp_path / "run" / checkpoint.CHECKPOINT_NAME
  _, data_start, header = safe_load_metadata(str(path))
  raw = bytearray(path.read_bytes())
  raw[data_start + header["model.h.1.mlp.c_fc.weight"]["data_offsets"][0] + 101] ^= 0x01
  path.write_bytes(bytes(raw))
  answer = chat("--checkpoint", tmp_path / "run", "--complete", "the cat")
  assert_one_line_error(answer, "tensor model.h.1.mlp.c_fc.weight do not match their checksum")
  assert_one_line_error(train("--resume", "--out", tmp_path / "run", "--steps", "6"), "model.h.1.mlp.c_fc.weight")


def test_keep_and_keep_best(tmp_path, text_file):
  train("--stage", "pretrain", "--size", "tiny", "--batch-size", "4", "--data", text_file, "--steps", "6", "--eval-every", "2",
        "--keep", "2", "--keep-best", "--out", tmp_path / "run", check_code=0)
  assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-000004.safetensors", "checkpoint-000006.safetensors"]
  assert checkpoint.read_record(tmp_path / "run" / "checkpoint-000004.safetensors").step == 4
  evals = [(m["val_loss"], m["step"]) for m in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
           if m.get("val_loss") is not None and m["step"] > 0]
  best = checkpoint.read_record(tmp_path / "run" / checkpoint.BEST_NAME)
  assert (best.best_val_loss, best.step) == min(evals)


def test_a_read_only_folder_is_one_error_line(tmp_path, text_file):
  folder = tmp_path / "ro"
  folder.mkdir()
  if not mount_tmpfs(folder, 1 << 20): pytest.skip("cannot mount a file system here (not root, or not allowed)")
  try:
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    assert_one_line_error(train("--stage", "pretrain", "--size", "tiny", "--data", text_file, "--out", folder / "run"),
                          "Read-only file system")
  finally: subprocess.run(["umount", str(folder)], check=True)
