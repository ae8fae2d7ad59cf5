"""train.py end to end: a short run, resume, Ctrl-C (in a real subprocess), and every bad input's one-line error."""
import json, os, signal, subprocess, sys
import pytest
import train as train_script
from conftest import ROOT, run_main

TINY_RUN = ["--size", "tiny", "--steps", "4", "--eval-every", "2", "--batch-size", "4"]


def train(*args, check_code=None):
  """`python train.py ARGS`, run in this process (see conftest.run_main)."""
  proc = run_main(train_script.main, args)
  if check_code is not None: assert proc.returncode == check_code, proc.stdout + proc.stderr
  return proc


def assert_one_line_error(proc, fragment):
  assert proc.returncode == 2, proc.stdout + proc.stderr
  assert "Traceback" not in proc.stderr
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and fragment in errors[0], proc.stderr


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """One short tiny run on a generated corpus, shared by the tests that need a checkpoint."""
  tmp = tmp_path_factory.mktemp("run")
  corpus = tmp / "corpus.txt"
  from conftest import sample_text
  corpus.write_text(sample_text(20000), encoding="utf-8")
  proc = train(*TINY_RUN, "--data", corpus, "--out", tmp / "out", check_code=0)
  return tmp / "out", corpus, proc.stdout


def test_short_run_writes_checkpoint_tokenizer_and_metrics(finished_run):
  out, _, stdout = finished_run
  assert f"checkpoint: {out / 'checkpoint.safetensors'}" in stdout
  assert "tok/s" in stdout and "left" in stdout and "val loss" in stdout and "sample:" in stdout
  assert (out / "tokenizer.json").exists()
  metrics = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
  assert any({"step", "train_loss", "lr", "tokens_per_s", "elapsed_s"} <= m.keys() for m in metrics)
  assert [m["step"] for m in metrics if "val_loss" in m] == [0, 2, 4]


def test_resume_continues_from_the_saved_step(finished_run, tmp_path):
  out, corpus, _ = finished_run
  copy = tmp_path / "copy"
  copy.mkdir()
  for f in out.iterdir(): (copy / f.name).write_bytes(f.read_bytes())
  proc = train("--resume", "--out", copy, "--steps", "6", "--eval-every", "2", "--batch-size", "4", check_code=0)
  assert "resuming at step 4" in proc.stdout and "step     6: val loss" in proc.stdout


def test_existing_checkpoint_needs_resume(finished_run):
  out, corpus, _ = finished_run
  assert_one_line_error(train(*TINY_RUN, "--data", corpus, "--out", out), "--resume")


def test_config_mismatch_on_resume(finished_run):
  out, _, _ = finished_run
  assert_one_line_error(train("--resume", "--out", out, "--size", "small"), "does not match")


def test_corrupt_checkpoint_on_resume(tmp_path):
  (tmp_path / "checkpoint.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!")
  assert_one_line_error(train("--resume", "--out", tmp_path), "corrupt")


def test_nothing_to_resume(tmp_path):
  assert_one_line_error(train("--resume", "--out", tmp_path / "none"), "nothing to resume")


@pytest.mark.parametrize("args, fragment", [
  (["--device", "TPU9000"], "unknown device"),
  (["--device", "CUDA"], "not available"),
  (["--size", "enormous"], "unknown size"),
  (["--steps", "0"], "--steps must be at least 1"),
  (["--batch-size", "0"], "--batch-size must be at least 1"),
  (["--optimizer", "adamax-ultra"], "unknown optimizer"),
  (["--devices", "CPU:0,CPU:1", "--batch-size", "3"], "--batch-size 3 does not split evenly across 2 devices"),
  (["--devices", "CPU:0,TPU:1"], "unknown device 'TPU:1' in --devices"),
  (["--devices", "CPU:0,CPU:0"], "lists a device twice"),
  (["--devices", "CPU:1"], "data parallel needs two or more devices"),
  (["--device", "CPU:1"], "--device takes a backend such as CPU"),
  (["--dtype", "float8"], "--dtype must be float32, bfloat16 or float16"),
])
def test_bad_arguments(args, fragment, text_file, tmp_path):
  assert_one_line_error(train("--size", "tiny", "--data", text_file, "--out", tmp_path / "o", *args), fragment)


def test_unavailable_device_lists_the_working_ones(tmp_path):
  proc = train("--device", "METAL", "--out", tmp_path)
  assert_one_line_error(proc, "working here: ")
  assert "CPU" in proc.stderr


@pytest.mark.parametrize("content, fragment", [
  (None, "does not exist"),
  (b"", "holds no text"),
  (bytes(range(256)) * 10, "binary"),
  ("déjà vu".encode("latin-1"), "not UTF-8"),
  (b"only a few words here", "needs at least"),
])
def test_bad_data(content, fragment, tmp_path):
  path = tmp_path / "data.txt"
  if content is not None: path.write_bytes(content)
  assert_one_line_error(train("--size", "tiny", "--data", path, "--out", tmp_path / "o"), fragment)


def test_ctrl_c_saves_and_resumes(text_file, tmp_path):
  cmd = [sys.executable, str(ROOT / "train.py"), "--size", "tiny", "--steps", "100000", "--eval-every", "100000",
         "--batch-size", "4", "--data", str(text_file), "--out", str(tmp_path)]
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ | {"PYTHONUNBUFFERED": "1"})
  for line in proc.stdout:
    if line.startswith("step") and "tok/s" in line: break
  proc.send_signal(signal.SIGINT)
  stdout, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 130, stdout + stderr
  assert "interrupted at step" in stdout and "Traceback" not in stderr
  assert (tmp_path / "checkpoint.safetensors").exists()
