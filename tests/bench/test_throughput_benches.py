"""bench/train_throughput.py's roofline column and bench/gpu.py's naming of the GPU it runs on (both for a lent GPU;
here the step runs on the CPU and is bounded as if on an H100, which checks the plumbing, not the figure)."""
import re, runpy, sys
import pytest
from aurora_tg.backends import targets
from conftest import ROOT


def test_the_throughput_bench_prints_the_steps_least_time_on_the_named_gpu(monkeypatch, capsys):
  monkeypatch.setattr(sys, "argv", ["train_throughput.py", "--size", "tiny", "--batch-size", "2", "--steps", "1", "--device", "CPU",
                                    "--optimizers", "adamw", "--gpu", "h100", "--peak-tflops", "1"])
  monkeypatch.setitem(sys.modules, "torch", None)  # no PyTorch row: its eager step adds nothing to what this checks
  runpy.run_path(str(ROOT / "bench" / "train_throughput.py"), run_name="__main__")
  out = capsys.readouterr().out
  assert "least ms on h100" in out
  row = next(line for line in out.splitlines() if line.startswith("| aurora adamw"))
  measured, least = float(row.split("|")[2]), float(row.split("|")[6])
  assert measured > 0 and 0 < least < 1  # tiny's step: far under a millisecond of an H100's FLOPs and bytes


@pytest.mark.parametrize("name, target", [("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA A100-SXM4-40GB", "a100-40gb"),
                                          ("NVIDIA A100 80GB PCIe", "a100-80gb"), ("NVIDIA GeForce RTX 4090", "rtx4090"),
                                          ("NVIDIA L4", "l4"), ("NVIDIA L40S", None), ("Tesla T4", None)])
def test_the_gpu_bench_names_the_gpu_as_the_targets_do(name, target):
  gpu = runpy.run_path(str(ROOT / "bench" / "gpu.py"))
  assert gpu["target_of"](name) == target
  assert target is None or target in targets.TARGETS
