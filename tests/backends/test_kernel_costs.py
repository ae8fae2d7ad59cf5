"""Each kernel's cost as tinygrad estimates it (aurora_tg/backends/kernel_costs.py), read as tinygrad launches it: a
matmul's FLOPs are 2MNK and its tensor cores are named by dtype, and the launches listed add up to what tinygrad's
own counters sum. Compiled for an H100 on tinygrad's NULL device (NVRTC from the test extra), as the roofline is."""
import os
import pytest
from tinygrad import Context, GlobalCounters, Tensor, dtypes
from tinygrad.engine import realize
from aurora_tg import UserError
from aurora_tg.backends import fence, targets
from aurora_tg.backends.kernel_costs import kernel_costs

_missing = targets.use_nvidia_compiler()
if _missing and os.environ.get("CI") == "true": pytest.fail(f"CI installs NVIDIA's compiler (the test extra): {_missing}", pytrace=False)
pytestmark = pytest.mark.skipif(_missing is not None, reason=_missing or "")
M, K, N = 128, 256, 64


@pytest.mark.parametrize("dtype", [dtypes.bfloat16, dtypes.half, dtypes.float])
def test_a_matmul_costs_2mnk_on_tensor_cores_of_its_dtype(dtype):
  """float32 too: tinygrad runs it on tensor cores as TF32."""
  with Context(DEV="NULL:CUDA:sm_90", NULL_ALLOW_COPYOUT=1):
    a, b = Tensor.empty(M, K, dtype=dtype), Tensor.empty(K, N, dtype=dtype)
    with kernel_costs() as costs: (a @ b).realize()
  assert [(c.flops, c.matrix_dtype) for c in costs] == [(2 * M * N * K, str(dtype).removeprefix("dtypes."))]
  assert costs[0].moved == (M * K + K * N + M * N) * dtype.itemsize  # each operand read once, the product written once


def test_the_launches_listed_add_up_to_tinygrads_counters():
  with Context(DEV="NULL:CUDA:sm_90", NULL_ALLOW_COPYOUT=1):
    a = Tensor.empty(M, K)
    GlobalCounters.reset()
    with kernel_costs() as costs: ((a @ a.T).softmax(-1) @ a).sum(0).realize()
    after = len(costs)
    (a + 1).realize()  # outside the block: not listed, and tinygrad's own function is back
  assert len(costs) == after == GlobalCounters.kernel_count - 1 > 2 and realize.track_stats.__module__ == realize.__name__
  assert sum(c.flops for c in costs) < GlobalCounters.global_ops and sum(c.moved for c in costs) < GlobalCounters.global_mem
  assert (sum(c.flops for c in costs), sum(c.moved for c in costs)) == (GlobalCounters.global_ops - M * K, GlobalCounters.global_mem - 2 * M * K * 4)
  assert all(not c.matrix_dtype for c in costs if c.flops < 2 * M * M * K)  # only the matmuls on tensor cores


def test_another_tinygrad_is_refused_in_one_line(monkeypatch):
  monkeypatch.setattr(fence, "version", lambda: "0.99.0")
  with pytest.raises(UserError, match="written for tinygrad 0.14.0"):
    with kernel_costs(): pass
  assert realize.track_stats.__module__ == realize.__name__
