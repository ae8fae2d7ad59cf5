"""Matmuls, softmax and the activations, forward and gradient, on every backend and dtype. Softmax, log-softmax and
GELU are tested as Aurora computes them: in float32 whatever the input dtype (see aurora_tg/model.py); squared ReLU in
the input's dtype."""
import numpy as np
import pytest
import reference as ref
from hypothesis import example, given
from aurora_tg.model import gelu, relu2, softmax
from kernel_check import LARGE, LARGE_SCALES, SIZES, SMALL_SIZES, SEEDS, check, in_range, normal, on


@given(m=SIZES, k=SIZES, n=SIZES, seed=SEEDS)
@example(m=13, k=13, n=13, seed=0)  # typical: square, an odd size that tiles unevenly
def test_matmul(backend, dtype, m, k, n, seed):
  rng = np.random.default_rng(seed)
  with on(backend): check(lambda a, b: a @ b, np.matmul, [normal(rng, m, k), normal(rng, k, n)], dtype, seed)


@given(batch=SMALL_SIZES, heads=SMALL_SIZES, m=SIZES, k=SMALL_SIZES, n=SIZES, seed=SEEDS)
@example(batch=3, heads=3, m=13, k=3, n=13, seed=0)  # typical: attention's scores of 13 positions, head size 3
def test_batched_matmul(backend, dtype, batch, heads, m, k, n, seed):
  rng = np.random.default_rng(seed)
  a, b = normal(rng, batch, heads, m, k), normal(rng, batch, heads, k, n)
  with on(backend): check(lambda a, b: a @ b, np.matmul, [a, b], dtype, seed)


# row-wise ops, each with its float64 reference; all are tested with large magnitudes, where overflow shows
ROW_OPS = {"softmax": (softmax, ref.softmax), "log_softmax": (lambda t: t.float().log_softmax(-1), ref.log_softmax),
           "gelu": (gelu, ref.gelu), "silu": (lambda t: t.silu(), ref.silu), "relu2": (relu2, ref.relu2)}


@pytest.mark.parametrize("op", ROW_OPS)
@given(rows=SMALL_SIZES, cols=SIZES, scale=LARGE_SCALES, seed=SEEDS)
# one shape, so only the first compiles
# typical: softmax spread (largest 0.17 to 0.23), GELU and SiLU curved, not ReLU; 21 of the 39 inputs negative, so
# squared ReLU runs both branches (zero, and x^2 with its gradient 2x)
@example(rows=3, cols=13, scale=1.0, seed=0)
@example(rows=3, cols=13, scale=1e-3, seed=0)  # tiny: softmax nearly uniform, GELU and SiLU nearly x/2
@example(rows=3, cols=13, scale=LARGE, seed=0)  # the largest the dtype takes: overflow, max-subtraction (softmax one-hot)
def test_row_op(backend, dtype, op, rows, cols, scale, seed):
  x = normal(np.random.default_rng(seed), rows, cols, scale=in_range(scale, dtype))
  # x^2 of a float16 above 255 is past float16's largest (65504) however it is computed: squared ReLU's float16
  # inputs are scaled to end at 250 at most, so the largest example reaches outputs near that limit
  if op == "relu2" and dtype == "float16": x *= min(1.0, 250 / np.abs(x).max())
  with on(backend): check(*ROW_OPS[op], [x], dtype, seed)


def test_cpu_float16_batched_matmul_gradient_realized_with_its_forward():
  """A shape whose float16 gradient, realized in one schedule with its forward, was wrong on one machine's clang CPU
  backend (tinygrad 0.14.0; 13 and 7 columns were right, 31 wrong) and is right on others: tinygrad compiles for the
  CPU it runs on (-march=native), so a CPU whose instructions bring the bug back fails here."""
  rng = np.random.default_rng(0)
  a, b = normal(rng, 3, 3, 13, 3), normal(rng, 3, 3, 3, 31)
  with on("CPU"): check(lambda a, b: a @ b, np.matmul, [a, b], "float16", 0)
