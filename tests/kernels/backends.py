"""The kernel tests' parameters: every tinygrad backend (and, where a test asks for it, every dtype the backend
supports), skipped with the reason where absent. tests/conftest.py applies them to tests taking `backend`.

A skip must never hide a failure: only a backend that cannot be opened or a dtype that cannot be compiled is
skipped; one that computes wrongly runs its tests (and fails them). In CI (CI=true) the backends the machine is set
up for (REQUIRED_IN_CI) must work: one that does not stops the run at collection, with the reason."""
import functools, os
import pytest
from aurora_tg.backends.devices import dtype_problem, problem

# Every backend Aurora's one code path targets; those not present here show up as skipped, with the reason.
KERNEL_BACKENDS = ("CPU", "CL", "CUDA", "NV", "AMD", "METAL")
DTYPES = ("float32", "float16", "bfloat16")
REQUIRED_IN_CI = ("CPU", "CL")  # .ci/run installs clang and PoCL


@functools.cache
def backend_problem(backend: str) -> str | None: return problem(backend)


def backend_param(backend: str, chosen: str | None):
  if chosen and backend != chosen.split(":")[0]: return pytest.param(backend, marks=pytest.mark.skip(reason=f"{backend}: only {chosen} was chosen (--device/DEV)"))
  why = backend_problem(backend)
  if why is None or "wrong result" in why: return pytest.param(backend)
  if os.environ.get("CI") == "true" and backend in REQUIRED_IN_CI: pytest.fail(f"CI needs the {backend} backend: {why}", pytrace=False)
  return pytest.param(backend, marks=pytest.mark.skip(reason=f"{backend}: not working here ({why})"))


def parametrize(metafunc):
  backends = [backend_param(b, metafunc.config.chosen_backend) for b in KERNEL_BACKENDS]
  if "dtype" not in metafunc.fixturenames: return metafunc.parametrize("backend", backends)
  params = []
  for b in backends:
    for dtype in DTYPES:
      why = None if b.marks else dtype_problem(b.values[0], dtype)
      skip = [pytest.mark.skip(reason=f"{b.values[0]}: {why}")] if why and "wrong result" not in why else []
      params.append(pytest.param(b.values[0], dtype, marks=[*b.marks, *skip], id=f"{b.values[0]}-{dtype}"))
  metafunc.parametrize(("backend", "dtype"), params)
