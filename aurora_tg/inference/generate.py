"""Text generation: prefill the prompt, then decode token by token from a preallocated KV cache, choosing each token
on the device (aurora_tg/inference/sampling.py)."""
from dataclasses import replace
from typing import Iterator
import numpy as np
from tinygrad import Tensor, TinyJit, Variable, dtypes
from aurora_tg.backends.host_copy import read
from aurora_tg.backends.kernel_search import searching
from aurora_tg.model import GPT
from aurora_tg.inference.kv_cache import SequenceCache, kv_buffers
from aurora_tg.inference.sampling import MODES, Sampling, key_rows, sample


class Generator:
  """Owns the KV cache of one conversation stream. Prefill runs fixed-size chunks, and decode single tokens together
  with the choice of the next one, each under TinyJit with the position passed as a symbolic variable, so one
  compiled kernel set serves every position and prompt length. The cache remembers which tokens it holds: a
  follow-up prompt that extends them (the next chat turn) only prefills its new tokens.

  beam > 0 has tinygrad search that many kernel variants per step kernel as it compiles them (BEAM): minutes on a
  CPU the first time, remembered in tinygrad's cache after, and decoding several times faster (README, bench/decode.py)."""
  def __init__(self, model: GPT, prefill_chunk: int = 32, beam: int = 0):
    self.model, self.block_size, vocab = model, model.cfg.block_size, model.cfg.vocab_size
    self.beam = beam
    self.kv = kv_buffers(model.cfg, 1)
    self.chunk = max(1, min(prefill_chunk, self.block_size // 2))
    self.chunk_start = Variable("chunk_start", 0, self.block_size - self.chunk)
    self.chunk_last = Variable("chunk_last", 0, self.chunk - 1)
    self.position = Variable("start_pos", 1, self.block_size - 1)
    # A decoded token and the sampler's key enter the jits as bound variables, not as tensors made from host values:
    # tinygrad schedules a copy for each new input tensor, which cost more per token than the small preset's model.
    self.token = Variable("token", 0, vocab - 1)
    self.key = tuple(Variable(f"key_{half}", 0, 2 ** 32 - 1, dtype=dtypes.uint32) for half in ("lo", "hi"))
    self._prefill = TinyJit(self._forward)
    self.cached: list[int] = []  # the tokens whose keys and values the cache holds, from position 0
    # the sampler's per-request state lives on the device, so a decode step sends the host one token id back
    self.params = Tensor.zeros(1, 4).contiguous().realize()
    self.seen = Tensor.zeros(1, model.head_rows, dtype=dtypes.bool).contiguous().realize()  # as wide as the logits
    self.vocab = Tensor.arange(model.head_rows).unsqueeze(0).realize()
    # per sampling mode: choosing from given logits (after a prefill), and a decode step that feeds a token and
    # chooses the next in one jitted call: each call costs Python to prepare, as much as the small preset's kernels
    self._samplers = {mode: TinyJit(lambda logits, lo, hi, mode=mode: self._choose(logits, lo, hi, mode)) for mode in MODES}
    self._decoders = {mode: TinyJit(lambda token, start_pos, lo, hi, mode=mode: self._decode(token, start_pos, lo, hi, mode)) for mode in MODES}
    # the logits the last token was chosen from, (1, model.head_rows) on the device: the jit's own output buffer,
    # overwritten by the next call, so a caller that keeps them copies them
    self.logits: Tensor | None = None
    self.start(Sampling(temperature=0))

  def _forward(self, tokens: Tensor, start_pos, last=None) -> Tensor:
    return self.model(tokens, SequenceCache(self.kv, start_pos, last))[:, -1].realize()

  def _choose(self, logits: Tensor, lo, hi, mode: str) -> Tensor:
    keys = Tensor.stack(Tensor(lo), Tensor(hi)).reshape(1, 2)  # the key's two uint32 halves, as sample() takes them
    tokens = sample(logits, self.params, self.seen, keys, mode)
    self.seen.assign(self.seen | (self.vocab == tokens.unsqueeze(1)))  # the penalty counts what was generated
    Tensor.realize(tokens, self.seen)
    return tokens

  def _decode(self, token, start_pos, lo, hi, mode: str) -> tuple[Tensor, Tensor]:
    logits = self._forward(Tensor(token).cast(dtypes.int32).reshape(1, 1), start_pos)
    return self._choose(logits, lo, hi, mode), logits

  def start(self, s: Sampling, seen: list[int] = ()):
    """Set the sampler for a new request: its settings, its seed, and the tokens the repetition penalty counts."""
    self.sampling, self.rng = s, np.random.default_rng(s.seed)
    mask = np.zeros(self.seen.shape, dtype=bool)
    mask[0, np.asarray(seen, dtype=np.int64)] = True
    Tensor.realize(self.params.assign(Tensor([s.row()])), self.seen.assign(Tensor(mask)))

  def _next_key(self) -> list:
    return [half.bind(int(value)) for half, value in zip(self.key, key_rows([self.rng])[0])]

  def choose(self, logits: Tensor) -> int:
    """The next token from logits (1, model.head_rows) on the device, by the settings start() gave; only its id is
    copied."""
    self.logits = logits
    with searching(self.beam): return int(read(self._samplers[self.sampling.mode](logits, *self._next_key()))[0])

  def prefill(self, ids: list[int]) -> Tensor:
    """Fill the cache with ids (reusing the prefix it already holds); the logits (1, model.head_rows) for the next
    token, on the device."""
    if not 0 < len(ids) <= self.block_size: raise ValueError(f"prompt of {len(ids)} tokens does not fit the context of {self.block_size}")
    done = 0
    while done < min(len(self.cached), len(ids) - 1) and self.cached[done] == ids[done]: done += 1
    self.cached = self.cached[:done]
    while done < len(ids):
      # a chunk near the end of the context starts earlier and recomputes a few cached positions identically
      start = min(done, self.block_size - self.chunk)
      chunk = ids[start:start + self.chunk]
      # padding only writes cache positions past the prompt, which decoding overwrites before it reads them; the LM
      # head runs for the chunk's last real position alone
      with searching(self.beam):
        logits = self._prefill(Tensor([chunk + [0] * (self.chunk - len(chunk))]), self.chunk_start.bind(start),
                               self.chunk_last.bind(len(chunk) - 1))
      done = start + len(chunk)
      self.cached = ids[:done]
    return logits

  def decode(self, token: int, position: int) -> int:
    """Feed the token at `position` (right after the cached ones); the next token, chosen on the device by the
    settings start() gave (self.logits holds the logits it was chosen from)."""
    token = int(token)
    if not 0 <= token < self.model.cfg.vocab_size: raise ValueError(f"token {token} is outside the vocabulary")
    self.cached = self.cached[:position]
    with searching(self.beam):
      chosen, self.logits = self._decoders[self.sampling.mode](self.token.bind(token), self.position.bind(position), *self._next_key())
    self.cached.append(token)
    return int(read(chosen)[0])

  def compile(self, s: Sampling):
    """Compile the steps an answer by s runs (prefill, the first choice, decoding) by answering a one-token prompt:
    compiling, and with beam the kernel search and its progress bar, then comes before an answer streams rather than
    after its first token."""
    self.generate([0], replace(s, max_tokens=2))  # one decode step: TinyJit compiles on its first call

  def stream(self, ids: list[int], s: Sampling, stop: set[int] = frozenset()) -> Iterator[int]:
    """Yield new tokens one at a time until a stop token, max_tokens, or a full context."""
    self.start(s, ids)
    token, produced = self.choose(self.prefill(ids)), 0
    while token not in stop and produced < s.max_tokens:
      produced += 1
      yield token
      position = len(ids) + produced - 1
      if position >= self.block_size or produced == s.max_tokens: return
      token = self.decode(token, position)

  def generate(self, ids: list[int], s: Sampling, stop: set[int] = frozenset()) -> list[int]:
    return list(self.stream(ids, s, stop))
