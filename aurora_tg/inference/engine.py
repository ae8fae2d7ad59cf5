"""Batched decoding for serving: requests share one KV cache with a row (a slot) each and decode together in one
jitted step. A request joins between steps (its prompt prefilled in chunks, several joining requests together) and
leaves when it ends or its client goes away, freeing the slot for the next.

The batch always has every slot, active or not, so each step has one shape and one compiled kernel set: a step
costs the same for one request as for all of them, which is the point on a device that is faster at a batch than
at a row. Rows differ in position, so they use the per-row cache layout (kv_cache.RowCache)."""
import collections, threading
from dataclasses import dataclass, field, replace
from typing import Callable
import numpy as np
from tinygrad import Tensor, TinyJit, dtypes
from aurora_tg.backends.host_copy import read, write
from aurora_tg.backends.kernel_search import searching
from aurora_tg.model import GPT
from aurora_tg.inference.kv_cache import RowCache, kv_buffers
from aurora_tg.inference.sampling import MODES, Sampling, key_rows, sample


class Busy(Exception):
  """Every slot and every waiting place is taken."""


@dataclass(eq=False)
class Request:
  ids: list[int]
  sampling: Sampling
  stop: set[int]
  emit: Callable[[int | None, str | None], None]  # called with (token, None) for each token, then (None, finish reason)
  cancelled: bool = False  # set by whoever waits for the tokens, when they no longer want them
  produced: int = 0
  next_token: int = 0
  rng: np.random.Generator = field(default=None)


class BatchDecoder:
  """The device side: the shared cache and the sampler's per-slot state, and one jitted step per (width, mode)."""
  def __init__(self, model: GPT, slots: int, chunk: int = 32, beam: int = 0):
    self.model, self.slots, self.block, self.beam = model, slots, model.cfg.block_size, beam
    self.chunk = max(1, min(chunk, self.block))
    self.kv = kv_buffers(model.cfg, slots)
    self.params = Tensor.zeros(slots, 4).contiguous().realize()
    self.seen = Tensor.zeros(slots, model.head_rows, dtype=dtypes.bool).contiguous().realize()  # as wide as the logits
    self.vocab = Tensor.arange(model.head_rows).unsqueeze(0).realize()
    self._steps = {(width, mode): TinyJit(lambda *a, mode=mode: self._step(*a, mode)) for width in (1, self.chunk) for mode in MODES}
    # per width: tokens, starts, lengths, sampled, keys (see step)
    self.inputs = {width: tuple(Tensor.zeros(*shape, dtype=dtype).contiguous().realize() for shape, dtype in
                                (((slots, width), dtypes.int32), ((slots,), dtypes.int32), ((slots,), dtypes.int32),
                                 ((slots,), dtypes.bool), ((slots, 2), dtypes.uint32))) for width in (1, self.chunk)}
    self._reset = TinyJit(self._reset_rows)

  def _step(self, tokens: Tensor, starts: Tensor, lengths: Tensor, sampled: Tensor, keys: Tensor, mode: str) -> Tensor:
    logits = self.model(tokens, RowCache(self.kv, starts, lengths))[:, -1]
    chosen = sample(logits, self.params, self.seen, keys, mode)
    self.seen.assign(self.seen | ((self.vocab == chosen.unsqueeze(1)) & sampled.unsqueeze(1)))  # the penalty counts what was generated
    Tensor.realize(chosen, self.seen)
    return chosen

  def _reset_rows(self, rows: Tensor, params: Tensor, seen: Tensor):
    Tensor.realize(self.params.assign(params), self.seen.assign(rows.unsqueeze(1).where(seen, self.seen)))

  def start(self, slots: list[int], requests: list[Request], params: np.ndarray):
    """Give requests their slots: the sampler's settings (params: every slot's row) and the tokens their repetition
    penalty counts from the start (the prompt's)."""
    rows, seen = np.zeros(self.slots, bool), np.zeros(self.seen.shape, bool)
    for slot, request in zip(slots, requests):
      rows[slot] = True
      seen[slot, np.asarray(request.ids, dtype=np.int64)] = True
    self._reset(Tensor(rows), Tensor(params.astype(np.float32)), Tensor(seen))

  def step(self, tokens: np.ndarray, starts: np.ndarray, lengths: np.ndarray, sampled: np.ndarray, keys: np.ndarray, mode: str) -> np.ndarray:
    """Feed each slot lengths[s] tokens at positions starts[s]..; the next token of every slot (meaningful where
    sampled[s]: its input ended there)."""
    inputs = self.inputs[tokens.shape[1]]
    for tensor, values in zip(inputs, (tokens, starts, lengths, sampled, keys)): write(tensor, values)
    with searching(self.beam):  # the kernel search (Generator's beam) happens as the step compiles
      return read(self._steps[(tokens.shape[1], mode)](*inputs))


def widest_mode(requests: list[Request]) -> str:
  """One compiled sampler serves every row of a step: the most general one any of them needs (it computes the
  others' choices exactly as their own would)."""
  return max((r.sampling.mode for r in requests), key=MODES.index, default="greedy")


class Engine:
  """Runs requests: between decode steps, waiting requests take free slots; at most `waiting` requests wait, and one
  more is refused (Busy) rather than queued forever. Other threads submit; run() decodes in the thread that loaded
  the model, because tinygrad is used from one thread (its kernel cache's database connection is that thread's)."""
  def __init__(self, model: GPT, slots: int = 8, waiting: int | None = None, beam: int = 0):
    self.decoder = BatchDecoder(model, slots, beam=beam)
    self.slots: list[Request | None] = [None] * slots
    self.params = np.zeros((slots, 4), np.float32)
    self.queue: collections.deque[Request] = collections.deque()
    self.max_waiting = slots if waiting is None else waiting
    self.wake = threading.Condition()
    self.stopping = False
    self.cancelled = 0  # requests whose waiter left before they ended (a client gone, a stop string)

  def submit(self, request: Request):
    with self.wake:
      if self.stopping: raise Busy("the server is shutting down")
      if sum(not r.cancelled for r in self.queue) >= self.max_waiting:
        raise Busy(f"the server is busy: all {len(self.slots)} slots are decoding and {len(self.queue)} requests wait; retry later")
      self.queue.append(request)
      self.wake.notify()

  def status(self) -> dict:
    with self.wake:
      return {"slots": len(self.slots), "active": sum(r is not None for r in self.slots), "waiting": len(self.queue), "cancelled": self.cancelled}

  def stop(self):
    with self.wake:
      self.stopping = True
      self.wake.notify()

  def run(self):
    """Decode until stop()."""
    while True:
      with self.wake:
        while not self.queue and not any(self.slots) and not self.stopping: self.wake.wait()
        if self.stopping:  # nobody is left waiting for an answer that will not come
          for slot, request in enumerate(self.slots):
            if request is not None: self._finish(slot, "error: the server is shutting down")
          for request in self.queue: request.emit(None, "error: the server is shutting down")
          self.queue.clear()
          return
        joining = []
        while self.queue and len(joining) < self.slots.count(None):
          request = self.queue.popleft()
          if not request.cancelled: joining.append(request)
        if joining:  # they hold their slots from here, so status() counts them
          free = [s for s, r in enumerate(self.slots) if r is None]
          for slot, request in zip(free, joining): self.slots[slot] = request
      try:
        if joining: self._prefill(joining)
        self._free_cancelled()
        if any(self.slots): self._decode()
      except Exception as e:  # a failed step ends the requests in it; the engine goes on serving new ones
        for slot, request in enumerate(self.slots):
          if request is not None: self._finish(slot, f"error: {type(e).__name__}: {e}")

  def warm_up(self):
    """Compile every step before the first client waits for it: each mode's prefill and decode, three times over
    (TinyJit compiles on the first call, captures on the second and replays from the third)."""
    for s in (Sampling(temperature=0), Sampling(temperature=1), Sampling(temperature=1, top_k=1)):
      for _ in range(3):
        request = Request([0], replace(s, max_tokens=3), set(), lambda token, reason: None)
        self.slots[0] = request
        self._prefill([request])
        while self.slots[0] is not None: self._decode()

  def _finish(self, slot: int, reason: str):
    request, self.slots[slot] = self.slots[slot], None
    if not request.cancelled: request.emit(None, reason)

  def _free_cancelled(self):
    with self.wake:
      for slot, request in enumerate(self.slots):
        if request is not None and request.cancelled: self.slots[slot], self.cancelled = None, self.cancelled + 1

  def _accept(self, slot: int, token: int):
    """A slot's request got its next token: pass it on, or end the request."""
    request = self.slots[slot]
    if request.cancelled:
      self.cancelled += 1
      return self._finish(slot, "cancelled")
    if token in request.stop: return self._finish(slot, "stop")
    request.emit(token, None)
    request.produced += 1
    request.next_token = token
    # the token goes to the next position; a full context ends the answer as max_tokens does
    if request.produced >= request.sampling.max_tokens or len(request.ids) + request.produced > self.decoder.block:
      self._finish(slot, "length")

  def _keys(self, sampled: np.ndarray) -> np.ndarray:
    keys, rows = np.zeros((len(self.slots), 2), np.uint32), np.flatnonzero(sampled)
    if len(rows): keys[rows] = key_rows([self.slots[slot].rng for slot in rows])
    return keys

  def _prefill(self, joining: list[Request]):
    """Prefill the joining requests' prompts together, a chunk of each per step; each one's first token comes from
    the step its prompt ends in."""
    slots = [self.slots.index(r) for r in joining]
    for slot, request in zip(slots, joining):
      self.params[slot] = request.sampling.row()
      request.rng = np.random.default_rng(request.sampling.seed)
    self.decoder.start(slots, joining, self.params)
    chunk, done = self.decoder.chunk, {slot: 0 for slot in slots}
    while done:
      tokens, starts, lengths = (np.zeros((len(self.slots), chunk), np.int64), np.zeros(len(self.slots), np.int64), np.zeros(len(self.slots), np.int64))
      sampled = np.zeros(len(self.slots), bool)
      for slot, start in done.items():
        part = self.slots[slot].ids[start:start + chunk]
        tokens[slot, :len(part)], starts[slot], lengths[slot] = part, start, len(part)
        sampled[slot] = start + len(part) == len(self.slots[slot].ids)
      chosen = self.decoder.step(tokens, starts, lengths, sampled, self._keys(sampled), widest_mode([self.slots[s] for s in done]))
      for slot in list(done):
        done[slot] += lengths[slot]
        if sampled[slot]:
          del done[slot]
          self._accept(slot, int(chosen[slot]))

  def _decode(self):
    active = [s for s, r in enumerate(self.slots) if r is not None]
    n = len(self.slots)
    tokens, starts, lengths, sampled = np.zeros((n, 1), np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, bool)
    for slot in active:
      request = self.slots[slot]
      tokens[slot, 0], starts[slot], lengths[slot], sampled[slot] = request.next_token, len(request.ids) + request.produced - 1, 1, True
    chosen = self.decoder.step(tokens, starts, lengths, sampled, self._keys(sampled), widest_mode([self.slots[s] for s in active]))
    for slot in active: self._accept(slot, int(chosen[slot]))
