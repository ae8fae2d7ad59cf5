"""Optimizers against independent numpy implementations of their rules, parameter grouping, and training."""
import math
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from tinygrad import Tensor, Context
from tinygrad.nn.state import get_state_dict
from aurora_tg import optim
from aurora_tg.formats import checkpoint
from aurora_tg.model import GPT, GPTConfig
from aurora_tg.config import DEFAULTS
from aurora_tg.optim import OPTIMIZERS
from aurora_tg.trainer import TrainSettings, build_optimizer
from aurora_tg.cli.train import machine
CPU = machine("CPU")  # what the config asks of the machine, answered here by tinygrad's CPU backend
from conftest import TEST_SHAPE
from test_trainer import SETTINGS, make_trainer, run_record


# ----- numpy references -----
# Newton-Schulz's (a, b, c) per step, written out: five of Jordan et al.'s fast quintic, three of the simple one
NS_STEPS = [(3.4445, -4.7750, 2.0315)] * 5 + [(2.0, -1.5, 0.5)] * 3


def np_polar(x: np.ndarray) -> np.ndarray:
  """The same Newton-Schulz rule, in float64 numpy."""
  tall = x.shape[0] > x.shape[1]
  x = (x.T if tall else x).astype(np.float64)
  x = x / (np.linalg.norm(x) + 1e-7)
  for a, b, c in NS_STEPS:
    gram = x @ x.T
    x = a * x + b * gram @ x + c * gram @ gram @ x
  return x.T if tall else x


def np_aurora_direction(g: np.ndarray) -> np.ndarray:
  m, n = g.shape
  if m == n: return np_polar(g)
  if m < n: return np_aurora_direction(g.T).T
  d = 1 / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-7)
  u = np_polar(d * g)
  d = d * np.sqrt((n / m) / (u ** 2).sum(1, keepdims=True))
  return np_polar(d * g)


def row_spread(u: np.ndarray) -> float:
  rows = np.linalg.norm(u, axis=1)
  return rows.std() / rows.mean()


def leveraged_gradient(m=48, n=12, seed=0) -> np.ndarray:
  """A tall gradient whose rows differ in scale by orders of magnitude: very uneven leverage."""
  rng = np.random.default_rng(seed)
  return (rng.standard_normal((m, n)) * np.exp(1.5 * rng.standard_normal((m, 1)))).astype(np.float32)


def run_optimizer(opt, param: Tensor, grads: list[np.ndarray]) -> np.ndarray:
  with Context(TRAINING=1):
    for g in grads:
      param.grad = Tensor(g)
      opt.step()
  return param.numpy()


# ----- the polar factor -----
SHAPES = [(1, 1), (1, 7), (7, 1), (5, 5), (13, 4), (4, 13), (24, 8), (8, 24), (16, 16), (31, 3)]


@settings(max_examples=25, deadline=None)
@given(shape=st.sampled_from(SHAPES), rank_drop=st.integers(0, 2), seed=st.integers(0, 2 ** 16))
def test_newton_schulz_gives_the_svd_polar_factor(shape, rank_drop, seed):
  """Matrices with nonzero singular values within a factor of 20 of each other, some of them rank-deficient:
  the result's nonzero singular values are 1 to 2e-3, and it equals U V^T from numpy's SVD to 2e-3."""
  rng = np.random.default_rng(seed)
  m, n = shape
  k = max(1, min(m, n) - rank_drop)
  u, _ = np.linalg.qr(rng.standard_normal((m, k)))
  v, _ = np.linalg.qr(rng.standard_normal((n, k)))
  x = (u * rng.uniform(0.05, 1.0, k) * 10 ** rng.uniform(-3, 3)) @ v.T
  got = optim.polar(Tensor(x.astype(np.float32))).numpy()
  np.testing.assert_allclose(np.linalg.svd(got, compute_uv=False)[:k], 1.0, atol=2e-3)
  np.testing.assert_allclose(got, u @ v.T, atol=2e-3)


# ----- Aurora -----
@pytest.mark.parametrize("condition", [1.0, 1e3, 1e5])
@pytest.mark.parametrize("rows", [256, 96])
def test_tall_gram_form_follows_the_plain_iteration_on_ill_conditioned_matrices(rows, condition):
  """A tall matrix's steps run on its Gram matrix, re-anchored every GRAM_RESTART steps; without the re-anchoring
  the float32 error here grows past 1e4. Singular values from 1 down to 1/condition, where rounding hurts most."""
  rng = np.random.default_rng(int(condition))
  u, _ = np.linalg.qr(rng.standard_normal((rows, 32)))
  v, _ = np.linalg.qr(rng.standard_normal((32, 32)))
  g = (u * np.logspace(0, -np.log10(condition), 32)) @ v.T
  got = optim.polar(Tensor(g.astype(np.float32))).numpy()
  np.testing.assert_allclose(got, np_polar(g), atol=5e-5)


def test_aurora_evens_out_row_norms_that_muon_leaves_uneven():
  g = leveraged_gradient()
  muon = optim.polar(Tensor(g)).numpy()
  aurora = optim.Aurora([Tensor.zeros(*g.shape)], lr=0.1).direction(Tensor(g)).numpy()
  assert row_spread(aurora) * 5 < row_spread(muon), (row_spread(aurora), row_spread(muon))
  np.testing.assert_allclose(aurora.T @ aurora, np.eye(g.shape[1]), atol=1e-3)  # columns stay orthonormal
  np.testing.assert_allclose(aurora, np_aurora_direction(g), atol=1e-4)


def np_svd_polar(x: np.ndarray) -> np.ndarray:
  u, _, vt = np.linalg.svd(x, full_matrices=False)
  return u @ vt


def balanced_frame(m: int, n: int, seed: int = 0) -> np.ndarray:
  """A point of Riemannian Aurora's manifold: orthonormal columns, every squared row norm n/m. Found by alternating
  the two projections (rows rescaled, then the SVD's polar factor) until both hold to float64 precision."""
  u = np_svd_polar(np.random.default_rng(seed).standard_normal((m, n)))
  for _ in range(300): u = np_svd_polar(u * np.sqrt(n / m) / np.linalg.norm(u, axis=1, keepdims=True))
  np.testing.assert_allclose((u ** 2).sum(1), n / m, atol=1e-12)
  return u


def np_tangent_projection(u: np.ndarray, g: np.ndarray) -> np.ndarray:
  """g minus its least-squares fit by the constraints' normal directions at u: U S for symmetric S (orthonormal
  columns) and e_i e_i^T U (row i's norm). The fit is numpy's dense lstsq over a basis of those directions."""
  m, n = u.shape
  normals = []
  for i in range(n):
    for j in range(i, n):
      s = np.zeros((n, n)); s[i, j] = s[j, i] = 1
      normals.append(u @ s)
  for i in range(m):
    d = np.zeros((m, n)); d[i] = u[i]
    normals.append(d)
  basis = np.stack([d.ravel() for d in normals], 1)
  return g - (basis @ np.linalg.lstsq(basis, g.ravel(), rcond=None)[0]).reshape(m, n)


def test_riemannian_aurora_steps_along_the_tangent_space_projection():
  """Riemannian Aurora's ascent direction at a point of its manifold is the orthogonal projection of g onto the
  tangent space there (the row norms' multipliers come from its conjugate-gradient solve), checked against a float64
  least-squares projection. The projection is tangent: U^T Z skew-symmetric, each row of Z orthogonal to U's."""
  u = balanced_frame(48, 12)
  g = leveraged_gradient().astype(np.float64)
  z = optim.tangent_projection(Tensor(u.astype(np.float32)), Tensor(g.astype(np.float32))).numpy().astype(np.float64)
  expected = np_tangent_projection(u, g)
  scale = np.abs(expected).max()
  np.testing.assert_allclose(u.T @ z + z.T @ u, 0, atol=1e-5 * scale)
  np.testing.assert_allclose((z * u).sum(1), 0, atol=1e-5 * scale)
  np.testing.assert_allclose(z, expected, atol=1e-5 * scale)


def test_riemannian_aurora_keeps_columns_orthonormal_and_rows_even():
  g = leveraged_gradient()
  u = optim.Aurora([Tensor.zeros(*g.shape)], lr=0.1, riemannian=True).direction(Tensor(g)).numpy()
  np.testing.assert_allclose(u.T @ u, np.eye(g.shape[1]), atol=1e-3)
  assert row_spread(u) * 3 < row_spread(optim.polar(Tensor(g)).numpy())
  assert (g * u).sum() > 0.2 * np.linalg.svd(g, compute_uv=False).sum()  # still a descent direction


def test_aurora_steps_match_numpy_on_a_tall_matrix():
  rng = np.random.default_rng(1)
  w0, grads = rng.standard_normal((24, 8)).astype(np.float32), [leveraged_gradient(24, 8, s) for s in range(3)]
  param = Tensor(w0).contiguous().realize()
  got = run_optimizer(optim.Aurora([param], lr=0.05, weight_decay=0.025), param, grads)
  w, mom = w0.astype(np.float64), np.zeros_like(w0, dtype=np.float64)
  for g in grads:
    mom = 0.95 * mom + 0.05 * g
    update = np_aurora_direction(0.05 * g + 0.95 * mom) * math.sqrt(24 / 8)
    w = w * (1 - 0.05 * 0.025) - 0.05 * update
  np.testing.assert_allclose(got, w, atol=1e-4)


def np_normuon(w0: np.ndarray, grads: list[np.ndarray], lr: float, wd: float) -> np.ndarray:
  """NorMuon as its paper states it (Li et al. 2025, Algorithm 1), float64: Muon's direction, each row divided by the
  root of a running mean of its squares (beta2 0.95), rescaled to the direction's Frobenius norm."""
  m, n = w0.shape
  w, mom, v = w0.astype(np.float64), np.zeros_like(w0, dtype=np.float64), np.zeros((m, 1))
  for g in grads:
    mom = 0.95 * mom + 0.05 * g
    o = np_polar(0.05 * g + 0.95 * mom)
    v = 0.95 * v + 0.05 * (o ** 2).mean(1, keepdims=True)
    normalised = o / (np.sqrt(v) + 1e-10)
    update = normalised * np.linalg.norm(o) / np.linalg.norm(normalised) * math.sqrt(max(1, m / n))
    w = w * (1 - lr * wd) - lr * update
  return w


@pytest.mark.parametrize("shape", [(24, 8), (8, 24), (12, 12)])
def test_normuon_steps_match_numpy(shape):
  rng = np.random.default_rng(2)
  w0 = rng.standard_normal(shape).astype(np.float32)
  grads = [leveraged_gradient(*shape, s) if shape[0] >= shape[1] else leveraged_gradient(*shape[::-1], s).T.copy() for s in range(4)]
  param = Tensor(w0).contiguous().realize()
  got = run_optimizer(optim.NorMuon([param], lr=0.05, weight_decay=0.025), param, grads)
  np.testing.assert_allclose(got, np_normuon(w0, grads, 0.05, 0.025), atol=1e-4)
  muon_param = Tensor(w0).contiguous().realize()
  muon = run_optimizer(optim.Muon([muon_param], lr=0.05, weight_decay=0.025), muon_param, grads)
  # a wide polar factor has orthonormal rows, already even: there NorMuon is Muon; a tall one's rows are uneven
  if shape[0] < shape[1]: np.testing.assert_allclose(got, muon, atol=1e-5)
  if shape[0] > shape[1]: assert np.abs(got - muon).max() > 1e-3


@pytest.mark.parametrize("scale", [1e-4, 1e4])
def test_riemannian_direction_does_not_depend_on_the_gradients_scale(scale):
  """Scaled by a power of two (no rounding in the input), the direction is bit-identical even for a very uneven
  gradient; scaled by 1e-4 or 1e4, the input's float32 rounding alone differs, and the direction stays within 1e-4
  for a gradient of moderate leverage (the float32 solve can amplify such input rounding, see optim.py)."""
  aurora = optim.Aurora([Tensor.zeros(48, 12)], lr=0.1, riemannian=True)
  g = leveraged_gradient()
  exact = np.float32(2.0 ** round(math.log2(scale)))
  np.testing.assert_array_equal(aurora.direction(Tensor(g * exact)).numpy(), aurora.direction(Tensor(g)).numpy())
  rng = np.random.default_rng(0)
  g = (rng.standard_normal((48, 12)) * np.exp(0.25 * rng.standard_normal((48, 1)))).astype(np.float32)
  np.testing.assert_allclose(aurora.direction(Tensor(g * np.float32(scale))).numpy(), aurora.direction(Tensor(g)).numpy(), atol=1e-4)


def test_fused_attention_is_updated_as_separate_q_k_v_blocks_in_one_batch():
  """c_attn (3d x d) under a matrix optimizer: each d x d block gets its own polar factor (square: Aurora is Muon
  there), with no aspect-ratio scale; the matrices of one shape are computed together and each still equals its
  own numpy update."""
  model = GPT(GPTConfig(**{**TEST_SHAPE, "mlp_ratio": 4.0}))
  state = get_state_dict(model)
  rng = np.random.default_rng(5)
  before = {k: t.numpy().astype(np.float64) for k, t in state.items()}
  lr = 0.5
  opt = optim.build_optimizer(model, "aurora", lr, 0.0, 0.0, 0.0)
  grads = {}
  with Context(TRAINING=1):
    names = {id(t): k for k, t in state.items()}
    for p in opt.params:
      grads[names[id(p)]] = rng.standard_normal(p.shape) * (np.exp(rng.standard_normal((p.shape[0], 1))) if p.ndim == 2 else 1)
      p.grad = Tensor(grads[names[id(p)]].astype(np.float32))
    opt.step()
  d = TEST_SHAPE["n_embd"]
  for k, g in grads.items():
    if not k.startswith("h.") or g.ndim != 2: continue
    update = 0.05 * g + 0.95 * (0.05 * g)  # Nesterov's look-ahead after one step from zero momentum
    if k.endswith("attn.c_attn.weight"): expected = np.concatenate([np_polar(update[i * d:(i + 1) * d]) for i in range(3)])
    else: expected = np_aurora_direction(update) * math.sqrt(max(1, g.shape[0] / g.shape[1]))
    np.testing.assert_allclose(before[k] - state[k].numpy(), lr * expected, atol=1e-4, err_msg=k)


def test_the_users_weight_decay_reaches_the_matrix_optimizer():
  """--weight-decay given: a matrix optimizer decays the blocks' matrices by it (not its own 0.025), seen in one step
  on zero gradients through the trainer's own optimizer construction from the flags."""
  from aurora_tg import config
  from aurora_tg.trainer import build_optimizer
  settings = config.train_settings("tiny", "muon", {"optimizer": "muon", "weight_decay": 0.4}, CPU)
  assert settings.matrix_weight_decay == settings.weight_decay == 0.4
  assert config.train_settings("tiny", "muon", {"optimizer": "muon"}, CPU).matrix_weight_decay == 0.025
  model = GPT(GPTConfig(**TEST_SHAPE))
  weight = model.h[0].mlp.c_fc.weight
  before = weight.numpy().astype(np.float64)
  opt = build_optimizer(model, settings)
  with Context(TRAINING=1):
    for p in opt.params: p.grad = p.zeros_like()
    opt.step()
  np.testing.assert_allclose(weight.numpy(), before * (1 - settings.lr * 0.4), rtol=1e-6)


def test_aurora_equals_muon_on_square_and_transposes_wide():
  rng = np.random.default_rng(2)
  square = rng.standard_normal((12, 12)).astype(np.float32)
  aurora, muon = optim.Aurora([Tensor.zeros(12, 12)], lr=0.1), optim.Muon([Tensor.zeros(12, 12)], lr=0.1)
  np.testing.assert_allclose(aurora.direction(Tensor(square)).numpy(), muon.direction(Tensor(square)).numpy(), atol=1e-6)
  tall = leveraged_gradient(36, 12)
  wide = aurora.direction(Tensor(np.ascontiguousarray(tall.T))).numpy()
  np.testing.assert_allclose(wide, aurora.direction(Tensor(tall)).numpy().T, atol=1e-5)


# ----- classic optimizers -----
def np_classic(name: str, w: np.ndarray, grads: list[np.ndarray], lr: float, wd: float) -> np.ndarray:
  """Textbook rules, one step at a time, with decoupled weight decay."""
  state = {k: np.zeros_like(w) for k in ("m", "v", "vmax", "s", "u")}
  for t, g in enumerate(grads, start=1):
    if name == "amsgrad":
      state["m"] = 0.9 * state["m"] + 0.1 * g
      state["v"] = 0.999 * state["v"] + 0.001 * g * g
      state["vmax"] = np.maximum(state["vmax"], state["v"])
      d = state["m"] / (1 - 0.9 ** t) / (np.sqrt(state["vmax"] / (1 - 0.999 ** t)) + 1e-8)
    elif name == "rmsprop":
      state["v"] = 0.99 * state["v"] + 0.01 * g * g
      d = g / (np.sqrt(state["v"]) + 1e-8)
    elif name == "adagrad":
      state["s"] += g * g
      d = g / (np.sqrt(state["s"]) + 1e-10)
    elif name == "adadelta":
      state["v"] = 0.9 * state["v"] + 0.1 * g * g
      d = np.sqrt(state["u"] + 1e-6) / np.sqrt(state["v"] + 1e-6) * g
      state["u"] = 0.9 * state["u"] + 0.1 * d * d
    elif name == "adamax":
      state["m"] = 0.9 * state["m"] + 0.1 * g
      state["u"] = np.maximum(0.999 * state["u"], np.abs(g) + 1e-8)
      d = state["m"] / (1 - 0.9 ** t) / state["u"]
    elif name == "nadam":
      state["m"] = 0.9 * state["m"] + 0.1 * g
      state["v"] = 0.999 * state["v"] + 0.001 * g * g
      m_hat = 0.9 * state["m"] / (1 - 0.9 ** (t + 1)) + 0.1 * g / (1 - 0.9 ** t)
      d = m_hat / (np.sqrt(state["v"] / (1 - 0.999 ** t)) + 1e-8)
    w = w - lr * (d + wd * w)
  return w


@pytest.mark.parametrize("name,cls", [("amsgrad", optim.AMSGrad), ("rmsprop", optim.RMSprop), ("adagrad", optim.Adagrad),
                                      ("adadelta", optim.Adadelta), ("adamax", optim.Adamax), ("nadam", optim.Nadam)])
def test_classic_optimizer_matches_its_textbook_rule(name, cls):
  rng = np.random.default_rng(3)
  w0 = rng.standard_normal((5, 3))
  grads = [rng.standard_normal((5, 3)) * (i + 1) for i in range(4)]
  param = Tensor(w0.astype(np.float32)).contiguous().realize()
  got = run_optimizer(cls([param], lr=0.01, weight_decay=0.1), param, [g.astype(np.float32) for g in grads])
  np.testing.assert_allclose(got, np_classic(name, w0, grads, 0.01, 0.1), rtol=1e-4, atol=1e-5)


def np_ftrl(w: np.ndarray, grads: list[np.ndarray], lr: float, l1: float, l2: float, initial: float = 0.1) -> np.ndarray:
  """TensorFlow's ApplyFtrl (learning-rate power -1/2) as its documentation states it, one step at a time."""
  accum, linear = np.full_like(w, initial), np.zeros_like(w)
  for g in grads:
    accum_new = accum + g * g
    linear = linear + g - (np.sqrt(accum_new) - np.sqrt(accum)) / lr * w
    quadratic = np.sqrt(accum_new) / lr + 2 * l2
    w = np.where(np.abs(linear) > l1, (np.sign(linear) * l1 - linear) / quadratic, 0.0)
    accum = accum_new
  return w


@pytest.mark.parametrize("l1, l2", [(0.0, 0.0), (3.0, 0.1)])  # without regularisation; with both, 4 of the 15 weights exactly 0
def test_ftrl_matches_tensorflows_rule(l1, l2):
  rng = np.random.default_rng(5)
  w0 = rng.standard_normal((5, 3))
  grads = [rng.standard_normal((5, 3)) * (i + 1) for i in range(4)]
  param = Tensor(w0.astype(np.float32)).contiguous().realize()
  got = run_optimizer(optim.FTRL([param], lr=0.05, l1=l1, l2=l2), param, [g.astype(np.float32) for g in grads])
  expected = np_ftrl(w0, grads, 0.05, l1, l2)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
  if l1: assert (expected == 0).any() and (got[expected == 0] == 0).all()  # L1's zeros are exact


# ----- grouping, diagnostics, training -----
@pytest.mark.parametrize("arch", [{}, {"mlp": "swiglu", "bias": False, "pos": "rope"}])
def test_every_parameter_lands_in_exactly_one_group(arch):
  model = GPT(GPTConfig(**{**TEST_SHAPE, **arch}))
  groups = optim.param_groups(model)
  names = {id(t): name for name, t in get_state_dict(model).items()}
  placed = [id(t) for group in groups.values() for t in group]
  assert sorted(placed) == sorted(names) and len(set(placed)) == len(placed)
  assert all(names[id(t)].startswith("h.") and t.ndim == 2 for t in groups["matrices"])
  assert {names[id(t)] for t in groups["embeddings"]} == ({"wte.weight", "wpe.weight"} if not arch else {"wte.weight"})
  assert all(t.ndim == 1 for t in groups["other"])
  opt = optim.build_optimizer(model, "aurora", 0.05, 3e-3, 0.1)
  assert [len(o.params) for o in opt.optimizers] == [len(groups[g]) for g in ("matrices", "embeddings", "other")]
  saved = checkpoint.optimizer_state(opt, [t for group in groups.values() for t in group])
  assert sum(k.startswith("optimizers.0.b.") for k in saved) == len(groups["matrices"])  # momentum is checkpointed


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_weight_decay_shrinks_matrices_and_embeddings_but_not_norms_or_biases(name):
  """One step on zero gradients is weight decay alone: AdamW's w (1 - lr wd) on the embeddings (and with adamw the
  matrices), a matrix optimizer's decay on the blocks' matrices (at its lr; Aurora is grouped as Muon is), and
  nothing at all on norm gains and biases, which start non-zero here so that decay would show."""
  model = GPT(GPTConfig(**TEST_SHAPE))
  state = get_state_dict(model)
  rng = np.random.default_rng(4)
  for t in state.values(): t.assign(Tensor(rng.uniform(0.5, 1.5, t.shape).astype(np.float32))).realize()
  before = {k: t.numpy().astype(np.float64) for k, t in state.items()}
  lr, adam_lr, wd, matrix_wd = 0.5, 0.2, 0.1, 0.3
  opt = optim.build_optimizer(model, name, lr, adam_lr, wd, matrix_wd)
  with Context(TRAINING=1):
    for p in opt.params: p.grad = p.zeros_like()
    opt.step()
  exempt = [k for k in state if k.endswith(".bias") or k.split(".")[-2] in ("ln_1", "ln_2", "ln_f")]
  assert len(exempt) == TEST_SHAPE["n_layer"] * (4 + 2 * 2) + 2  # 4 linear biases and 2 norms a block, the final norm
  for k, t in state.items():
    if k in exempt: factor = 1.0
    elif k in ("wte.weight", "wpe.weight"): factor = 1 - (adam_lr if name == "muon" else lr) * wd
    else: factor = 1 - lr * (matrix_wd if name == "muon" else wd)
    np.testing.assert_allclose(t.numpy(), before[k] * factor, rtol=1e-6, err_msg=k)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_trains_through_the_trainer_and_checkpoints_its_state(name, tmp_path):
  """Six steps at the optimizer's default rate (the table's) lower the validation loss, and the checkpoint holds
  that optimizer's state: the tensors the optimizer built directly for the same model has. (One command-line run,
  in tests/cli/test_train.py, checks that --optimizer reaches the trainer.)"""
  settings = TrainSettings(**{**SETTINGS.__dict__, "optimizer": name, "lr": DEFAULTS.get(name, {}).get("lr", 3e-3), "adam_lr": 3e-3})
  trainer = make_trainer(settings)
  before = trainer.evaluate()
  for _ in range(6): trainer.train_step()
  assert trainer.evaluate() < before - 0.01, name  # the slowest here (LAMB, SGD at their rates) gain about 0.015
  _, optimizer_state, _ = checkpoint.load(trainer.save(tmp_path, run_record(trainer)))
  built = build_optimizer(GPT(GPTConfig(**TEST_SHAPE)), settings)  # lazy: nothing is computed
  assert {k: v.shape for k, v in optimizer_state.items()} == {k: v.shape for k, v in checkpoint.optimizer_state(built, built.params).items()}


def test_a_non_finite_update_is_an_error_not_a_silent_step():
  from aurora_tg.trainer import NonFinite
  trainer = make_trainer(TrainSettings(**{**SETTINGS.__dict__, "lr": float("inf")}))
  with pytest.raises(NonFinite, match="update"): trainer.train_step()
