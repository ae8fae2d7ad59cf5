"""Quantized inference layers on every backend: int8 matmuls and the int8 tied embedding against numpy computing with
the same int8 values and scales (the kernel's arithmetic), and against the float32 layer within the rounding bound
of the quantization (half a scale step per weight); float16 weights within float16's rounding."""
import numpy as np
from hypothesis import example, given
from tinygrad import Tensor
from aurora_tg.model import Linear, TiedEmbedding
from aurora_tg.inference.quantize import Float16Embedding, Int8Embedding, Int8Linear, int8_rows
from kernel_check import SIZES, SMALL_SIZES, SEEDS, normal, on


@given(rows=SMALL_SIZES, n_in=SIZES, n_out=SIZES, seed=SEEDS)
@example(rows=3, n_in=13, n_out=13, seed=0)  # odd sizes: no vector width divides them
@example(rows=1, n_in=64, n_out=67, seed=0)  # one decoded token through a matrix wider than it is tall
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
  assert codes.dtype == np.int8 and np.abs(codes).max() <= 127
  np.testing.assert_allclose(codes * scale[:, None].astype(np.float64), w, atol=float(scale.max()) / 2 * (1 + 1e-5))
  exact = x.astype(np.float32).astype(np.float64) @ (codes * scale.astype(np.float64)[:, None]).T + b.astype(np.float32)
  np.testing.assert_allclose(got, exact, rtol=2e-5, atol=2e-5 * np.abs(exact).max())
  bound = np.abs(x) @ np.broadcast_to(scale[:, None] / 2, w.shape).T  # |x| . half a step per weight
  assert (np.abs(got - (x @ w.T + b)) <= bound * (1 + 1e-3) + 1e-5).all()
  np.testing.assert_allclose(got[:, 0], np.float32(b[0]), rtol=1e-6)  # the zero row: its bias alone


@given(vocab=SIZES, dim=SIZES, seed=SEEDS)
@example(vocab=13, dim=13, seed=0)
def test_int8_embedding_and_head(backend, vocab, dim, seed):
  rng = np.random.default_rng(seed)
  w, ids, h = normal(rng, vocab, dim, scale=0.02), rng.integers(0, vocab, size=(2, 5)), normal(rng, 2, 5, dim)
  with on(backend):
    embedding = TiedEmbedding(vocab, dim)
    embedding.weight = Tensor(w.astype(np.float32))
    q = Int8Embedding(embedding)
    looked_up, logits = q(Tensor(ids.astype(np.int32))).numpy(), q.project(Tensor(h.astype(np.float32))).numpy()
    codes, scale = q.weight.numpy().astype(np.float64), q.scale.numpy().astype(np.float64)
  rows = codes * scale[:, None]
  np.testing.assert_allclose(looked_up, rows[ids], rtol=1e-6, atol=1e-9)
  expected = h.astype(np.float32).astype(np.float64) @ rows.T
  np.testing.assert_allclose(logits, expected, rtol=2e-5, atol=2e-5 * np.abs(expected).max())


@given(rows=SMALL_SIZES, n_in=SIZES, seed=SEEDS)
@example(rows=3, n_in=13, seed=0)
def test_int8_rows_rounds_to_nearest(backend, rows, n_in, seed):
  w = normal(np.random.default_rng(seed), rows, n_in)
  with on(backend): codes, scale = (t.numpy() for t in int8_rows(Tensor(w.astype(np.float32))))
  np.testing.assert_allclose(scale, np.abs(w).max(1) / 127, rtol=1e-6)
  np.testing.assert_array_equal(codes, np.clip(np.round(w.astype(np.float32) / scale[:, None]), -127, 127))


@given(vocab=SIZES, dim=SIZES, seed=SEEDS)
@example(vocab=67, dim=13, seed=0)  # 67 rows pad to 128
def test_padded_heads_look_up_and_project_as_before(backend, vocab, dim, seed):
  """pad_rows (for decoding) adds zero rows: float32, float16 and int8 tables look up the same rows and give the same
  logits as unpadded, and zero for the padding rows (which GPT drops; tests/test_quantize.py)."""
  rng = np.random.default_rng(seed)
  w, ids, h = normal(rng, vocab, dim, scale=0.02), rng.integers(0, vocab, size=(2, 5)), normal(rng, 2, 5, dim)
  with on(backend):
    for kind in (lambda e: e, Float16Embedding, Int8Embedding):
      embedding = TiedEmbedding(vocab, dim)
      embedding.weight = Tensor(w.astype(np.float32))
      table = kind(embedding)
      before = table(Tensor(ids.astype(np.int32))).numpy(), table.project(Tensor(h.astype(np.float32))).numpy()
      table.pad_rows(64)
      assert table.weight.shape[0] % 64 == 0 and 0 <= table.weight.shape[0] - vocab < 64
      after = table(Tensor(ids.astype(np.int32))).numpy(), table.project(Tensor(h.astype(np.float32))).numpy()
      assert after[1].shape == (2, 5, table.weight.shape[0])
      np.testing.assert_array_equal(after[0], before[0])
      np.testing.assert_allclose(after[1][..., :vocab], before[1], rtol=1e-5, atol=1e-6 * np.abs(before[1]).max())
      np.testing.assert_array_equal(after[1][..., vocab:], 0)


def test_float16_embedding_of_a_large_vocabulary(backend):
  """tinygrad 0.14 on CL miscompiled a float16 gather (a sum in float16) from a table of 32,768 rows, a vocabulary
  people train; Float16Embedding gathers in float32."""
  rng = np.random.default_rng(0)
  w, ids = normal(rng, 32768, 16), rng.integers(0, 32768, size=(1, 8))
  with on(backend):
    embedding = TiedEmbedding(32768, 16)
    embedding.weight = Tensor(w.astype(np.float32))
    looked_up = Float16Embedding(embedding)(Tensor(ids.astype(np.int32))).numpy()
  np.testing.assert_array_equal(looked_up, w.astype(np.float16).astype(np.float32)[ids])
