"""The check itself must bite: a gradient that is doubled, halved or of the wrong sign (the forward left right)
fails in every dtype, at CI's sizes, on every backend present."""
import numpy as np
import pytest
import reference as ref
from tinygrad import Tensor
from aurora_tg.model import cross_entropy, gelu, softmax
from kernel_check import check, normal, on

WRONG = {"doubled": 2.0, "halved": 0.5, "sign-flipped": -1.0}
OPS = {"matmul": (lambda a, b: a @ b, np.matmul, [(13, 13), (13, 13)]), "gelu": (gelu, ref.gelu, [(3, 13)]),
       "softmax": (softmax, ref.softmax, [(3, 13)])}


def with_gradient_scaled(fn, factor: Tensor):
  """fn with its inputs' gradients multiplied by factor: t.detach() + (t - t.detach()) * factor is t going forward."""
  return lambda *ts: fn(*[t.detach() + (t - t.detach()) * factor.cast(t.dtype) for t in ts])


@pytest.mark.parametrize("op", OPS)
def test_a_wrong_gradient_fails(backend, dtype, op):
  fn, reference, shapes = OPS[op]
  inputs = [normal(np.random.default_rng(i), *shape, scale=3.0) for i, shape in enumerate(shapes)]
  with on(backend):
    factor = Tensor([1.0]).realize()
    check(with_gradient_scaled(fn, factor), reference, inputs, dtype)  # right: passes
    for name, wrong in WRONG.items():
      factor.assign(Tensor([wrong])).realize()
      with pytest.raises(AssertionError, match="gradient of input"): check(with_gradient_scaled(fn, factor), reference, inputs, dtype)


def test_a_wrong_embedding_gradient_fails(backend, dtype):
  """The same for the embedding's scatter-add, its table's gradient scaled (the ids have none)."""
  from test_layers import embedding_lookup
  rng = np.random.default_rng(0)
  ids, table = rng.integers(0, 13, (3, 5)), normal(rng, 13, 13, scale=3.0)
  with on(backend):
    factor = Tensor([1.0]).realize()
    def scaled(ids, weight): return embedding_lookup(ids, weight.detach() + (weight - weight.detach()) * factor.cast(weight.dtype))
    check(scaled, lambda ids, weight: weight[ids], [ids, table], dtype)
    for name, wrong in WRONG.items():
      factor.assign(Tensor([wrong])).realize()
      with pytest.raises(AssertionError, match="gradient of input"): check(scaled, lambda ids, weight: weight[ids], [ids, table], dtype)


def test_an_unmasked_padded_head_fails(backend, dtype):
  """The padded LM head's check bites: its padding rows' logits left at 0 rather than -inf change the loss and the
  gradients (5 rows padded to 8)."""
  from test_layers import head_loss, padded_head_loss
  rng = np.random.default_rng(0)
  x, table, targets = normal(rng, 13, 13), normal(rng, 5, 13, scale=13 ** -0.5), rng.integers(0, 5, 13)
  def unmasked(x, table, targets): return cross_entropy(x @ table.pad(((0, 3), (0, 0))).T, targets)
  with on(backend):
    check(padded_head_loss, head_loss, [x, table, targets], dtype)
    with pytest.raises(AssertionError): check(unmasked, head_loss, [x, table, targets], dtype)
