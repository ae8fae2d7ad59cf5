"""The token embedding's lookup with its gradient as a scatter-add: each token's gradient row added into its table row
by an atomic add, one work-item per (token, column).

tinygrad's public lookup (nn.Embedding without USE_ATOMICS, or indexing) compares every token with every table row,
and its gradient is that one-hot matrix's product with the output gradient: vocabulary x tokens x width
multiply-adds, nearly all by zero. For GPT-2 (50,257 rows) at 16 x 1024 tokens that is about 4 TFLOP a step; on the
small preset it was the step's largest kernel on an OpenCL CPU (26 ms of 270). The scatter-add costs tokens x width.
tinygrad 0.14 builds such a kernel behind USE_ATOMICS for its CPU and AMD backends only, from UOps (a private API,
hence fenced); this one adds OpenCL (a compare-and-swap loop: OpenCL 1.2 has no float atomics) and CUDA. Elsewhere
(Metal, a sharded table, another tinygrad) the public one-hot lookup runs: slower, not wrong."""
import functools
from tinygrad import Device, Tensor, dtypes
from aurora_tg.backends import fence

# An atomic float add of {1} into the address {0}, as each backend's compiler spells it (doubled braces: the
# string is formatted with the two operands).
ATOMIC_ADD = {
  "CPU": "__atomic_fetch_add({0}, {1}, __ATOMIC_RELAXED);",
  "AMD": "__hip_atomic_fetch_add({0}, {1}, __ATOMIC_RELAXED, __HIP_MEMORY_SCOPE_AGENT);",
  "CUDA": "atomicAdd({0}, {1});", "NV": "atomicAdd({0}, {1});",
  "CL": "{{ volatile __global int* a_ = (volatile __global int*)({0}); int seen_ = *a_, old_; "
        "do {{ old_ = seen_; seen_ = atomic_cmpxchg(a_, old_, as_int(as_float(old_) + ({1}))); }} while (seen_ != old_); }}",
}


# tinygrad's NULL device compiles for the renderer DEV names (aurora_tg/backends/targets.py): the kernels are the ones
# that renderer's own backend would run
RENDERER_BACKEND = {"ClangRenderer": "CPU", "OpenCLRenderer": "CL", "CUDARenderer": "CUDA", "HIPRenderer": "AMD"}


def backend(device) -> str | None:
  """The ATOMIC_ADD key for a device, None where the scatter-add does not run (a device tuple: data parallel; no
  device: ids that are a constant, as decoding's may be)."""
  if not isinstance(device, str): return None
  name = device.split(":")[0]
  if name == "NULL": return RENDERER_BACKEND.get(type(Device[device].renderer).__name__)
  return name if name in ATOMIC_ADD else None


def lookup(weight: Tensor, idx: Tensor) -> Tensor:
  """weight[idx] (idx integer, any shape): rows of the table, in the table's dtype. Its gradient, where the backend
  has atomics, is the scatter-add; elsewhere the one-hot product of tinygrad's public path."""
  if backend(weight.device) is None or backend(idx.device) != backend(weight.device) or not fence.allows("the embedding's scatter-add"):
    return one_hot_lookup(weight, idx)
  fxn = _forward(weight.as_param(0).uop, idx.as_param(1).uop, weight.device)
  return Tensor.call(weight, idx, fxn=fxn, grad_fxn=_scatter_add_gradient)


def one_hot_lookup(weight: Tensor, idx: Tensor) -> Tensor:
  """The public path: each output the sum over the table's rows of (row == id) * row."""
  return (Tensor.arange(weight.shape[0]) == idx.unsqueeze(-1)).unsqueeze(-1).where(weight, 0).sum(-2, dtype=weight.dtype)


@functools.cache
def _forward(weight_param, idx_param, device):
  """The lookup as a function of its two parameters, built once per shape (Tensor.call's form)."""
  return one_hot_lookup(Tensor(weight_param, device=device), Tensor(idx_param, device=device))


def _scatter_add_gradient(grad_out, call) -> tuple:
  """Tensor.call's backward: the table's gradient, zeroed, then every output gradient row added into its id's row."""
  from tinygrad.uop.ops import UOp, KernelInfo, Ops
  weight, idx = call.src[1:]
  atomic_add = ATOMIC_ADD[backend(weight.device)]
  rows, width = weight.shape

  def zero(out: UOp) -> UOp:
    i = UOp.range(out.numel(), 0)
    return out.flatten()[i].store(0).end(i).sink(arg=KernelInfo(name="zero_embedding_grad"))

  def scatter_add(grad: UOp, grad_out: UOp, ids: UOp) -> UOp:
    ids, grad_out = ids.flatten(), grad_out.reshape((ids.numel(), width))
    token, column = UOp.range(grad_out.shape[0], 0), UOp.range(width, 1)
    row = ids[token].clip(0, rows - 1).cast(dtypes.weakint)  # an id out of range adds into the nearest row, never outside
    add = UOp(Ops.CUSTOM, src=(grad.index(row, column), grad_out[token, column].load().cast(dtypes.float)), arg=atomic_add)
    return add.end(token, column).sink(arg=KernelInfo(name="embedding_scatter_add", opts_to_apply=()))

  grad = Tensor.empty(weight.shape, dtype=dtypes.float, device=weight.device).uop.custom_kernel(fxn=zero)[0]
  grad = grad.custom_kernel(grad_out, idx, fxn=scatter_add)[0]
  return grad.cast(weight.dtype), None
