"""train.py end to end: a short run, resume, Ctrl-C (in a real subprocess), and every bad input's one-line error."""
import json, os, signal, subprocess, sys
import numpy as np
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
  stderr_file = open(tmp_path / "stderr.txt", "w+")  # not a pipe: unread, a full pipe would block the run
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr_file, text=True, env=os.environ | {"PYTHONUNBUFFERED": "1"})
  for line in proc.stdout:
    if line.startswith("step") and "tok/s" in line: break
  proc.send_signal(signal.SIGINT)
  stdout, _ = proc.communicate(timeout=300)
  stderr = (tmp_path / "stderr.txt").read_text()
  assert proc.returncode == 130, stdout + stderr
  assert "interrupted at step" in stdout and "Traceback" not in stderr
  assert (tmp_path / "checkpoint.safetensors").exists()


def interrupt_at(monkeypatch, step: int):
  """Ctrl-C right after optimizer step `step`, through the same SIGINT handler a user's Ctrl-C reaches."""
  from aurora_tg.trainer import Trainer
  original = Trainer.train_step
  def step_then_interrupt(self):
    result = original(self)
    if self.step == step: signal.raise_signal(signal.SIGINT)
    return result
  monkeypatch.setattr(Trainer, "train_step", step_then_interrupt)


def final_state(run) -> tuple[dict, list]:
  """The checkpoint's tensors as numpy, and every logged loss by step."""
  from aurora_tg import checkpoint
  model, optim, record = checkpoint.load(run)
  tensors = {k: v.numpy() for k, v in {**model, **{f"optim.{k}": v for k, v in optim.items()}}.items()}
  losses = [(m["step"], m.get("train_loss"), m.get("val_loss")) for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]
  return tensors, losses, record


def assert_resume_equals_uninterrupted(monkeypatch, tmp_path, *args):
  """`train.py ARGS` run through, and stopped after step 2 then resumed with `--resume --out DIR` alone: same losses,
  weights and optimizer state, and the same record (the settings came back from it)."""
  train(*args, "--out", tmp_path / "through", check_code=0)
  with monkeypatch.context() as m:
    interrupt_at(m, 2)
    stopped = train(*args, "--out", tmp_path / "stopped")
  assert stopped.returncode == 130 and "interrupted at step 2" in stopped.stdout, stopped.stdout + stopped.stderr
  resumed = train("--resume", "--out", tmp_path / "stopped", check_code=0)
  assert "resuming at step 2" in resumed.stdout
  (through, through_losses, through_record), (again, again_losses, again_record) = (final_state(tmp_path / r) for r in ("through", "stopped"))
  assert again_losses == through_losses
  assert through.keys() == again.keys()
  for name, value in through.items(): np.testing.assert_array_equal(again[name], value, err_msg=name)
  assert again_record.run.train == through_record.run.train and again_record.step == through_record.step


def test_resume_takes_every_setting_from_the_record(monkeypatch, tmp_path, text_file):
  assert_resume_equals_uninterrupted(monkeypatch, tmp_path, "--stage", "pretrain", "--size", "tiny", "--data", text_file,
                                     "--steps", "4", "--eval-every", "3", "--batch-size", "4", "--grad-accum", "2",
                                     "--lr", "0.02", "--dtype", "float16", "--optimizer", "muon", "--seed", "3")


@pytest.mark.parametrize("stage", ["sft", "lora", "distill"])
def test_fine_tuning_stages_resume_from_their_record(stage, monkeypatch, finished_run, tmp_path):
  base, corpus, _ = finished_run
  start = ["--teacher", base, "--data", corpus] if stage == "distill" else ["--init", base, "--freeze", "1"] if stage == "sft" else \
          ["--init", base, "--lora-rank", "4", "--lora-targets", "c_attn,c_fc"]
  assert_resume_equals_uninterrupted(monkeypatch, tmp_path, "--stage", stage, *start, "--steps", "4", "--eval-every", "3",
                                     "--batch-size", "2", "--lr", "0.004")


def test_resume_refuses_flags_that_contradict_the_record_but_may_go_longer(finished_run, tmp_path):
  out, _, _ = finished_run
  assert_one_line_error(train("--resume", "--out", out, "--lr", "0.5"), "--lr 0.5 does not match the run being resumed (0.003)")
  assert_one_line_error(train("--resume", "--out", out, "--stage", "sft"), "does not match the run being resumed (pretrain)")
  assert_one_line_error(train("--resume", "--out", out, "--freeze", "1"), "--freeze applies to --stage sft, not to pretrain")


def no_backend_env(tmp_path) -> dict:
  """A machine where no tinygrad backend works: no clang on PATH, no OpenCL driver, no GPU."""
  (tmp_path / "bin").mkdir(), (tmp_path / "icd").mkdir()
  keep = {k: os.environ[k] for k in ("TIKTOKEN_CACHE_DIR", "AURORA_CACHE") if k in os.environ}
  return keep | {"HOME": str(tmp_path), "PATH": str(tmp_path / "bin"), "OCL_ICD_VENDORS": str(tmp_path / "icd")}


@pytest.mark.parametrize("script", ["train.py", "chat.py"])
def test_without_a_working_backend_one_line_says_what_to_install(script, tmp_path):
  proc = subprocess.run([sys.executable, str(ROOT / script)], capture_output=True, text=True, cwd=tmp_path, env=no_backend_env(tmp_path), timeout=300)
  assert_one_line_error(proc, "no tinygrad backend works on this machine")
  assert "apt install clang" in proc.stderr and "pocl-opencl-icd" in proc.stderr and proc.stdout == ""


def test_no_compiler_output_reaches_the_console(tmp_path, text_file):
  """`train.py --size tiny --steps 3` on each CPU backend, kernels compiled afresh (CACHELEVEL=0): PoCL's built-in
  clang used to print '1 warning generated.' for dozens of them."""
  from aurora_tg.devices import works
  backends = [d for d in ("CL", "CPU") if works(d)]
  for device in backends:
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--size", "tiny", "--steps", "3", "--data", str(text_file),
                           "--device", device, "--out", str(tmp_path / device)], capture_output=True, text=True,
                          env=os.environ | {"CACHELEVEL": "0", "DEV": device}, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    noise = [l for l in (proc.stdout + proc.stderr).splitlines() if "warning" in l or "generated." in l or "error" in l]
    assert not noise, f"{device}: {noise[:3]}"
  assert backends, "neither CPU nor CL works here"


def test_a_folder_in_use_is_refused_and_sigterm_saves_for_resume(tmp_path, text_file):
  """A real run in a subprocess: a second run into its folder is refused naming it; SIGTERM (a scheduler's notice)
  saves and exits 143; a stale temporary is cleared; the resumed run ends where an uninterrupted one does."""
  args = ["--stage", "pretrain", "--size", "tiny", "--steps", "30", "--eval-every", "30", "--batch-size", "4", "--data", str(text_file)]
  train(*args, "--out", tmp_path / "through", check_code=0)
  cmd = [sys.executable, str(ROOT / "train.py"), *args, "--out", str(tmp_path / "run")]
  stderr_file = open(tmp_path / "stderr.txt", "w+")  # not a pipe: unread, a full pipe would block the run
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr_file, text=True, env=os.environ | {"PYTHONUNBUFFERED": "1"})
  for line in proc.stdout:
    if line.startswith("step") and "tok/s" in line: break
  assert_one_line_error(train(*args, "--out", tmp_path / "run"), f"is in use by process {proc.pid} (train.py")
  proc.send_signal(signal.SIGTERM)
  stdout, _ = proc.communicate(timeout=300)
  stderr = (tmp_path / "stderr.txt").read_text()
  assert proc.returncode == 143 and "terminated at step" in stdout and "Traceback" not in stderr, stdout + stderr
  (tmp_path / "run" / "checkpoint.safetensors.tmp-1-dead").write_bytes(b"left by a killed writer")
  train("--resume", "--out", tmp_path / "run", check_code=0)
  assert not list((tmp_path / "run").glob("*.tmp*"))
  (through, through_losses, _), (again, again_losses, _) = final_state(tmp_path / "through"), final_state(tmp_path / "run")
  assert again_losses == through_losses
  for name, value in through.items(): np.testing.assert_array_equal(again[name], value, err_msg=name)
