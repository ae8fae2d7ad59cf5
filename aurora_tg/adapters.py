"""Adapter layers (Houlsby et al. 2019): a small bottleneck MLP after the attention and the MLP of every block, added to
their output, trained while the base stays frozen. Unlike LoRA's, an adapter cannot be folded into a weight: it is
two more matrix products per sub-layer at inference, the latency the method is known for."""
from tinygrad.nn.state import get_state_dict
from aurora_tg import UserError
from aurora_tg.model import GPT, Linear, gelu


class Adapter:
  """h -> h + up(gelu(down(h))). up starts at zero, so the adapted model starts exactly as its base."""
  def __init__(self, dim: int, size: int):
    self.down = Linear(dim, size, bias=True, std=0.02)
    self.up = Linear(size, dim, bias=True, std=0.0)

  def __call__(self, h): return h + self.up(gelu(self.down(h)))


def add_adapters(model: GPT, size: int) -> list:
  """An adapter after each block's attention and MLP; returns the adapter tensors (the only ones to train)."""
  if has_adapters(model): raise UserError("the model already has adapter layers; fine-tune it with another stage, or start from its base")
  for block in model.h: block.adapter_attn, block.adapter_mlp = Adapter(model.cfg.n_embd, size), Adapter(model.cfg.n_embd, size)
  return list(adapter_state(model).values())


def has_adapters(model: GPT) -> bool: return any(block.adapter_attn is not None for block in model.h)


def add_saved_adapters(model: GPT, weights: dict):
  """Adapter layers for the saved weights of a model that has them (a run fine-tuned from an adapter run, or an
  export of one), of the saved bottleneck width."""
  if "h.0.adapter_attn.down.weight" in weights: add_adapters(model, weights["h.0.adapter_attn.down.weight"].shape[0])


def adapter_state(model: GPT) -> dict:
  """The adapter tensors only, by their names in the model's state dict: what an adapter run's checkpoint holds."""
  return {k: v for k, v in get_state_dict(model).items() if ".adapter_" in k}
