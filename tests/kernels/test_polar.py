"""The Newton-Schulz polar iteration behind Muon and Aurora, forward and gradient, against an SVD in numpy."""
import numpy as np
import reference as ref
from hypothesis import given, strategies as st
from aurora_tg.optim import polar
from kernel_check import FEWER_EXAMPLES, SEEDS, check, on


def with_singular_values(rng: np.random.Generator, rows: int, cols: int, smallest: float, scale: float) -> np.ndarray:
  """A random rows x cols matrix whose singular values lie in [smallest, 1] * scale. The iteration's fixed step count
  converges for singular values not far below the Frobenius norm / 2^steps, so the test states its conditioning."""
  u, _ = np.linalg.qr(rng.standard_normal((rows, min(rows, cols))))
  v, _ = np.linalg.qr(rng.standard_normal((cols, min(rows, cols))))
  return (u * rng.uniform(smallest, 1.0, min(rows, cols)) * scale) @ v.T


# the first of each list is a typical case, not the smallest: CI may run only the first example
MATRIX_SIZES = st.sampled_from([13, 7, 1, 2, 3, 5, 8, 16, 31, 64, 67])


@FEWER_EXAMPLES
@given(rows=MATRIX_SIZES, cols=st.sampled_from([31, 1, 2, 5, 13, 64, 67]), scale=st.sampled_from([1.0, 1e-3, 1e3]), seed=SEEDS)
def test_polar_factor(backend, dtype, rows, cols, scale, seed):
  """Any magnitude: the iteration normalises first. Tall, wide and square, down to 1 x 1. (At scale 1e-3 in float16
  this test found that PoCL flushes float16 subnormals to zero; see kernel_check.round_to.)"""
  x = with_singular_values(np.random.default_rng(seed), rows, cols, smallest=0.2, scale=scale)
  with on(backend): check(polar, ref.polar, [x], dtype, seed)
