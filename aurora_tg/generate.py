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
  seed: int | None = 0          # None draws a fresh seed


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
  """Owns the KV cache of one conversation stream. Prefill runs fixed-size chunks and decode single tokens, each
  under TinyJit with the position passed as a symbolic variable, so one compiled kernel set serves every position
  and prompt length. The cache remembers which tokens it holds: a follow-up prompt that extends them (the next
  chat turn) only prefills its new tokens."""
  def __init__(self, model: GPT, prefill_chunk: int = 32):
    self.model, self.block_size = model, model.cfg.block_size
    self.caches = model.new_kv_caches(1)
    self.chunk = max(1, min(prefill_chunk, self.block_size // 2))
    self.chunk_start = Variable("chunk_start", 0, self.block_size - self.chunk)
    self.position = Variable("start_pos", 1, self.block_size - 1)
    self._prefill, self._decode = TinyJit(self._forward), TinyJit(self._forward)
    self.cached: list[int] = []  # the tokens whose keys and values the cache holds, from position 0

  def _forward(self, tokens: Tensor, start_pos) -> Tensor:
    return self.model(tokens, self.caches, start_pos)[0].realize()

  def prefill(self, ids: list[int]) -> np.ndarray:
    """Fill the cache with ids (reusing the prefix it already holds) and return the logits for the next token."""
    if not 0 < len(ids) <= self.block_size: raise ValueError(f"prompt of {len(ids)} tokens does not fit the context of {self.block_size}")
    done = 0
    while done < min(len(self.cached), len(ids) - 1) and self.cached[done] == ids[done]: done += 1
    self.cached = self.cached[:done]
    while done < len(ids):
      # a chunk near the end of the context starts earlier and recomputes a few cached positions identically
      start = min(done, self.block_size - self.chunk)
      chunk = ids[start:start + self.chunk]
      # padding only writes cache positions past the prompt, which decoding overwrites before it reads them
      logits = self._prefill(Tensor([chunk + [0] * (self.chunk - len(chunk))]), self.chunk_start.bind(start)).numpy()
      done = start + len(chunk)
      self.cached = ids[:done]
    return logits[len(chunk) - 1]

  def decode(self, token: int, position: int) -> np.ndarray:
    """Feed the token at `position` (right after the cached ones) and return the logits for the next token."""
    self.cached = self.cached[:position]
    logits = self._decode(Tensor([[token]]), self.position.bind(position)).numpy()[0]
    self.cached.append(token)
    return logits

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
