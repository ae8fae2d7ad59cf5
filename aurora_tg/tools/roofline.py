"""The roofline of a training step on a GPU, without one: the step compiled for the target on tinygrad's NULL device
(the memory plan's run of it, plan.py), each kernel's FLOPs and bytes as tinygrad estimates them, and the least time
the target could take over it: max(FLOPs / peak, bytes / bandwidth), the peak being the matrix units' for a kernel on
tensor cores (half of it for float32's TF32) and the float32 rate for the rest. No kernel runs faster than that, so
the sum bounds the step's tokens/s and MFU from above; the kernels with the largest bounds are where the step's time
must go."""
from dataclasses import dataclass
from aurora_tg import UserError
from aurora_tg.backends.kernel_costs import KernelCost
from aurora_tg.backends.targets import Target
from aurora_tg.config import TrainSettings
from aurora_tg.model import GPTConfig
from aurora_tg.tools import plan


def bound(cost: KernelCost, target: Target) -> float:
  """The least seconds the kernel takes on the target. A float32 matmul on tensor cores runs as TF32, at half the
  half-precision rate on NVIDIA's cards."""
  peak = {"": target.vector_flops, "float": target.matrix_flops / 2}.get(cost.matrix_dtype, target.matrix_flops)
  return max(cost.flops / peak, cost.moved / target.bandwidth)


@dataclass(frozen=True)
class Roofline:
  target: Target
  tokens: int            # trained per step
  model_flops: float     # the model's own FLOPs per step (model_flops_per_token)
  kernels: tuple[KernelCost, ...]

  @property
  def flops(self) -> int: return sum(k.flops for k in self.kernels)
  @property
  def moved(self) -> int: return sum(k.moved for k in self.kernels)
  @property
  def seconds(self) -> float: return sum(bound(k, self.target) for k in self.kernels)
  @property
  def tokens_per_s(self) -> float: return self.tokens / self.seconds
  @property
  def mfu(self) -> float: return self.model_flops / self.seconds / self.target.matrix_flops

  def largest(self, n: int) -> list[tuple[KernelCost, int, float]]:
    """The n kernels with the largest bound in all, a name's launches together: (a launch's cost, launches, seconds)."""
    by_name: dict[str, list[KernelCost]] = {}
    for k in self.kernels: by_name.setdefault(k.name, []).append(k)
    rows = [(ks[0], len(ks), sum(bound(k, self.target) for k in ks)) for ks in by_name.values()]
    return sorted(rows, key=lambda row: -row[2])[:n]


def model_flops_per_token(cfg: GPTConfig, params: int) -> float:
  """PaLM's count (its appendix B), which nanoGPT's MFU uses: 6 per parameter (forward and backward) less the
  position table's, which is looked up, and 12 per layer, position and width for attention's two matmuls."""
  looked_up = cfg.block_size * cfg.n_embd if cfg.pos == "learned" else 0
  return 6 * (params - looked_up) + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size


def train_step(model_cfg: GPTConfig, s: TrainSettings, target: Target) -> Roofline:
  """The roofline of one optimizer step: s.grad_accum micro-batches of s.batch_size sequences, and the update, as the
  memory plan of the step on the target's NULL device launches them."""
  if not target.bandwidth: raise UserError(f"{target.name} has no known peak FLOP/s and bandwidth; name a GPU")
  step = plan.measure(model_cfg, s, target.null_device)
  tokens = s.grad_accum * s.batch_size * model_cfg.block_size
  return Roofline(target, tokens, tokens * model_flops_per_token(model_cfg, step.params), step.step_kernels)
