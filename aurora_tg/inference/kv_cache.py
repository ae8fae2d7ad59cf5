"""KV caches in the two layouts decoding uses. The model calls a cache's positions, update and pick (model.NoCache is
the plain forward's): SequenceCache for one stream (chat: every row at the same position), RowCache for batched
serving (each row a request at its own position). Each is made for one step, over buffers from kv_buffers that
outlive it."""
from dataclasses import dataclass
from tinygrad import Tensor, UOp, dtypes
from aurora_tg.model import GPTConfig


def kv_buffers(cfg: GPTConfig, batch_size: int = 1) -> list[Tensor]:
  """One preallocated (2, B, heads, block_size, head_dim) key/value buffer per layer, kept outside the model so
  it never enters the state dict or the optimizer."""
  shape = (2, batch_size, cfg.n_head, cfg.block_size, cfg.head_dim)
  return [Tensor.zeros(*shape).contiguous().realize() for _ in range(cfg.n_layer)]


@dataclass(frozen=True, eq=False)
class SequenceCache:
  """Every row's T tokens at positions start..start+T-1: an int, or a bound Variable, so that one compiled kernel set
  serves every position. `last` picks the one token whose logits are wanted (a prefill chunk's last real one); None
  keeps them all."""
  buffers: list[Tensor]
  start: int | UOp = 0  # UOp: a bound Variable
  last: int | UOp | None = None

  def positions(self, T: int) -> slice:
    return slice(self.start, self.start + T)

  def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, None]:
    """Write the keys and values (B, H, T, D) as one slice and read back the cache up to them. With a Variable start
    the read is a view of symbolic length, which the decode kernels are fast on (model.causal_attention); its
    newest T keys are the queries' own, so the plain causal mask is the right one."""
    cache, end = self.buffers[layer], self.start + k.shape[2]
    cache[:, :, :, self.start:end].assign(Tensor.stack(k, v))
    return cache[0, :, :, :end], cache[1, :, :, :end], None

  def pick(self, x: Tensor) -> Tensor:
    return x if self.last is None else x[:, self.last:self.last + 1]


@dataclass(frozen=True, eq=False)
class RowCache:
  """Each row a request of its own: row b's T tokens go to positions starts[b].., of which only the first lengths[b]
  are real (0: the row is left as it is). The logits are each row's last real token's."""
  buffers: list[Tensor]
  starts: Tensor   # (B,) int32
  lengths: Tensor  # (B,) int32

  def _placed(self, T: int) -> Tensor:
    """(B, T): each token's position, padding included (it may run past the context)."""
    return self.starts.unsqueeze(1) + Tensor.arange(T, dtype=dtypes.int32).to(self.starts.device)

  def positions(self, T: int) -> Tensor:
    # padding past the context reads the last position's table entries; it is never written or seen
    return self._placed(T).clip(0, self.buffers[0].shape[3] - 1)

  def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Write each row's real keys and values (B, H, T, D) at its positions and read back the whole cache, with what
    each token sees (B, 1, T, block): the keys at and before its own position, never older requests' leftovers.
    A one-hot matmul places them: each row's offset differs, so no slice can."""
    cache = self.buffers[layer]
    B, T, block = k.shape[0], k.shape[2], cache.shape[3]
    keys = Tensor.arange(block, dtype=dtypes.int32).to(k.device)
    offset = keys.unsqueeze(0) - self.starts.unsqueeze(1)  # (B, block)
    inside = ((offset >= 0) & (offset < self.lengths.unsqueeze(1))).reshape(1, B, 1, block, 1)
    place = (offset.unsqueeze(-1) == Tensor.arange(T, dtype=dtypes.int32).to(k.device)).cast(k.dtype).reshape(1, B, 1, block, T)
    cache.assign(inside.where(place @ Tensor.stack(k, v), cache))
    visible = (keys.reshape(1, 1, block) <= self._placed(T).unsqueeze(-1)).unsqueeze(1)
    return cache[0], cache[1], visible

  def pick(self, x: Tensor) -> Tensor:
    if x.shape[1] == 1: return x  # decoding: the one token is the last
    last = (self.lengths - 1).maximum(0).reshape(-1, 1, 1)  # a row with no tokens gives (unused) logits too
    return (last == Tensor.arange(x.shape[1]).to(x.device).reshape(1, -1, 1)).where(x, 0).sum(1, keepdim=True)
