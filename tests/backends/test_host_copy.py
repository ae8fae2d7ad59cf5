"""Host copies that bypass tinygrad's copy graph still see and set what the device computes, on every backend here."""
import numpy as np
import pytest
from tinygrad import Tensor, TinyJit, dtypes
from aurora_tg.backends.devices import works
from aurora_tg.backends.host_copy import read, write

DEVICES = [pytest.param(d, marks=pytest.mark.skipif(not works(d), reason=f"{d} does not work here")) for d in ("CPU", "CL")]
CASES = [(dtypes.int32, np.array([[3, -7, 2 ** 31 - 1]])), (dtypes.uint32, np.array([[0, 2 ** 32 - 1], [5, 6]])),
         (dtypes.bool, np.array([True, False, True, True, False])), (dtypes.float32, np.linspace(-2, 2, 37).reshape(1, 37))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype, values", CASES, ids=[str(d) for d, _ in CASES])
def test_written_values_read_back_and_reach_the_kernels(device, dtype, values):
  buffer = Tensor.zeros(*values.shape, dtype=dtype, device=device).contiguous().realize()
  write(buffer, values)
  np.testing.assert_array_equal(read(buffer), values.astype(np.dtype(dtype.fmt)))
  np.testing.assert_array_equal(buffer.numpy(), values.astype(np.dtype(dtype.fmt)))  # as tinygrad's own copy sees it


@pytest.mark.parametrize("device", DEVICES)
def test_a_jitted_step_reads_its_written_input_and_its_output_reads_back(device):
  """The server's pattern: inputs written into buffers made once, a jitted step over them, its output read; each call
  must see the values written just before it and return the output of its own call, not an earlier one."""
  tokens = Tensor.zeros(4, dtype=dtypes.int32, device=device).contiguous().realize()
  step = TinyJit(lambda x: ((x * 3 + 1).cumsum() % 1000).realize())
  rng = np.random.default_rng(0)
  for _ in range(6):
    values = rng.integers(0, 1000, size=4)
    write(tokens, values)
    np.testing.assert_array_equal(read(step(tokens)), np.cumsum(values * 3 + 1) % 1000)


@pytest.mark.parametrize("device", DEVICES)
def test_wrong_shapes_and_unrealized_tensors_are_refused(device):
  buffer = Tensor.zeros(2, 3, device=device).contiguous().realize()
  with pytest.raises(ValueError, match="shape"): write(buffer, np.zeros((3, 2)))
  with pytest.raises(ValueError, match="realize"): read(Tensor.ones(2, device=device) + 1)
  with pytest.raises(ValueError, match="PERMUTE"): read(buffer.permute(1, 0))  # its elements in another order
  with pytest.raises(ValueError, match="numpy has no"): read(Tensor.empty(2, dtype=dtypes.bfloat16, device=device).realize())
  write(buffer, np.arange(6).reshape(2, 3))
  np.testing.assert_array_equal(read(buffer.reshape(3, 2).reshape(6)), np.arange(6))  # reshapes keep the order
