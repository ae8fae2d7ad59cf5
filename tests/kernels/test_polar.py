"""The Newton-Schulz polar iteration behind Muon and Aurora, forward and gradient, against an SVD in numpy."""
import numpy as np
import pytest
import reference as ref
from hypothesis import example, given, strategies as st
from aurora_tg.optim import polar
from kernel_check import FEWER_EXAMPLES, SEEDS, check, on


def with_singular_values(rng: np.random.Generator, rows: int, cols: int, smallest: float, scale: float) -> np.ndarray:
  """A random rows x cols matrix whose singular values lie in [smallest, 1] * scale. The iteration's fixed step count
  converges for singular values not far below the Frobenius norm / 2^steps, so the test states its conditioning."""
  u, _ = np.linalg.qr(rng.standard_normal((rows, min(rows, cols))))
  v, _ = np.linalg.qr(rng.standard_normal((cols, min(rows, cols))))
  return (u * rng.uniform(smallest, 1.0, min(rows, cols)) * scale) @ v.T


def check_polar(backend: str, dtype: str, rows: int, cols: int, scale: float, seed: int):
  x = with_singular_values(np.random.default_rng(seed), rows, cols, smallest=0.2, scale=scale)
  with on(backend): check(polar, ref.polar, [x], dtype, seed)


# the first of each list is a typical case, not the smallest: hypothesis tries it first
MATRIX_SIZES = st.sampled_from([13, 7, 1, 2, 3, 5, 8, 16, 31, 64, 67])


@FEWER_EXAMPLES
@given(rows=MATRIX_SIZES, cols=st.sampled_from([31, 1, 2, 5, 13, 64, 67]), scale=st.sampled_from([1.0, 1e-3, 1e3]), seed=SEEDS)
@example(rows=13, cols=31, scale=1.0, seed=0)  # wide, typical magnitude
@example(rows=13, cols=31, scale=1e-3, seed=0)  # tiny and large: the normalisation by the Frobenius norm (same kernels)
@example(rows=13, cols=31, scale=1e3, seed=0)
def test_polar_factor(backend, dtype, rows, cols, scale, seed):
  """Any magnitude: the iteration normalises first. Tall, wide and square, down to 1 x 1. (At scale 1e-3 in float16
  this test found that PoCL flushes float16 subnormals to zero; see kernel_check.round_to.)"""
  check_polar(backend, dtype, rows, cols, scale, seed)


@pytest.mark.parametrize(("rows", "cols"), [(31, 13), (13, 13)], ids=["tall", "square"])
def test_polar_factor_of_tall_and_square_matrices(backend, rows, cols):
  """CI's tall and square examples (the property above also draws them). Tall matrices take their own branch: the
  iteration runs on the transpose. polar() computes in float32 whatever its input's dtype, and the wide examples above
  check that cast in every dtype, so these shapes are checked in float32 only (3 of 5 compiles fewer on CPU and CL)."""
  check_polar(backend, "float32", rows, cols, 1.0, 0)
