"""The roofline of a training step (aurora_tg/tools/roofline.py) and bench/gpu_model.py, which prints it: each
kernel's bound against hand-computed figures, the model's FLOPs against nanoGPT's count, and a whole step's kernels
against what the memory plan counts of the same step through tinygrad's counters."""
import re, runpy, sys
import pytest
from dataclasses import replace
from aurora_tg.backends import targets
from aurora_tg.backends.kernel_costs import KernelCost
from aurora_tg.cli.plan import pretraining
from aurora_tg.cli.train import machine
from aurora_tg.model import GPTConfig, PRESETS
from aurora_tg.tools import plan, roofline
from conftest import ROOT

pytestmark = pytest.mark.skipif(targets.use_nvidia_compiler() is not None, reason="NVIDIA's compiler is not installed")
H100 = targets.TARGETS["h100"]


def test_a_kernels_bound_is_the_slower_of_its_compute_and_its_memory():
  ms = 1e-3
  assert roofline.bound(KernelCost("mm", int(989e9), 1, "bfloat16"), H100) == pytest.approx(ms)  # 989 TFLOP/s
  assert roofline.bound(KernelCost("mm", int(989e9), 1, "float"), H100) == pytest.approx(2 * ms)  # TF32: half
  assert roofline.bound(KernelCost("e", int(67e9), 1, ""), H100) == pytest.approx(ms)  # float32 off the tensor cores
  assert roofline.bound(KernelCost("e", int(67e9), int(2 * 3.35e9), ""), H100) == pytest.approx(2 * ms)  # 3.35 TB/s


def test_the_models_flops_are_nanogpts_count():
  """GPT-2 124M: 124,439,808 parameters (Hugging Face's gpt2), of which nanoGPT counts 123.65M (no position table),
  times 6, plus 12 x 12 layers x 768 x 1,024 for attention."""
  gpt2 = GPTConfig(**PRESETS["gpt2"])
  assert roofline.model_flops_per_token(replace(gpt2, vocab_size=50257), 124_439_808) == 6 * 123_653_376 + 12 * 12 * 768 * 1024
  assert roofline.model_flops_per_token(replace(gpt2, pos="rope"), 124_439_808) == 6 * 124_439_808 + 12 * 12 * 768 * 1024


def test_a_steps_roofline_counts_what_the_memory_plan_counts():
  """The tiny preset's bfloat16 step, two micro-batches and the update, compiled for an H100."""
  cfg, model_cfg = pretraining(dict(size="tiny", dtype="bfloat16", optimizer="adamw", plan_for="h100"), machine("CPU"))
  s = replace(cfg.train, batch_size=4, grad_accum=2)
  r = roofline.train_step(model_cfg, s, H100)
  counted = plan.measure(model_cfg, s, H100.null_device)
  assert (r.flops, r.moved, len(r.kernels)) == (counted.flops, counted.moved, counted.kernels)
  assert r.tokens == 8 * model_cfg.block_size and r.flops > r.model_flops > 0
  assert r.seconds == pytest.approx(sum(roofline.bound(k, H100) for k in r.kernels)) and r.tokens_per_s == r.tokens / r.seconds
  assert r.mfu == pytest.approx(r.model_flops / r.seconds / 989e12)
  largest = r.largest(len(r.kernels))
  assert [row[2] for row in largest] == sorted((row[2] for row in largest), reverse=True)
  assert sum(row[1] for row in largest) == len(r.kernels) and sum(row[2] for row in largest) == pytest.approx(r.seconds)
  assert any(row[0].matrix_dtype == "bfloat16" for row in largest)


def test_the_roofline_bench_prints_its_figures_and_largest_kernels(monkeypatch, capsys):
  """bench/gpu_model.py, here rather than in tests/bench: run in this process, it reuses the kernels just compiled."""
  monkeypatch.setattr(sys, "argv", ["gpu_model.py", "--size", "tiny", "--batch-size", "4", "--top", "3", "--no-save"])
  runpy.run_path(str(ROOT / "bench" / "gpu_model.py"), run_name="__main__")
  out = capsys.readouterr().out
  figures = dict(re.findall(r"^\| ([a-zA-Z/ ]+) \| (.+) \|$", out, re.M))
  assert float(figures["MFU at most"].rstrip("%")) > 0 and float(figures["least time a step"].split()[0]) > 0
  kernels = [line.split("|") for line in out.splitlines() if line.startswith("| `")]
  assert len(kernels) == 3 and [float(k[6].split()[0]) for k in kernels] == sorted((float(k[6].split()[0]) for k in kernels), reverse=True)
  assert "appended" not in out
