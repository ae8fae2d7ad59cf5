"""Device tuning: on an OpenCL CPU, tune_for_decoding makes tinygrad's matvec kernels sum each output in one
work-item (MV_THREADS_PER_ROW=1), seen in the kernel's code: no partial sums meeting at a barrier. A value the user
set stays, and other backends keep tinygrad's default."""
import os, subprocess, sys
import pytest
from aurora_tg.backends.devices import works

# one matrix-vector product, its kernels' code printed (DEBUG=4)
PROBE = ("from aurora_tg.backends import devices; from tinygrad import Tensor; from tinygrad.helpers import getenv; "
         "device = devices.select_device({!r}); devices.tune_for_decoding(); x, w = Tensor.ones(1, 256).contiguous().realize(), Tensor.ones(256, 256).contiguous().realize(); "
         "assert (x @ w).numpy()[0, 0] == 256; print('threads per row', getenv('MV_THREADS_PER_ROW', 8))")


def probe(device: str, **env) -> tuple[int, bool]:
  """(MV_THREADS_PER_ROW as tinygrad reads it, whether the matvec kernel's code splits a sum over work-items)"""
  clean = {k: v for k, v in os.environ.items() if k != "MV_THREADS_PER_ROW"}
  done = subprocess.run([sys.executable, "-c", PROBE.format(device)], capture_output=True, text=True, env={**clean, "DEBUG": "4", **env})
  assert done.returncode == 0, done.stderr[-2000:]
  return int(done.stdout.split("threads per row")[-1]), "barrier(" in done.stdout


@pytest.mark.skipif(not works("CL"), reason="no OpenCL device here")
def test_an_opencl_cpu_sums_each_matvec_output_in_one_work_item():
  from tinygrad import Device
  if not Device["CL"].device_name.startswith(("pthread", "cpu")): pytest.skip(f"CL is {Device['CL'].device_name}, not PoCL on a CPU")
  assert probe("CL") == (1, False)
  assert probe("CL", MV_THREADS_PER_ROW="8") == (8, True)  # the user's value stays, and the check sees the split


def test_other_backends_keep_tinygrads_matvec_layout():
  assert probe("CPU")[0] == 8
