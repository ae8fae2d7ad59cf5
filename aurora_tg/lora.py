"""LoRA (Hu et al. 2021): a frozen projection W plus a trained low-rank change, y = x W^T + (alpha/r) x A^T B^T."""
import math
from dataclasses import dataclass
from tinygrad import Tensor
from tinygrad.nn.state import get_state_dict
from aurora_tg.model import GPT, Linear

PROJECTIONS = ("c_attn", "c_proj", "c_fc", "c_gate")  # attention's qkv and output, the MLP's up, gate and down


@dataclass(frozen=True)
class LoRAConfig:
  rank: int = 8
  alpha: float = 16.0
  dropout: float = 0.0
  targets: tuple[str, ...] = PROJECTIONS


class LoRALinear:
  def __init__(self, base: Linear, cfg: LoRAConfig):
    self.base, self.scale, self.dropout = base, cfg.alpha / cfg.rank, cfg.dropout
    n_out, n_in = base.weight.shape
    # A random, B zero: the adapted model starts exactly as the base
    self.lora_a = Tensor.uniform(cfg.rank, n_in, low=-1 / math.sqrt(n_in), high=1 / math.sqrt(n_in))
    self.lora_b = Tensor.zeros(n_out, cfg.rank)

  def __call__(self, x: Tensor) -> Tensor:
    return self.base(x) + (x.dropout(self.dropout) @ self.lora_a.T @ self.lora_b.T) * self.scale

  def merged(self) -> Linear:
    """The base projection with the adapter folded into its weight (a quantized base's: the float weight its codes
    stand for, qlora.py)."""
    return Linear.of((self.base.weight + self.scale * (self.lora_b @ self.lora_a)).contiguous().realize(), self.base.bias)


def _modules(model: GPT):
  for block in model.h:
    for parent in (block.attn, block.mlp):
      for name in PROJECTIONS:
        if getattr(parent, name, None) is not None: yield parent, name


def add_adapters(model: GPT, cfg: LoRAConfig) -> list[Tensor]:
  """Wrap the targeted projections of every block; returns the adapter tensors (the only ones to train)."""
  unknown = set(cfg.targets) - set(PROJECTIONS)
  if unknown: raise ValueError(f"unknown LoRA targets {sorted(unknown)}; choose from {', '.join(PROJECTIONS)}")
  for parent, name in _modules(model):
    if name in cfg.targets: setattr(parent, name, LoRALinear(getattr(parent, name), cfg))
  return list(adapter_state(model).values())


def adapter_state(model: GPT) -> dict[str, Tensor]:
  """The adapter tensors only, by their names in the model's state dict: what an adapter file holds."""
  return {k: v for k, v in get_state_dict(model).items() if ".lora_" in k}


def merge_adapters(model: GPT):
  """Fold every adapter into its base weight: inference runs at the base model's speed, with the same logits."""
  for parent, name in _modules(model):
    if isinstance(getattr(parent, name), LoRALinear): setattr(parent, name, getattr(parent, name).merged())
