"""The embedding's scatter-add gradient (aurora_tg/backends/scatter.py) against the one-hot product it replaces, on
every backend present, with many repeats of one id (the atomic adds contend for one row); and where it must not run
(a sharded table, another tinygrad, a backend without atomics) the lookup takes the public path and is still right.
The layer's forward and gradient against numpy, in every dtype, are in tests/kernels/test_layers.py."""
import numpy as np
import pytest
from tinygrad import Tensor
from aurora_tg.backends import fence, scatter
from kernel_check import on


def gradients(lookup, weight: np.ndarray, ids: np.ndarray, upstream: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  table = Tensor(weight).contiguous().realize()
  out = lookup(table, Tensor(ids.astype(np.int32)))
  grad, = (out * Tensor(upstream)).sum().gradient(table)
  return out.numpy(), grad.numpy()


def test_the_scatter_add_equals_the_one_hot_product(backend):
  rng = np.random.default_rng(0)
  weight, ids = rng.standard_normal((50, 24)).astype(np.float32), rng.integers(0, 50, (4, 64))
  ids[:, :40] = 7  # 160 of 256 tokens add into one row at once
  upstream = rng.standard_normal((4, 64, 24)).astype(np.float32)
  with on(backend):
    assert scatter.backend(backend) == backend  # every backend the kernel tests run has the atomic path
    out, grad = gradients(scatter.lookup, weight, ids, upstream)
    one_hot_out, one_hot_grad = gradients(scatter.one_hot_lookup, weight, ids, upstream)
  np.testing.assert_array_equal(out, weight[ids])
  np.testing.assert_array_equal(out, one_hot_out)
  expected = np.zeros((50, 24)); np.add.at(expected, ids.reshape(-1), upstream.reshape(-1, 24).astype(np.float64))
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-5)  # the adds' order differs: rounding, not more
  np.testing.assert_allclose(grad, one_hot_grad, rtol=1e-5, atol=1e-5)


def scatter_adds(monkeypatch) -> list:
  """A list that gets an entry each time a gradient is built as the scatter-add."""
  built, original = [], scatter._scatter_add_gradient
  monkeypatch.setattr(scatter, "_scatter_add_gradient", lambda *args: built.append(1) or original(*args))
  return built


def test_other_tinygrads_and_sharded_tables_take_the_public_path(monkeypatch):
  assert scatter.backend(("CPU:0", "CPU:1")) is None and scatter.backend("METAL") is None
  built = scatter_adds(monkeypatch)
  rng = np.random.default_rng(1)
  weight, ids, upstream = rng.standard_normal((9, 3)).astype(np.float32), rng.integers(0, 9, (2, 5)), rng.standard_normal((2, 5, 3)).astype(np.float32)
  expected = np.zeros((9, 3)); np.add.at(expected, ids.reshape(-1), upstream.reshape(-1, 3))
  with on("CPU"): gradients(scatter.lookup, weight, ids, upstream)
  assert len(built) == 1
  monkeypatch.setattr(fence, "version", lambda: "0.99.0")
  with on("CPU"): out, grad = gradients(scatter.lookup, weight, ids, upstream)
  assert len(built) == 1  # not built again: the public path
  np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-6)
