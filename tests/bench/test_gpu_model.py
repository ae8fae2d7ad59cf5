"""bench/gpu_model.py compiles a step for a GPU and prints its roofline: the figures and the kernels asked for."""
import os, re, subprocess, sys
import pytest
from aurora_tg.backends import targets
from conftest import ROOT

pytestmark = pytest.mark.skipif(targets.use_nvidia_compiler() is not None, reason="NVIDIA's compiler is not installed")


def test_the_roofline_bench_prints_its_figures_and_largest_kernels():
  done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_model.py"), "--size", "tiny", "--batch-size", "4", "--top", "3",
                         "--gpu", "rtx4090", "--no-save"], capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ})
  assert done.returncode == 0, done.stderr[-3000:]
  figures = dict(re.findall(r"^\| ([a-zA-Z/ ]+) \| (.+) \|$", done.stdout, re.M))
  assert float(figures["MFU at most"].rstrip("%")) > 0 and float(figures["least time a step"].split()[0]) > 0
  kernels = [line.split("|") for line in done.stdout.splitlines() if line.startswith("| `")]
  assert len(kernels) == 3 and [float(k[6].split()[0]) for k in kernels] == sorted((float(k[6].split()[0]) for k in kernels), reverse=True)
  assert "appended" not in done.stdout
