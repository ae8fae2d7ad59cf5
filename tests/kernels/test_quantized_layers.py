"""Quantized inference layers on every backend: int8 matmuls and the int8 tied embedding against numpy computing with
the same int8 values and group scales (the kernel's arithmetic), and against the float32 layer within the rounding
bound of the quantization (half a scale step per weight); the grouping and rounding against a numpy quantizer."""
import numpy as np
from hypothesis import example, given
from tinygrad import Tensor
from aurora_tg.model import Linear, TiedEmbedding
from aurora_tg.quantize import Int8Embedding, Int8Linear, int8_groups
from kernel_check import SIZES, SMALL_SIZES, SEEDS, normal, on


def group_of(width: int) -> int:
  """The grouping the kernels must use, stated apart: 32 inputs per scale (q8_0's), 16 or 8 where the width is a
  multiple of those only, else the whole row."""
  return next((g for g in (32, 16, 8) if width % g == 0), width)


def per_weight(scale: np.ndarray, width: int) -> np.ndarray:
  """Each weight's scale, from one per group."""
  return np.repeat(scale.astype(np.float64), width // scale.shape[1], axis=1)


@given(rows=SMALL_SIZES, n_in=SIZES, n_out=SIZES, seed=SEEDS)
@example(rows=3, n_in=13, n_out=13, seed=0)  # odd sizes: no vector width divides them, one scale per row
@example(rows=1, n_in=96, n_out=67, seed=0)  # one decoded token; three groups of 32
@example(rows=2, n_in=48, n_out=5, seed=0)  # three groups of 16
def test_int8_linear(backend, rows, n_in, n_out, seed):
  rng = np.random.default_rng(seed)
  x, w, b = normal(rng, rows, n_in), normal(rng, n_out, n_in, scale=0.1), normal(rng, n_out, scale=0.1)
  w[0] = 0  # an all-zero row must stay zero
  with on(backend):
    layer = Linear(n_in, n_out, bias=True)
    layer.weight, layer.bias = Tensor(w.astype(np.float32)), Tensor(b.astype(np.float32))
    q = Int8Linear(layer)
    got = q(Tensor(x.astype(np.float32))).numpy()
    codes, scale = q.weight.numpy(), q.scale.numpy()
  assert codes.dtype == np.int8 and np.abs(codes).max() <= 127 and scale.shape == (n_out, n_in // group_of(n_in))
  steps = per_weight(scale, n_in)
  assert (np.abs(codes * steps - w) <= steps / 2 * (1 + 1e-5)).all()
  exact = x.astype(np.float32).astype(np.float64) @ (codes * steps).T + b.astype(np.float32)
  np.testing.assert_allclose(got, exact, rtol=2e-5, atol=2e-5 * np.abs(exact).max())
  bound = np.abs(x) @ (steps / 2).T  # |x| . half a step per weight
  assert (np.abs(got - (x @ w.T + b)) <= bound * (1 + 1e-3) + 1e-5).all()
  np.testing.assert_allclose(got[:, 0], np.float32(b[0]), rtol=1e-6)  # the zero row: its bias alone


@given(vocab=SIZES, dim=SIZES, seed=SEEDS)
@example(vocab=13, dim=13, seed=0)
@example(vocab=7, dim=64, seed=0)  # two groups per row
def test_int8_embedding_and_head(backend, vocab, dim, seed):
  rng = np.random.default_rng(seed)
  w, ids, h = normal(rng, vocab, dim, scale=0.02), rng.integers(0, vocab, size=(2, 5)), normal(rng, 2, 5, dim)
  with on(backend):
    embedding = TiedEmbedding(vocab, dim)
    embedding.weight = Tensor(w.astype(np.float32))
    q = Int8Embedding(embedding)
    looked_up, logits = q(Tensor(ids.astype(np.int32))).numpy(), q.project(Tensor(h.astype(np.float32))).numpy()
    codes, scale = q.weight.numpy().astype(np.float64), q.scale.numpy().astype(np.float64)
  rows = codes * per_weight(scale, dim)
  assert np.abs(rows - w).max() <= np.abs(w).max() / 127
  np.testing.assert_allclose(looked_up, rows[ids], rtol=1e-6, atol=1e-9)
  expected = h.astype(np.float32).astype(np.float64) @ rows.T
  np.testing.assert_allclose(logits, expected, rtol=2e-5, atol=2e-5 * np.abs(expected).max())


@given(rows=SMALL_SIZES, n_in=SIZES, seed=SEEDS)
@example(rows=3, n_in=13, seed=0)
@example(rows=2, n_in=64, seed=0)
def test_int8_groups_round_to_nearest(backend, rows, n_in, seed):
  w = normal(np.random.default_rng(seed), rows, n_in)
  w[0, :group_of(n_in)] *= 100  # an outlier group: its row's other groups keep their own, finer steps
  with on(backend): codes, scale = (t.numpy() for t in int8_groups(Tensor(w.astype(np.float32))))
  group = group_of(n_in)
  np.testing.assert_allclose(scale, np.abs(w).reshape(rows, -1, group).max(-1) / 127, rtol=1e-6)
  np.testing.assert_array_equal(codes, np.clip(np.round(w.astype(np.float32) / np.repeat(scale, group, axis=1)), -127, 127))
