"""Text generation from a trained model."""
import numpy as np
from tinygrad import Tensor, TinyJit
from aurora_tg.model import GPT


class WindowSampler:
  """Next-token logits by recomputing a full context window each step: one compiled shape serves every length,
  since causal attention makes positions after the last real token irrelevant."""
  def __init__(self, model: GPT):
    self.model, self.T = model, model.cfg.block_size
    self._forward = TinyJit(lambda x: self.model(x).realize())

  def logits(self, ids: list[int]) -> np.ndarray:
    window = ids[-self.T:]
    x = np.zeros((1, self.T), dtype=np.int32)
    x[0, :len(window)] = window
    return self._forward(Tensor(x)).numpy()[0, len(window) - 1]

  def generate(self, ids: list[int], max_new: int, temperature: float = 0.8, top_k: int = 40, seed: int = 0,
               stop: set[int] = frozenset()) -> list[int]:
    rng, out = np.random.default_rng(seed), []
    for _ in range(max_new):
      logits = self.logits(ids + out).astype(np.float64)
      if temperature == 0: nxt = int(logits.argmax())
      else:
        logits[logits < np.sort(logits)[-top_k]] = -np.inf
        probs = np.exp((logits - logits.max()) / temperature)
        nxt = int(rng.choice(len(probs), p=probs / probs.sum()))
      if nxt in stop: break
      out.append(nxt)
    return out
