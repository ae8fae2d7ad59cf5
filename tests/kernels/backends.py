"""The kernel tests' parameters: every tinygrad backend (and, where a test asks for it, every dtype the backend
supports), skipped with the reason where absent. tests/conftest.py applies them to tests taking `backend`."""
import functools
import pytest
from aurora_tg.devices import supports_dtype, works

# Every backend Aurora's one code path targets; those not present here show up as skipped, with the reason.
KERNEL_BACKENDS = ("CPU", "CL", "CUDA", "NV", "AMD", "METAL")
DTYPES = ("float32", "float16", "bfloat16")


@functools.cache
def available(backend: str) -> bool: return works(backend)


@functools.cache
def supports(backend: str, dtype: str) -> bool: return supports_dtype(backend, dtype)


def backend_param(backend: str, chosen: str | None):
  if chosen and backend != chosen.split(":")[0]: return pytest.param(backend, marks=pytest.mark.skip(reason=f"{backend}: only {chosen} was chosen (--device/DEV)"))
  if not available(backend): return pytest.param(backend, marks=pytest.mark.skip(reason=f"{backend}: no working device of this kind here"))
  return pytest.param(backend)


def parametrize(metafunc):
  backends = [backend_param(b, metafunc.config.chosen_backend) for b in KERNEL_BACKENDS]
  if "dtype" not in metafunc.fixturenames: return metafunc.parametrize("backend", backends)
  params = []
  for b in backends:
    for dtype in DTYPES:
      runs = not b.marks and supports(b.values[0], dtype)
      skip = [] if runs or b.marks else [pytest.mark.skip(reason=f"{b.values[0]} cannot compile {dtype} kernels here")]
      params.append(pytest.param(b.values[0], dtype, marks=[*b.marks, *skip], id=f"{b.values[0]}-{dtype}"))
  metafunc.parametrize(("backend", "dtype"), params)
