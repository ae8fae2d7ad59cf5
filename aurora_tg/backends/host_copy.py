"""Copies between the host and a realized device tensor, for the few values a decode step sends and returns.

tinygrad's own way builds and runs a small graph each time: about 0.3 ms of Python for Tensor.numpy(), 1 to 3 ms
for a tensor made from host data, where a token of the `small` preset takes about 1 ms in all. On the backends the
tests run (CPU, CL) and the tinygrad version it was written for (fence.py), these go straight to the backend's copy
functions, the ones tinygrad's copy kernel calls: every backend's copy-out waits for the kernels queued before it,
and its copy-in is ordered after them. Elsewhere they take tinygrad's public path."""
import numpy as np
from tinygrad import Tensor
from aurora_tg.backends import fence

DIRECT_BACKENDS = ("CPU", "CL")  # where tests/backends/test_host_copy.py checks the direct copies


def direct(device) -> bool:
  """Whether copies to and from a tensor on `device` go straight to its allocator."""
  return isinstance(device, str) and device.split(":")[0] in DIRECT_BACKENDS and fence.allows("direct host copies")


def _buffer(tensor: Tensor):
  """The device buffer holding exactly the tensor's elements in order: a realized tensor, at most reshaped."""
  from tinygrad.uop.ops import Ops  # tinygrad's internals: fenced (fence.py)
  uop = tensor.uop
  if tensor.dtype.fmt is None: raise ValueError(f"numpy has no {tensor.dtype.name}: cast the tensor first")
  if not uop.is_realized: raise ValueError("the tensor has no device buffer yet: realize it first")
  while uop.op is Ops.RESHAPE: uop = uop.src[0]
  if uop.op is not Ops.BUFFER: raise ValueError(f"a view ({uop.op.name}) of a buffer, not a buffer: make it contiguous first")
  return uop.buffer


def write(tensor: Tensor, values: np.ndarray):
  """Copy host values into a realized device tensor, in place."""
  if values.shape != tensor.shape: raise ValueError(f"values of shape {values.shape} for a buffer of {tensor.shape}")
  if not direct(tensor.device):
    tensor.assign(Tensor(np.ascontiguousarray(values, dtype=np.dtype(tensor.dtype.fmt)), device=tensor.device)).realize()
    return
  buffer = _buffer(tensor)
  data = bytearray(np.ascontiguousarray(values, dtype=np.dtype(tensor.dtype.fmt)))  # a copy: a backend may read it later
  buffer.allocator._copyin(buffer._buf, memoryview(data))


def read(tensor: Tensor) -> np.ndarray:
  """A realized device tensor's values on the host."""
  if not direct(tensor.device): return tensor.numpy()
  buffer, out = _buffer(tensor), np.empty(tensor.shape, dtype=np.dtype(tensor.dtype.fmt))
  buffer.allocator._copyout(memoryview(out).cast("B"), buffer._buf)
  return out
