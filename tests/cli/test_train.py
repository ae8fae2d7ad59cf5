"""train.py end to end: a short run, resume after Ctrl-C (its SIGINT handler) and SIGTERM (to a real subprocess), and every
bad input's one-line error."""
import json, math, os, signal, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
import train as train_script
from aurora_tg.formats import checkpoint
from aurora_tg.cli.train import given_flags, machine
CPU = machine("CPU")  # what the config asks of the machine, answered here by tinygrad's CPU backend
from conftest import ROOT, TINY_RUN, run_main


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
  (["--device", "ABSENT"], "not available"),  # ABSENT: a backend Aurora knows that does not work here (absent_backend)
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
  args = [absent_backend() if a == "ABSENT" else a for a in args]
  assert_one_line_error(train("--size", "tiny", "--data", text_file, "--out", tmp_path / "o", *args), fragment)


def absent_backend() -> str:
  """A backend Aurora knows (devices.BACKENDS) that does not work on this machine, as tinygrad reports it: not a
  fixed name such as CUDA or METAL, which a GPU machine or a Mac has."""
  from aurora_tg.backends.devices import BACKENDS, works
  absent = [b for b in BACKENDS if not works(b)]
  if not absent: pytest.skip(f"every backend Aurora knows works here ({', '.join(BACKENDS)})")
  return absent[0]


def test_unavailable_device_lists_the_working_ones(tmp_path):
  from tinygrad import Device
  proc = train("--device", absent_backend(), "--out", tmp_path)
  assert_one_line_error(proc, "working here: ")
  assert Device.DEFAULT.split(":")[0] in proc.stderr.split("working here: ")[1]  # the backend these tests run on


@pytest.mark.parametrize("content, fragment", [
  (None, "does not exist"),
  (b"", "is empty"),
  (bytes(range(256)) * 10, "binary"),
  ("déjà vu".encode("latin-1"), "not UTF-8"),
  (b"only a few words here", "too short for a context of 64"),
])
def test_bad_data(content, fragment, tmp_path):
  path = tmp_path / "data.txt"
  if content is not None: path.write_bytes(content)
  assert_one_line_error(train("--size", "tiny", "--data", path, "--out", tmp_path / "o"), fragment)


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
  from aurora_tg.formats import checkpoint
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
  return resumed, again_record


def test_resume_takes_every_setting_from_the_record(monkeypatch, tmp_path, text_file):
  """With gradient accumulation, mixed precision, an optimizer other than the default and data parallel over a count of
  devices (Aurora over two devices, resumed on one: tests/test_trainer.py)."""
  from tinygrad import Device
  resumed, record = assert_resume_equals_uninterrupted(
    monkeypatch, tmp_path, "--stage", "pretrain", "--size", "tiny", "--data", text_file, "--steps", "4", "--eval-every", "3",
    "--batch-size", "4", "--grad-accum", "2", "--lr", "0.02", "--dtype", "float16", "--optimizer", "adamw", "--seed", "3", "--devices", "2")
  two = tuple(f"{Device.DEFAULT.split(':')[0]}:{i}" for i in range(2))  # --devices 2: the default backend's first two
  assert record.run.train.devices == two and f"devices {','.join(two)}, float16 compute" in resumed.stdout
  assert (record.run.train.grad_accum, record.run.train.optimizer, record.run.train.seed) == (2, "adamw", 3)


# qlora: LoRA's own flags too (a LoRA run over a float base resumes the same way, less the quantizing)
FINE_TUNING_RUNS = {"sft": ["--stage", "sft", "--freeze", "1"],
                    "qlora": ["--stage", "lora", "--lora-rank", "4", "--lora-targets", "c_attn,c_fc", "--base-quantize", "nf4"],
                    "adapter": ["--stage", "adapter", "--adapter-size", "8"],
                    "dpo": ["--stage", "dpo"], "distill": ["--stage", "distill"]}


@pytest.mark.parametrize("run", FINE_TUNING_RUNS)
def test_fine_tuning_stages_resume_from_their_record(run, monkeypatch, finished_run, tmp_path):
  base, corpus, _ = finished_run
  start = ["--teacher", base, "--data", corpus] if run == "distill" else ["--init", base]
  if run == "dpo":  # a few pairs of its own: the default pairs' held-out set takes a minute to evaluate here
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps({"prompt": f"the cat {i}?", "chosen": "sat on a mat", "rejected": "ran past"}) for i in range(24)))
    start += ["--data", pairs]
  assert_resume_equals_uninterrupted(monkeypatch, tmp_path, *FINE_TUNING_RUNS[run], *start, "--steps", "4", "--eval-every", "3",
                                     "--batch-size", "2", "--lr", "0.004")


def test_bad_fine_tuning_flags_are_one_error_line(finished_run, tmp_path):
  base = finished_run[0]
  assert_one_line_error(train("--stage", "sft", "--init", base, "--dpo-beta", "0.2", "--out", tmp_path / "o"),
                        "--dpo-beta applies to --stage dpo, not to sft")
  assert_one_line_error(train("--stage", "dpo", "--init", base, "--base-quantize", "nf4", "--out", tmp_path / "o"),
                        "--base-quantize is for a frozen base: give --lora-rank too")
  assert_one_line_error(train("--stage", "dpo", "--init", base, "--dpo-beta", "0", "--out", tmp_path / "o"), "--dpo-beta must be positive")
  assert_one_line_error(train("--stage", "dpo", "--init", base, "--devices", "2", "--out", tmp_path / "o"), "--stage dpo trains on one device")
  assert_one_line_error(train("--stage", "dpo", "--init", base, "--lora-alpha", "4", "--out", tmp_path / "o"), "--lora-alpha go with --lora-rank")
  assert_one_line_error(train("--stage", "adapter", "--init", base, "--adapter-size", "0", "--out", tmp_path / "o"), "--adapter-size must be at least 1")
  unknown = train("--stage", "lora", "--init", base, "--base-quantize", "nf3", "--out", tmp_path / "o")
  usage_error = [l for l in unknown.stderr.splitlines() if "error:" in l]
  assert unknown.returncode == 2 and len(usage_error) == 1 and "argument --base-quantize: invalid choice: 'nf3'" in usage_error[0]


def test_resume_refuses_flags_that_contradict_the_record_but_may_go_longer(finished_run, tmp_path):
  out, _, _ = finished_run
  assert_one_line_error(train("--resume", "--out", out, "--lr", "0.5"), "--lr 0.5 does not match the run being resumed (0.05)")
  assert_one_line_error(train("--resume", "--out", out, "--stage", "sft"), "does not match the run being resumed (pretrain)")
  assert_one_line_error(train("--resume", "--out", out, "--freeze", "1"), "--freeze applies to --stage sft, not to pretrain")


def test_plain_train_py_pretrains_then_chat_fine_tunes_and_chat_talks_to_the_result(monkeypatch, tmp_path):
  """`python train.py` as README.md's quick start runs it, in a fresh folder, made small: the tiny preset, 2
  pretraining steps and (through the defaults table, which has no flag in this pipeline) 4 fine-tuning steps.
  Pretraining on Python's documentation into runs/tiny, chat fine-tuning into runs/tiny-sft; then `python chat.py`
  with no flags answers from the fine-tuned model."""
  from aurora_tg import config
  from test_chat import greedy_answer
  import chat as chat_script
  monkeypatch.setitem(config.DEFAULTS, "sft", {**config.DEFAULTS["sft"], "steps": 4})
  proc = run_main(train_script.main, ["--size", "tiny", "--steps", "2", "--batch-size", "2", "--workers", "1"], cwd=tmp_path)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
  runs = tmp_path / "runs"
  pretrained, tuned = checkpoint.read_record(runs / "tiny"), checkpoint.read_record(runs / "tiny-sft")
  assert (pretrained.stage, pretrained.step, pretrained.run.data, pretrained.run.chat_after) == ("pretrain", 2, None, True)
  assert (tuned.stage, tuned.step, Path(tuned.run.init).resolve()) == ("sft", 4, (runs / "tiny").resolve())
  assert (tuned.run.train.batch_size, tuned.run.train.seed, tuned.run.train.lr) == (2, pretrained.run.train.seed, config.DEFAULTS["sft"]["lr"])
  assert (runs / "tiny-sft" / checkpoint.TOKENIZER_NAME).read_text() == (runs / "tiny" / checkpoint.TOKENIZER_NAME).read_text()
  assert "chat fine-tuning the pretrained model" in proc.stdout and "held-out assistant-token loss" in proc.stdout
  question = "What is the json module for?"
  answer = run_main(chat_script.main, ["--temperature", "0", "--repetition-penalty", "1", "--max-tokens", "8", "-p", question], cwd=tmp_path)
  model, tokenizer, _ = checkpoint.load_model(runs / "tiny-sft")
  expected = greedy_answer(model, tokenizer, [{"role": "user", "content": question}], max_tokens=8)
  assert answer.returncode == 0 and answer.stdout == expected + "\n", answer.stdout + answer.stderr


def test_llama_switches_from_the_command_line_and_a_resume_that_contradicts_them(finished_run, tmp_path):
  _, corpus, _ = finished_run
  out = tmp_path / "llama"
  train("--stage", "pretrain", "--size", "tiny", "--norm", "rmsnorm", "--pos", "rope", "--mlp", "swiglu", "--steps", "2",
        "--eval-every", "2", "--batch-size", "2", "--data", corpus, "--workers", "1", "--out", out, check_code=0)
  record = checkpoint.read_record(out)
  assert (record.model.norm, record.model.pos, record.model.mlp) == ("rmsnorm", "rope", "swiglu")
  weights = checkpoint.load(out)[0]  # held through the resume below, as a process holds a checkpoint it loaded
  assert "h.0.mlp.c_gate.weight" in weights and "wpe.weight" not in weights  # SwiGLU's gate; RoPE: no position table
  assert not [k for k in weights if ".ln_" in k and k.endswith(".bias")] and "ln_f.bias" not in weights  # RMSNorm
  for flag, given, recorded in (("--norm", "layernorm", "rmsnorm"), ("--pos", "learned", "rope"), ("--mlp", "gelu", "swiglu")):
    assert_one_line_error(train("--resume", "--out", out, flag, given), f"{flag} {given} does not match the run being resumed ({recorded})")
  again = train("--resume", "--out", out, "--norm", "rmsnorm", "--pos", "rope", "--mlp", "swiglu", "--steps", "3", check_code=0)
  # the record of the file the resume wrote, not of the one still mapped (tinygrad's disk device keeps that open by name)
  assert "resuming at step 2" in again.stdout and checkpoint.read_record(out).step == 3


def test_mlp_relu2_from_the_command_line_and_an_unknown_mlp_refused(tmp_path):
  """--mlp relu2 reaches the model's config as train.py passes its flags on (squared ReLU, ungated, GELU's hidden
  width; tests/test_model.py and tests/kernels check its arithmetic); any other value is argparse's usage error."""
  from aurora_tg import config
  model = config.new_run("pretrain", given_flags(["--size", "tiny", "--mlp", "relu2"]), CPU).model_config(512)
  assert (model.mlp, model.mlp_hidden) == ("relu2", 4 * model.n_embd)
  proc = train("--size", "tiny", "--mlp", "relu3", "--out", tmp_path / "o")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr and not (tmp_path / "o").exists()
  usage_error = proc.stderr.strip().splitlines()[-1]
  assert "argument --mlp: invalid choice: 'relu3'" in usage_error and all(c in usage_error for c in ("gelu", "swiglu", "relu2"))


@pytest.mark.parametrize("eval_every, kept", [
  (3, 3),  # checkpoints at step 3 and then 6: the loss turns NaN in between
  (1, 3),  # an evaluation whose loss is NaN stops the run before its checkpoint replaces the last good one
  (8, None),  # no checkpoint yet when it stops
])
def test_a_nan_loss_stops_the_run_in_one_line_and_keeps_the_last_good_checkpoint(finished_run, tmp_path, eval_every, kept):
  """float16 overflows under AdamW at a learning rate of 1 (mixed precision's classic NaN; Aurora's steps of fixed
  spectral size keep the loss finite there): over 40 steps (a 4-step warmup) the loss is finite for the first 3
  steps, NaN a few steps later (where exactly, numerics decide; what each case needs of it is checked below, not
  assumed)."""
  _, corpus, _ = finished_run
  out = tmp_path / "nan"
  proc = train("--stage", "pretrain", "--size", "tiny", "--optimizer", "adamw", "--dtype", "float16", "--lr", "1", "--steps", "40", "--eval-every", eval_every,
               "--batch-size", "2", "--data", corpus, "--workers", "1", "--out", out)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "error:" not in proc.stdout, proc.stdout + proc.stderr
  stopped_at = int(errors[0].split("loss became nan at step ")[1].split(";")[0])
  evaluated = {m["step"]: m["val_loss"] for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "val_loss" in m}
  assert max(evaluated) <= stopped_at < 6  # stopped where the loss turned NaN, before step 6's checkpoint
  if kept is None:
    assert stopped_at < eval_every and errors[0].endswith("no checkpoint had been written yet")
    assert not (out / checkpoint.CHECKPOINT_NAME).exists()
    return
  weights, _, record = checkpoint.load(out)
  assert errors[0].endswith(f"the last good checkpoint (step {record.step}) is kept in {out}")
  assert record.step == kept and all(np.isfinite(w.numpy()).all() for w in weights.values())
  assert math.isfinite(evaluated[kept])  # good: its weights gave a finite validation loss


def test_the_optimizer_flag_reaches_the_trainer(finished_run, tmp_path):
  """--optimizer picks what trains and what the checkpoint records (every optimizer's training and state are
  checked through the trainer, tests/test_optim.py)."""
  _, corpus, _ = finished_run
  proc = train("--stage", "pretrain", "--size", "tiny", "--optimizer", "normuon", "--steps", "2", "--eval-every", "2", "--batch-size", "2",
               "--data", corpus, "--workers", "1", "--out", tmp_path / "normuon", check_code=0)
  assert "normuon at lr 0.05" in proc.stdout  # not the default (aurora)
  _, optimizer_state, record = checkpoint.load(tmp_path / "normuon")
  assert record.run.train.optimizer == "normuon" and record.run.train.diagnostics and "dead neurons" in proc.stdout
  from aurora_tg.model import GPT
  from aurora_tg.trainer import build_optimizer
  built = build_optimizer(GPT(record.model), record.run.train)  # lazy: nothing is computed
  assert {k: v.shape for k, v in optimizer_state.items()} == {k: v.shape for k, v in checkpoint.optimizer_state(built, built.params).items()}


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
  """`train.py --size tiny --steps 3`, kernels compiled afresh (CACHELEVEL=0), on OpenCL through PoCL, whose built-in
  clang used to print '1 warning generated.' for dozens of them (tinygrad's clang CPU backend never printed any: on a
  machine without CL it is checked instead)."""
  from aurora_tg.backends.devices import works
  backends = ["CL"] if works("CL") else ["CPU"] if works("CPU") else []
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
