"""Device tuning: on an OpenCL CPU, selecting the device makes tinygrad's matvec kernels sum each output in one
work-item (MV_THREADS_PER_ROW=1); a value the user set stays, and other backends keep tinygrad's default."""
import os, subprocess, sys
import pytest
from aurora_tg.devices import works

PROBE = ("from aurora_tg import devices; from tinygrad.helpers import getenv; device = devices.select_device({!r}); "
         "print(device, devices.opencl_on_cpu() if device == 'CL' else '-', getenv('MV_THREADS_PER_ROW', 8))")


def probe(device: str, **env) -> str:
  clean = {k: v for k, v in os.environ.items() if k != "MV_THREADS_PER_ROW"}
  done = subprocess.run([sys.executable, "-c", PROBE.format(device)], capture_output=True, text=True, env={**clean, **env})
  assert done.returncode == 0, done.stderr
  return done.stdout.split()


@pytest.mark.skipif(not works("CL"), reason="no OpenCL device here")
def test_an_opencl_cpu_sums_each_matvec_output_in_one_work_item():
  device, on_cpu, threads = probe("CL")
  assert device == "CL" and threads == ("1" if on_cpu == "True" else "8")
  assert probe("CL", MV_THREADS_PER_ROW="4")[2] == "4"


def test_other_backends_keep_tinygrads_matvec_layout():
  assert probe("CPU") == ["CPU", "-", "8"]
