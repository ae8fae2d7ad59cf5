"""The KV cache's two layouts against numpy: what a step writes, what it reads back, which keys each token sees, the
positions the model's tables are indexed with, and the tokens whose logits are taken. Decoding through each layout is
checked against the plain forward pass in test_generate.py (SequenceCache) and test_engine.py (RowCache)."""
import numpy as np
import pytest
from tinygrad import Tensor, Variable
from aurora_tg.inference.kv_cache import RowCache, SequenceCache, kv_buffers
from aurora_tg.model import GPTConfig

B, H, BLOCK, D = 3, 2, 8, 4


def random_buffers(rng) -> tuple[list[Tensor], np.ndarray]:
  """One layer's cache filled with noise (what older steps left), on the device and as numpy."""
  old = rng.standard_normal((2, B, H, BLOCK, D)).astype(np.float32)
  return [Tensor(old).realize()], old


def keys_and_values(rng, T: int) -> tuple[np.ndarray, np.ndarray]:
  return (rng.standard_normal((B, H, T, D)).astype(np.float32) for _ in range(2))


def test_kv_buffers_are_zeros_of_the_configs_shape_one_per_layer():
  cfg = GPTConfig(n_layer=3, n_head=2, n_embd=8, block_size=BLOCK, vocab_size=11)
  buffers = kv_buffers(cfg, B)
  assert len(buffers) == 3 and len({id(b) for b in buffers}) == 3
  assert all(b.shape == (2, B, 2, BLOCK, 4) and not b.numpy().any() for b in buffers)


@pytest.mark.parametrize("symbolic", [False, True])
def test_sequence_cache_writes_a_slice_and_reads_the_cache_up_to_it(symbolic):
  rng, start, T = np.random.default_rng(0), 3, 2
  buffers, written = random_buffers(rng)
  k, v = keys_and_values(rng, T)
  written[:, :, :, start:start + T] = np.stack([k, v])
  at = Variable("start", 0, BLOCK - T).bind(start) if symbolic else start
  read_k, read_v, visible = SequenceCache(buffers, at).update(0, Tensor(k), Tensor(v))
  assert visible is None  # the step's queries are the newest keys: the plain causal mask
  expected = written[:, :, :, :start + T]
  if symbolic:
    # the read's length stays symbolic, the view the decode kernels are fast on; padded to the block to compare
    assert not isinstance(read_k.shape[2], int)
    read_k, read_v = (t.pad(((0, 0), (0, 0), (0, BLOCK - (at + T)), (0, 0))) for t in (read_k, read_v))
    expected = np.pad(expected, ((0, 0), (0, 0), (0, 0), (0, BLOCK - start - T), (0, 0)))
  np.testing.assert_array_equal(read_k.numpy(), expected[0])
  np.testing.assert_array_equal(read_v.numpy(), expected[1])
  np.testing.assert_array_equal(buffers[0].numpy(), written)  # the step's slice written, nothing else


def test_sequence_cache_positions_and_pick():
  x = Tensor(np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3))
  assert SequenceCache([], 4).positions(5) == slice(4, 9)
  assert SequenceCache([], 4).pick(x) is x  # no `last`: every token's logits
  np.testing.assert_array_equal(SequenceCache([], 4, last=2).pick(x).numpy(), x.numpy()[:, 2:3])


def rows() -> tuple[np.ndarray, np.ndarray]:
  """Row 0 writes 4 tokens from position 0, row 1 two from 6 (its padding runs past the context), row 2 none."""
  return np.array([0, 6, 2], np.int32), np.array([4, 2, 0], np.int32)


def test_row_cache_writes_each_rows_real_tokens_at_its_positions_and_masks_the_rest():
  rng, T = np.random.default_rng(1), 4
  (buffers, expected), (starts, lengths) = random_buffers(rng), rows()
  k, v = keys_and_values(rng, T)
  cache = RowCache(buffers, Tensor(starts), Tensor(lengths))
  read_k, read_v, visible = cache.update(0, Tensor(k), Tensor(v))
  for b in range(B):
    for t in range(lengths[b]): expected[:, b, :, starts[b] + t] = k[b, :, t], v[b, :, t]
  np.testing.assert_array_equal(read_k.numpy(), expected[0])  # the whole cache: older keys stay, masked
  np.testing.assert_array_equal(read_v.numpy(), expected[1])
  np.testing.assert_array_equal(buffers[0].numpy(), expected)
  positions = starts[:, None] + np.arange(T)  # (B, T), padding included
  np.testing.assert_array_equal(visible.numpy(), (np.arange(BLOCK) <= positions[..., None])[:, None])


def test_row_cache_positions_stay_in_the_tables_and_pick_takes_each_rows_last_real_token():
  starts, lengths = rows()
  cache = RowCache([Tensor.zeros(2, B, H, BLOCK, D)], Tensor(starts), Tensor(lengths))
  np.testing.assert_array_equal(cache.positions(4).numpy(), np.minimum(starts[:, None] + np.arange(4), BLOCK - 1))
  x = np.random.default_rng(2).standard_normal((B, 4, 5)).astype(np.float32)
  last = np.maximum(lengths - 1, 0)  # a row without tokens gives its first position's, unused
  np.testing.assert_array_equal(cache.pick(Tensor(x)).numpy(), x[np.arange(B), last][:, None])
  one = Tensor(x[:, :1])
  assert cache.pick(one) is one  # decoding: each row's one token is its last
