import math
import numpy as np
import pytest
from tinygrad import Tensor, TinyJit, nn, Context
from aurora_tg.model import GPT, GPTConfig, Norm, apply_rope, rope_tables, MLP, IGNORE_INDEX
from conftest import TEST_SHAPE


def make_model(**overrides) -> GPT:
  Tensor.manual_seed(0)
  return GPT(GPTConfig(**{**TEST_SHAPE, **overrides}))


def random_ids(shape, vocab, seed=0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, vocab, size=shape).astype(np.int32)


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_causality(pos):
  """Changing tokens after position t never changes the logits at positions <= t."""
  model = make_model(pos=pos)
  ids = random_ids((2, 16), 97)
  ids[1, :9] = ids[0, :9]  # the second sequence differs from the first only after position 8
  a, b = model(Tensor(ids)).numpy()
  np.testing.assert_allclose(a[:9], b[:9], atol=1e-5)
  assert np.abs(a[9:] - b[9:]).max() > 1e-3  # and the later positions do see the change


def test_initial_loss_is_log_vocab():
  model = make_model()
  ids = random_ids((2, 17), 97)
  loss = model.loss(Tensor(ids[:, :-1]), Tensor(ids[:, 1:])).item()
  assert abs(loss - math.log(97)) < 0.1


def test_ignore_index_positions_do_not_count():
  model = make_model()
  ids = random_ids((2, 17), 97)
  targets = ids[:, 1:].copy()
  full = model.loss(Tensor(ids[:, :-1]), Tensor(targets)).item()
  targets[:, 8:] = IGNORE_INDEX
  logits = model(Tensor(ids[:, :-1])).numpy()[:, :8].astype(np.float64)
  logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
  expected = -np.take_along_axis(logp, targets[:, :8, None], -1).mean()
  assert model.loss(Tensor(ids[:, :-1]), Tensor(targets)).item() == pytest.approx(expected, abs=1e-4)
  assert full != pytest.approx(expected, abs=1e-4)


def train_steps(model: GPT, x: np.ndarray, y: np.ndarray, steps: int, lr=1e-2) -> list[float]:
  opt = nn.optim.AdamW(nn.state.get_parameters(model), lr=lr, weight_decay=0.0)
  Tensor.realize(*nn.state.get_parameters(model))

  @TinyJit
  def step(x, y):
    with Context(TRAINING=1):
      opt.zero_grad()
      loss = model.loss(x, y)
      loss.backward()
      return loss.realize(*opt.schedule_step())
  return [step(Tensor(x), Tensor(y)).item() for _ in range(steps)]


@pytest.mark.parametrize("arch", [dict(), dict(norm="rmsnorm", pos="rope", mlp="swiglu", bias=False)], ids=["gpt2", "llama"])
def test_overfits_one_batch(arch):
  model = make_model(**arch)
  ids = random_ids((4, 17), 97, seed=1)
  losses = train_steps(model, ids[:, :-1], ids[:, 1:], 60)
  assert losses[-1] < 0.3 * losses[0], losses[::10]


@pytest.mark.parametrize("switch", [dict(norm="rmsnorm"), dict(pos="rope"), dict(mlp="swiglu"), dict(bias=False), dict(mlp="relu2")])
def test_each_llama_switch_trains(switch):  # and squared ReLU
  model = make_model(**switch)
  ids = random_ids((4, 17), 97, seed=2)
  losses = train_steps(model, ids[:, :-1], ids[:, 1:], 5)
  assert all(map(math.isfinite, losses)) and losses[-1] < losses[0]


def test_rmsnorm_matches_numpy():
  x = np.random.default_rng(0).normal(size=(3, 5, 8)).astype(np.float32) * 3
  norm = Norm(8, "rmsnorm", bias=True)
  norm.weight = Tensor(np.linspace(0.5, 2, 8).astype(np.float32))
  expected = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-6) * np.linspace(0.5, 2, 8)
  np.testing.assert_allclose(norm(Tensor(x)).numpy(), expected, rtol=1e-5, atol=1e-5)
  assert norm.bias is None  # RMSNorm has no shift


def test_layernorm_matches_numpy():
  x = np.random.default_rng(1).normal(size=(4, 8)).astype(np.float32) + 5
  norm = Norm(8, "layernorm", bias=True)
  norm.bias = Tensor(np.full(8, 0.5, np.float32))
  expected = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) + 0.5
  np.testing.assert_allclose(norm(Tensor(x)).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_rope_rotation_matches_numpy():
  """Each pair (x_i, x_{i+D/2}) at position p turns by p * 10000^(-2i/D); norms are preserved."""
  T, D = 6, 8
  x = np.random.default_rng(2).normal(size=(1, 2, T, D)).astype(np.float32)
  out = apply_rope(Tensor(x), *rope_tables(D, T)).numpy()
  expected = np.empty_like(x)
  for p in range(T):
    for i in range(D // 2):
      theta = p * 10000 ** (-2 * i / D)
      a, b = x[..., p, i], x[..., p, i + D // 2]
      expected[..., p, i] = a * np.cos(theta) - b * np.sin(theta)
      expected[..., p, i + D // 2] = b * np.cos(theta) + a * np.sin(theta)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(out, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)


def test_swiglu_matches_numpy():
  cfg = GPTConfig(**{**TEST_SHAPE, "mlp": "swiglu", "bias": False})
  mlp = MLP(cfg, proj_std=0.02)
  x = np.random.default_rng(3).normal(size=(2, 3, cfg.n_embd)).astype(np.float32)
  up, gate, down = (w.numpy() for w in (mlp.c_fc.weight, mlp.c_gate.weight, mlp.c_proj.weight))
  g = x @ gate.T
  expected = ((g / (1 + np.exp(-g))) * (x @ up.T)) @ down.T
  np.testing.assert_allclose(mlp(Tensor(x)).numpy(), expected, rtol=1e-4, atol=1e-6)


def test_relu2_matches_numpy():
  """Squared ReLU (--mlp relu2): relu(x W1^T + b1)^2 W2^T + b2, ungated, with GELU's hidden width mlp_ratio * n_embd."""
  cfg = GPTConfig(**{**TEST_SHAPE, "mlp": "relu2", "mlp_ratio": 3.0})
  mlp = MLP(cfg, proj_std=0.02)
  assert cfg.mlp_hidden == 96 and mlp.c_gate is None
  rng = np.random.default_rng(4)
  mlp.c_fc.weight, mlp.c_fc.bias, mlp.c_proj.weight, mlp.c_proj.bias = (
    Tensor(rng.normal(size=shape).astype(np.float32) * scale) for shape, scale in (((96, 32), 0.3), ((96,), 0.5), ((32, 96), 0.1), ((32,), 0.5)))
  x = rng.normal(size=(2, 3, 32)).astype(np.float32)
  w1, b1, w2, b2 = (t.numpy().astype(np.float64) for t in (mlp.c_fc.weight, mlp.c_fc.bias, mlp.c_proj.weight, mlp.c_proj.bias))
  pre = x @ w1.T + b1
  assert (pre < 0).mean() > 0.3 and (pre > 0).mean() > 0.3  # both branches of the ReLU
  expected = np.maximum(pre, 0) ** 2 @ w2.T + b2
  np.testing.assert_allclose(mlp(Tensor(x)).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_gpt2_initialisation():
  model = make_model(n_layer=4, n_embd=64)
  std = lambda t: float(t.numpy().std())
  assert std(model.wte.weight) == pytest.approx(0.02, rel=0.1)
  assert std(model.h[0].attn.c_attn.weight) == pytest.approx(0.02, rel=0.1)
  assert std(model.h[0].mlp.c_proj.weight) == pytest.approx(0.02 / math.sqrt(8), rel=0.1)
  assert np.all(model.h[0].attn.c_attn.bias.numpy() == 0)


def test_head_is_tied_to_embedding():
  model = make_model()
  keys = nn.state.get_state_dict(model).keys()
  assert "wte.weight" in keys and not any("head" in k for k in keys)


@pytest.mark.parametrize("bad", [dict(n_embd=30, n_head=4), dict(norm="batchnorm"), dict(n_layer=0), dict(pos="rope", n_embd=6, n_head=2),
                                 dict(mlp="relu")])
def test_impossible_configs_are_rejected(bad):
  with pytest.raises(ValueError):
    GPTConfig(**{**TEST_SHAPE, **bad})
