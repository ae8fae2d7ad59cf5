"""The kernel tests' one check: run a tinygrad function on a backend and dtype, and compare its output and its
gradient with a float64 numpy reference of the same function.

The gradient reference is a central finite difference of the numpy function along random directions, so no
hand-derived backward formula is shared with the code under test. Tolerances are stated per dtype below."""
import contextlib
from typing import Callable
import numpy as np
from hypothesis import settings, strategies as st
from tinygrad import Tensor, dtypes
from tinygrad.helpers import DEV

# |actual - reference| <= rtol * |reference| + atol * max(1, largest |reference|), elementwise. float16 keeps 11
# significant bits and bfloat16 8, and the ops accumulate several roundings, hence the looser bounds.
TOLERANCE = {"float32": (2e-4, 2e-5), "float16": (1e-2, 1e-2), "bfloat16": (5e-2, 5e-2)}
LARGEST = {"float32": 3e4, "float16": 1e4, "bfloat16": 3e4}  # the biggest input scale each dtype is tested with

# sizes: 1, primes, odd and non-powers of two are where tiling and vectorisation go wrong. Each list starts with a
# typical awkward size, not the smallest: hypothesis tries the first of every list first. CI (the `ci` profile in
# tests/conftest.py) runs that one generated example after each test's explicit @example set, which is what must reach
# every branch, variant and magnitude: give each @example a comment saying why it is there, and reuse shapes (the
# kernels depend on shapes, not values, so an example that changes only magnitudes compiles nothing new).
SIZES = st.sampled_from([13, 1, 2, 3, 5, 7, 8, 11, 16, 17, 31, 64, 67])
SMALL_SIZES = st.sampled_from([3, 1, 2, 5, 7, 8, 13])
SEEDS = st.integers(0, 2**31 - 1)
# for the tests whose examples compile many kernels (a whole block, the polar iteration): a third of the profile's examples
FEWER_EXAMPLES = settings(max_examples=max(1, settings().max_examples // 3))


# Input magnitudes, drawn as a test argument so an @example can name one. The typical magnitude comes first (the
# example hypothesis tries first); LARGE_SCALES also reach the magnitudes that test max-subtraction in softmax and
# log-sum-exp, where its largest, LARGE, stands for the largest each dtype is tested with (see in_range).
SCALES = st.sampled_from([1.0, 0.1, 3.0])
LARGE = 3e4
LARGE_SCALES = st.sampled_from([1.0, 1e-3, 30.0, 1e3, LARGE])


def in_range(scale: float, dtype: str) -> float:
  """scale, capped at the largest magnitude dtype is tested with (LARGEST): LARGE means float16's 1e4."""
  return min(scale, LARGEST[dtype])


def normal(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray: return rng.standard_normal(shape) * scale


@contextlib.contextmanager
def on(backend: str):
  """Make `backend` tinygrad's default device, so the model's own modules build their weights there."""
  previous, DEV.value = DEV.value, backend
  try: yield
  finally: DEV.value = previous


def round_to(x: np.ndarray, dtype: str) -> np.ndarray:
  """x rounded to dtype (to nearest, ties to even), returned as float64: the values the kernel really sees.
  float16 subnormals (below 2^-14) become zero: PoCL's conversion flushes them (a property test found it, see
  test_polar.py), and the kernel tests check arithmetic, not how a backend rounds numbers that small."""
  if dtype == "float16": return np.where(np.abs(x) < 2.0 ** -14, 0.0, x.astype(np.float16).astype(np.float64))
  x = x.astype(np.float32)
  if dtype == "bfloat16":  # numpy has no bfloat16: keep the upper 16 bits of the float32, rounded
    bits = x.view(np.uint32).astype(np.uint64)
    x = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32).view(np.float32)
  return x.astype(np.float64)


def assert_close(actual: np.ndarray, reference: np.ndarray, dtype: str, what: str):
  rtol, atol = TOLERANCE[dtype]
  assert actual.shape == reference.shape, f"{what}: shape {actual.shape}, expected {reference.shape}"
  assert np.isfinite(actual).all(), f"{what}: non-finite values where the reference is {reference[~np.isfinite(actual)][:4]}"
  bound = rtol * np.abs(reference) + atol * max(1.0, np.abs(reference).max(initial=0))
  worst = np.argmax(np.abs(actual - reference) - bound) if actual.size else 0
  assert (np.abs(actual - reference) <= bound).all(), \
    f"{what}: {actual.flat[worst]} vs reference {reference.flat[worst]} (tolerance {bound.flat[worst]:.3g}, {dtype})"


def check(fn: Callable[..., Tensor], reference: Callable[..., np.ndarray], inputs: list[np.ndarray], dtype: str = "float32",
          seed: int = 0, grad: bool = True):
  """fn(*tensors) against reference(*float64 arrays): the output, and the gradient of sum(output * U) for a random U
  with respect to every floating-point input. Integer inputs (indices, targets) pass through as int32."""
  rng = np.random.default_rng(seed)
  is_float = [np.issubdtype(x.dtype, np.floating) for x in inputs]
  values = [round_to(x, dtype) if f else x for x, f in zip(inputs, is_float)]
  # realized leaves in the tested dtype: the kernels under test start from stored low-precision buffers
  tensors = [Tensor(v.astype(np.float32)).cast(getattr(dtypes, dtype)).realize() if f else Tensor(v.astype(np.int32))
             for v, f in zip(values, is_float)]
  out = fn(*tensors)
  expected = reference(*values)
  upstream = rng.standard_normal(expected.shape)
  wrt = [t for t, f in zip(tensors, is_float) if f]
  grads = (out.float() * Tensor(upstream.astype(np.float32))).sum().gradient(*wrt) if grad and wrt else []
  Tensor.realize(out, *grads)
  assert_close(out.float().numpy().astype(np.float64), expected, dtype, "forward")
  for i, g in zip([i for i, f in enumerate(is_float) if f], grads):
    check_gradient(reference, values, i, rng, upstream, g.float().numpy().astype(np.float64), dtype)


DIRECTIONS = 8  # a wrong gradient escapes one random direction with some luck, all eight practically never


def check_gradient(reference, values, i, rng, upstream, grad, dtype):
  """For DIRECTIONS random directions v: <grad, v> must equal d/dh sum(reference(x_i + h v) * U) at h = 0 (a
  central difference of the float64 reference), within rtol * |g| + atol. |g| is the reference gradient's norm,
  estimated from the same differences (E <g, v>^2 = |g|^2 for standard normal v): both the error a dtype's rounding
  makes in <grad, v> and the signal <g, v> grow like |g|, so the test's power does not fall with the input's size,
  and a wrong gradient cannot widen its own bound."""
  def objective(h, direction):
    moved = [x + h * direction if j == i else x for j, x in enumerate(values)]
    return float((reference(*moved) * upstream).sum())
  h = 1e-6  # float64: the rounding error of the difference stays near 1e-10 even for inputs of 3e4
  directions = [rng.standard_normal(values[i].shape) for _ in range(DIRECTIONS)]
  numeric = np.array([(objective(h, d) - objective(-h, d)) / (2 * h) for d in directions])
  analytic = np.array([float((grad * d).sum()) for d in directions])
  rtol, atol = TOLERANCE[dtype]
  bound = 4 * rtol * np.sqrt(np.mean(numeric ** 2)) + atol
  worst = int(np.argmax(np.abs(analytic - numeric)))
  assert np.abs(analytic - numeric).max() <= bound, \
    f"gradient of input {i}: <grad, v> = {analytic[worst]:.6g}, finite difference {numeric[worst]:.6g}, bound {bound:.3g} ({dtype})"
