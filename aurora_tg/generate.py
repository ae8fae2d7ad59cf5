"""Text generation: prefill the prompt, then decode token by token from a preallocated KV cache."""
from dataclasses import dataclass
from typing import Iterator
import numpy as np
from tinygrad import Tensor, TinyJit, Variable
from aurora_tg.model import GPT


@dataclass(frozen=True)
class Sampling:
  temperature: float = 0.8      # 0 means greedy
  top_k: int = 0                # 0 keeps every token
  top_p: float = 1.0            # nucleus: the smallest set whose probability reaches top_p
  repetition_penalty: float = 1.0
  max_tokens: int = 256
  seed: int = 0


def sample_token(logits: np.ndarray, s: Sampling, rng: np.random.Generator, seen: list[int] = ()) -> int:
  """Pick the next token from one row of logits."""
  logits = logits.astype(np.float64)
  if s.repetition_penalty != 1.0 and len(seen):  # CTRL's rule: shrink the logits of tokens already produced
    ids = np.unique(np.asarray(seen))
    logits[ids] = np.where(logits[ids] > 0, logits[ids] / s.repetition_penalty, logits[ids] * s.repetition_penalty)
  if s.temperature == 0: return int(logits.argmax())
  if 0 < s.top_k < len(logits): logits[logits < np.partition(logits, -s.top_k)[-s.top_k]] = -np.inf
  probs = np.exp((logits - logits.max()) / s.temperature)
  probs /= probs.sum()
  if s.top_p < 1.0:
    order = np.argsort(-probs, kind="stable")
    keep = np.cumsum(probs[order]) - probs[order] < s.top_p  # a token stays if the mass before it is below top_p
    probs[order[~keep]] = 0.0
    probs /= probs.sum()
  return int(rng.choice(len(probs), p=probs))


class Generator:
  """Owns the KV cache of one conversation stream. The decode step is jitted once, with the position passed as a
  symbolic variable, so one compiled kernel set serves every position."""
  def __init__(self, model: GPT):
    self.model, self.block_size = model, model.cfg.block_size
    self.caches = model.new_kv_caches(1)
    self.position = Variable("start_pos", 1, self.block_size - 1)
    self._decode = TinyJit(lambda tok, pos: self.model(tok, self.caches, pos)[:, -1].realize())

  def prefill(self, ids: list[int]) -> np.ndarray:
    """Fill the cache with the prompt (from position 0) and return the logits for the next token."""
    if not 0 < len(ids) <= self.block_size: raise ValueError(f"prompt of {len(ids)} tokens does not fit the context of {self.block_size}")
    return self.model(Tensor([ids]), self.caches, 0)[0, -1].numpy()

  def decode(self, token: int, position: int) -> np.ndarray:
    return self._decode(Tensor([[token]]), self.position.bind(position)).numpy()[0]

  def stream(self, ids: list[int], s: Sampling, stop: set[int] = frozenset()) -> Iterator[int]:
    """Yield new tokens one at a time until a stop token, max_tokens, or a full context."""
    rng, out = np.random.default_rng(s.seed), []
    logits = self.prefill(ids)
    while len(out) < s.max_tokens:
      token = sample_token(logits, s, rng, ids + out)
      if token in stop: return
      out.append(token)
      yield token
      position = len(ids) + len(out) - 1
      if position >= self.block_size: return
      logits = self.decode(token, position)

  def generate(self, ids: list[int], s: Sampling, stop: set[int] = frozenset()) -> list[int]:
    return list(self.stream(ids, s, stop))
