"""The memory plan (aurora_tg/tools/plan.py): planned on tinygrad's NULL device, its peak is the one a real step
reaches on the CPU backend; --batch-size auto trains and resumes with the micro-batch the plan picks; --plan prints
the plan; a bad --plan-for is one error line."""
import re
from dataclasses import replace
import pytest
import train as train_script
from aurora_tg.config import TrainSettings
from aurora_tg.formats import checkpoint
from aurora_tg.model import GPTConfig, PRESETS
from aurora_tg.tools import plan
from conftest import run_main, sample_text


# every test here plans the tiny preset with AdamW: a kernel compiled once serves them all (and train.py's runs below)
TINY, ADAMW = GPTConfig(**PRESETS["tiny"]), TrainSettings(batch_size=4, optimizer="adamw")


def test_the_planned_peak_is_the_one_a_real_step_reaches_on_cpu():
  """bench/plan.py --check measures the same for the tiny and small presets in float32 and float16, with Aurora."""
  planned, measured = plan.measure(TINY, ADAMW, plan.null_device("CPU")), plan.measure(TINY, ADAMW, "CPU")
  assert abs(planned.peak - measured.peak) <= 0.05 * measured.peak, (planned, measured)
  assert planned.weights == measured.weights and planned.peak > planned.weights + planned.optimizer_state
  assert planned.flops == pytest.approx(measured.flops, rel=1e-3) and planned.kernels == pytest.approx(measured.kernels, rel=0.02)


def test_the_largest_fitting_micro_batch_is_the_largest_divisor_under_the_memory():
  """Against plans of the sizes around the answer: the search plans a few and picks what planning all would."""
  cfg, s, null = TINY, replace(ADAMW, batch_size=2, grad_accum=2), plan.null_device("CPU")
  plans = {b: plan.measure(cfg, replace(s, batch_size=b, grad_accum=4 // b), null) for b in (1, 2, 4)}  # 4: planned above
  peaks = {b: p.peak for b, p in plans.items()}
  # float32 weights; AdamW's two moments and the summed gradients: three copies (and a few scalars), whatever the micro-batch
  assert all(p.weights == 4 * p.params and p.optimizer_state == pytest.approx(3 * p.weights, abs=64) for p in plans.values())
  assert peaks[1] < peaks[2] < peaks[4]
  memory = (peaks[2] + (peaks[4] - peaks[2]) / 2) / plan.HEADROOM  # room for 2 rows, not for 4
  lines = []
  best = plan.largest_fitting(cfg, s, null, memory, log=lines.append)
  assert (best.micro_batch, best.grad_accum, best.peak) == (2, 2, peaks[2]), lines
  assert len(lines) == 2  # planned 1 and 2 (here: measure keeps what it measured), predicted 2, which was planned


def test_batch_size_auto_trains_with_the_planned_micro_batch_and_resumes(tmp_path):
  corpus = tmp_path / "corpus.txt"
  corpus.write_text(sample_text(20000), encoding="utf-8")
  run = ["--size", "tiny", "--optimizer", "adamw", "--steps", "2", "--eval-every", "2", "--data", corpus, "--out", tmp_path / "out"]
  proc = run_main(train_script.main, [*run, "--batch-size", "auto", "--plan-for", "7MB", "--device", "CPU"])
  assert proc.returncode == 0, proc.stdout + proc.stderr
  chosen = re.search(r"--batch-size auto: micro-batch (\d+), (\d+) per step", proc.stdout)
  micro, accum = int(chosen[1]), int(chosen[2])
  assert micro < 16 and micro * accum == 16  # the tiny preset's 16 rows a step, kept
  peaks = {int(b): float(mb) for b, mb in re.findall(r"micro-batch +(\d+): peak +([\d.]+) MB", proc.stdout)}
  assert peaks[micro] <= plan.HEADROOM * 7 and all(peak > plan.HEADROOM * 7 for b, peak in peaks.items() if b > micro), proc.stdout
  settings = checkpoint.read_record(tmp_path / "out" / checkpoint.CHECKPOINT_NAME).run.train
  assert (settings.batch_size, settings.grad_accum) == (micro, accum)  # the run record keeps both
  proc = run_main(train_script.main, ["--resume", "--out", tmp_path / "out", "--steps", "3", "--device", "CPU"])
  assert proc.returncode == 0 and "resuming at step 2" in proc.stdout, proc.stdout + proc.stderr


def test_plan_prints_the_step_for_a_named_gpu_and_bad_names_are_one_error_line():
  proc = run_main(train_script.main, ["--plan", "--size", "tiny", "--batch-size", "1", "--grad-accum", "1", "--plan-for", "m2-16gb"])
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "compiled on NULL..." in proc.stdout and re.search(r"peak [\d.]+ MB of [\d.]+ GB usable \(90% of [\d.]+ GB\): fits\n", proc.stdout)
  assert "largest micro-batch that fits: 1 (--batch-size 1 --grad-accum 1 keeps 64 tokens a step" in proc.stdout
  proc = run_main(train_script.main, ["--plan", "--size", "tiny", "--plan-for", "rtx9090"])
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert proc.returncode == 2 and len(errors) == 1 and "h100" in errors[0] and "24GB" in errors[0], proc.stderr
