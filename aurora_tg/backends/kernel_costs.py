"""What each kernel a piece of work launches costs, as tinygrad estimates it: FLOPs, bytes moved, and whether it runs
on tensor cores. tinygrad adds the estimates up into GlobalCounters only; each kernel's are read where it is launched
(engine.realize.track_stats, a private API: fenced, fence.py). On another tinygrad the roofline refuses with one line."""
import contextlib, re
from dataclasses import dataclass
from typing import Iterator
from tinygrad.uop.ops import Ops
from aurora_tg import UserError
from aurora_tg.backends import fence

ANSI = re.compile(r"\x1b\[[0-9;]*m")  # tinygrad colours its kernel names for the terminal


@dataclass(frozen=True)
class KernelCost:
  name: str           # tinygrad's kernel name (its shape: r_50261_16_..., E_...), or "copy"
  flops: int
  moved: int          # bytes read and written in the device's memory
  matrix_dtype: str   # its matmul's input dtype (bfloat16, half, float) on the matrix units (tinygrad's WMMA), else ""


@contextlib.contextmanager
def kernel_costs() -> Iterator[list[KernelCost]]:
  """Within the block, the list fills with the cost of every kernel launched, in order, one entry per launch (a
  kernel run on two devices counts twice). For calls that run their kernels one by one, as TinyJit's first call does:
  a replay through a graph runner is one batched launch, which the list leaves out."""
  if not fence.allows("each kernel's cost estimates"):
    raise UserError(f"the roofline reads tinygrad's per-kernel estimates, written for tinygrad {fence.WRITTEN_FOR} "
                    f"(installed: {fence.version()})")
  from tinygrad.engine import realize
  costs, original = [], realize.track_stats
  def track_stats(ctx, call, *args):
    original(ctx, call, *args)
    if not ctx.update_stats: return
    for _, kernel in realize.get_call_kernels(call):
      program, estimates = kernel.src[0], realize.estimate_uop(kernel)
      flops, moved = (int(realize.sym_infer(x, ctx.var_vals)) for x in (estimates.ops, estimates.mem))
      if program.op is Ops.PROGRAM:
        wmma = next((str(u.arg[1]).removeprefix("dtypes.") for u in program.src[1].src if u.op is Ops.WMMA), "")  # arg: (shape, dtype in, ...)
        costs.append(KernelCost(ANSI.sub("", program.arg.name), flops, moved, wmma))
      elif program.op is Ops.COPY: costs.append(KernelCost("copy", 0, moved, ""))
  realize.track_stats = track_stats
  try: yield costs
  finally: realize.track_stats = original
