"""Optimizers tinygrad lacks: Aurora (vanilla and Riemannian), Muon and NorMuon on the same polar routine, and the classic
elementwise rules. All are tinygrad `Optimizer`s with fixed iteration counts, so they run inside the jitted step.
tinygrad's own AdamW, SGD and LAMB are used as they are."""
import math
from tinygrad import Tensor, nn
from tinygrad.nn.optim import Optimizer
from tinygrad.nn.state import get_state_dict

# Newton-Schulz steps X <- a X + b X (X^T X) + c X (X^T X)^2, one (a, b, c) per step. Jordan et al.'s quintic (Muon's,
# tinygrad's) grows small singular values 3.4x a step but leaves them anywhere in [0.7, 1.2]; the simple quintic
# p(s) = 2s - 1.5s^3 + 0.5s^5 grows them 2x, and s = 1 is its super-attracting fixed point, so it lands them on 1.
# Five of the first, then three of the second, bring every singular value from 5e-4 of the largest up to 1 within
# 2e-3, as twelve simple steps did: a third fewer matmuls for the same polar factor.
FAST_QUINTIC, EXACT_QUINTIC = (3.4445, -4.7750, 2.0315), (2.0, -1.5, 0.5)
NS_SCHEDULE = (FAST_QUINTIC,) * 5 + (EXACT_QUINTIC,) * 3
GRAM_RESTART = 3  # Newton-Schulz steps taken on a tall matrix's Gram matrix between re-anchorings (see polar)


def polar(x: Tensor) -> Tensor:
  """The polar factor U V^T of each matrix x = U S V^T in x (..., m, n), by the Newton-Schulz steps of NS_SCHEDULE
  after a Frobenius normalisation. In float32: the reference runs it in bfloat16,
  which CPU and OpenCL backends lack. Written here rather than tinygrad's newton_schulz, which forms (X X^T) X
  products (three large matmuls a step where two do) and has no Gram form for tall matrices."""
  x = x.float()
  if x.shape[-2] < x.shape[-1]: return polar(x.transpose(-1, -2)).transpose(-1, -2)
  x = x / (x.square().sum((-2, -1), keepdim=True).sqrt() + 1e-7)
  if x.shape[-2] < 2 * x.shape[-1]:  # near square: step the matrix itself
    for a, b, c in NS_SCHEDULE:
      gram = x.transpose(-1, -2) @ x
      x = a * x + x @ (b * gram + c * gram @ gram)
    return x
  # Tall (m >= 2n): X_k = X_0 Q_k with Q_k a polynomial in A = X_0^T X_0, so the steps run on n x n matrices
  # (A_k = Q_k A Q_k, Q_k+1 = Q_k p(A_k)) and only the re-anchoring X <- X Q touches all m rows: about 2.5x fewer
  # FLOPs at m = 8n. Run unanchored, Q's growth along small singular directions amplifies float32 rounding without
  # bound; re-anchoring every GRAM_RESTART steps keeps it within 5e-5 of the plain iteration (tests/test_optim.py).
  # Q = s I + P is kept as a scalar and a matrix, which needs no identity matrix on x's device (or devices).
  for start in range(0, len(NS_SCHEDULE), GRAM_RESTART):
    anchor = x.transpose(-1, -2) @ x
    s, p = 1.0, None
    for a, b, c in NS_SCHEDULE[start:start + GRAM_RESTART]:
      if p is None: gram = anchor
      else:
        pa = p @ anchor
        gram = s * s * anchor + s * (pa + pa.transpose(-1, -2)) + pa @ p
      poly = b * gram + c * gram @ gram
      s, p = s * a, s * poly if p is None else a * p + s * poly + p @ poly
    x = s * x + x @ p
  return x


def row_norms(x: Tensor) -> Tensor: return x.square().sum(-1, keepdim=True).sqrt()


def balanced_polar(g: Tensor, iterations: int = 2) -> Tensor:
  """Aurora's vanilla direction for each tall g (..., m, n), m > n: a polar factor with (near) uniform squared row
  norms n/m, the only uniform value a matrix with orthonormal columns can have. A diagonal preconditioner D is
  refined so that polar(D g) has no starved rows."""
  m, n = g.shape[-2:]
  d = 1.0 / row_norms(g).maximum(1e-7)
  for k in range(iterations):
    u = polar(d * g)
    if k < iterations - 1: d = d * ((n / m) / u.square().sum(-1, keepdim=True).maximum(1e-14)).sqrt()
  return u


def riemannian_balanced_polar(g: Tensor, outer: int = 3, cg_steps: int = 20, step: float = 0.1, retraction: int = 2) -> Tensor:
  """Aurora's Riemannian direction for each tall g (..., m, n): approximately maximise <g, U> subject to U^T U = I
  and squared row norms n/m, by projected ascent from polar(g), retracting by alternating row normalisation and polar.
  Departs from the reference in one place: g is first scaled to U's Frobenius norm sqrt(n). The reference's ascent
  step, step * (a projection of g), grows with the gradient's norm, so its direction depended on the gradient's scale
  (and in float32 its rounding did too: relative error 1.3 against float64 at norm 3.5e3); here it does not.
  Still, for some gradients the float32 solve amplifies rounding in g (1e-7) up to 1e-2 in the direction: the shift
  that keeps the multipliers' system positive definite can leave it nearly singular; the reference shares this."""
  m, n = g.shape[-2:]
  g = g * (math.sqrt(n) / g.square().sum((-2, -1), keepdim=True).sqrt().maximum(1e-30))
  u = polar(g)
  for _ in range(outer):
    z = tangent_projection(u, g, cg_steps)
    y = u + step * z
    for _ in range(retraction):
      y = polar(y * (math.sqrt(n / m) / row_norms(y).maximum(1e-7)))
    u = z.isfinite().all((-2, -1), keepdim=True).where(y, u)
  return u


def tangent_projection(u: Tensor, g: Tensor, cg_steps: int = 20) -> Tensor:
  """g - U S - diag(lam) U: g projected onto the tangent space at u of the manifold {U^T U = I, squared row norms n/m}
  (exactly so where u lies on it), for each matrix of a batch. S (symmetric) removes the Stiefel normal part; lam,
  the row norms' multipliers, comes from conjugate gradients."""
  m, n = u.shape[-2:]
  ut = u.transpose(-1, -2)
  utg = ut @ g
  sym = 0.5 * (utg + utg.transpose(-1, -2))
  q = (g * u).sum(-1) - ((u @ sym) * u).sum(-1)
  lam = row_norm_multipliers(u, n / m, q - q.mean(-1, keepdim=True), cg_steps)
  lam = lam - lam.mean(-1, keepdim=True)
  return g - u @ (sym - ut @ (lam.unsqueeze(-1) * u)) - lam.unsqueeze(-1) * u


def row_norm_multipliers(u: Tensor, r: float, b: Tensor, steps: int) -> Tensor:
  """Conjugate gradients on (r' I - (U U^T)∘(U U^T)) x = b, without forming U U^T; r' = r plus the shift that keeps
  the operator positive definite. A fixed step count (for the jit): once converged or broken down, steps are masked.
  Batched: every scalar of the method is one per matrix, shape (..., 1)."""
  ut = u.transpose(-1, -2)
  reg = (u.square().sum(-1).square().max(-1, keepdim=True) - r + 1e-3).maximum(0.0)
  def apply(v: Tensor) -> Tensor: return (r + reg) * v - ((u @ (ut @ (v.unsqueeze(-1) * u))) * u).sum(-1)
  def dot(v: Tensor, w: Tensor) -> Tensor: return (v * w).sum(-1, keepdim=True)
  x, res, p = b.zeros_like(), b, b
  rs_old = dot(b, b)
  b_norm, active = rs_old.sqrt().maximum(1e-12), rs_old.ones_like()
  for _ in range(steps):
    ap = apply(p)
    denom = dot(p, ap)
    active = active * (denom > 1e-30)
    alpha = (active > 0).where(rs_old / denom, 0.0)
    x, res = x + alpha * p, res - alpha * ap
    rs_new = dot(res, res)
    active = active * rs_new.isfinite() * (rs_new.sqrt() >= 1e-8 * b_norm)
    p = (active > 0).where(res + (rs_new / rs_old.maximum(1e-30)) * p, p)
    rs_old = (active > 0).where(rs_new, rs_old)
  return x.isfinite().all(-1, keepdim=True).where(x, 0.0)


class MatrixOptimizer(Optimizer):
  """Momentum, an orthogonalised direction per 2-D matrix, Muon's aspect-ratio scale, decoupled weight decay:
  W <- W (1 - lr wd) - lr sqrt(max(1, rows/cols)) direction(momentum).
  row_blocks[i] > 1 splits matrix i into that many row blocks, each its own matrix: attention's fused c_attn is
  q, k and v, three square blocks, as in the reference's speedrun. Blocks of one shape (wide ones transposed to
  tall) across all matrices go through one batched direction computation, not one each."""
  def __init__(self, params: list[Tensor], lr: float, momentum: float = 0.95, weight_decay: float = 0.025, nesterov: bool = True,
               row_blocks: list[int] | None = None):
    super().__init__(params, lr)
    if any(p.ndim != 2 for p in self.params): raise ValueError(f"{type(self).__name__} takes 2-D matrices only")
    self.row_blocks = row_blocks or [1] * len(self.params)
    if any(p.shape[0] % k for p, k in zip(self.params, self.row_blocks)): raise ValueError("row_blocks must divide the rows")
    self.momentum, self.wd, self.nesterov = momentum, weight_decay, nesterov
    self.b = self._new_optim_param()

  def state_written(self) -> list[Tensor]:
    """The state a step writes (a checkpoint's): the momenta."""
    return self.b

  def direction(self, g: Tensor) -> Tensor:
    """The direction for each matrix of a batch (k, m, n) with m >= n."""
    raise NotImplementedError

  def _step(self, params: list[Tensor], grads: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    momenta = []
    for g, b in zip(grads, self.b):
      b.assign(self.momentum * b + (1 - self.momentum) * g)  # an exponential average, as the reference keeps it
      momenta.append((1 - self.momentum) * g + self.momentum * b if self.nesterov else b)
    directions = self.directions(momenta)
    return [(self.lr * (d + self.wd * t.detach())).cast(t.dtype) for t, d in zip(params, directions)], self.state_written()

  def directions(self, momenta: list[Tensor]) -> list[Tensor]:
    """Each matrix's scaled direction, computed block by block, batched by block shape."""
    blocks, by_shape = [], {}
    for i, (g, k) in enumerate(zip(momenta, self.row_blocks)):
      block = g.float().reshape(k, g.shape[0] // k, g.shape[1])
      wide = block.shape[1] < block.shape[2]
      blocks.append(block.transpose(1, 2) if wide else block)
      by_shape.setdefault(blocks[-1].shape[1:], []).append(i)
    out: list[Tensor] = [None] * len(momenta)
    for members in by_shape.values():
      batch = self.direction(Tensor.cat(*[blocks[i] for i in members]) if len(members) > 1 else blocks[members[0]])
      start = 0
      for i in members:
        k, (rows, cols) = self.row_blocks[i], momenta[i].shape
        part, start = batch[start:start + k], start + k
        part = part.transpose(1, 2) if rows // k < cols else part
        out[i] = part.reshape(rows, cols) * math.sqrt(max(1.0, rows // k / cols))
    return out


class Muon(MatrixOptimizer):
  """Muon: the polar factor of the momentum (Jordan et al. 2024)."""
  def direction(self, g: Tensor) -> Tensor: return polar(g)


class NorMuon(Muon):
  """NorMuon (Li et al. 2025; nanochat's and modded-nanogpt's Muon): Muon's direction with each row (an output neuron)
  divided by the root of a running mean of its squared entries, then scaled back to the direction's Frobenius norm.
  Like Aurora it evens out the update's row norms, but by a per-neuron second moment rather than a constraint."""
  def __init__(self, params: list[Tensor], lr: float, beta2: float = 0.95, **kwargs):
    super().__init__(params, lr, **kwargs)
    self.beta2 = beta2
    self.v = [Tensor.zeros(p.shape[0], 1, dtype="float32", device=self.device).contiguous() for p in self.params]

  def state_written(self) -> list[Tensor]: return [*self.b, *self.v]

  def directions(self, momenta: list[Tensor]) -> list[Tensor]:
    out = []
    for d, v in zip(super().directions(momenta), self.v):
      v.assign(self.beta2 * v + (1 - self.beta2) * d.square().mean(-1, keepdim=True))
      normalised = d / (v.sqrt() + 1e-10)
      # the norms are scalars of their own: left lazy, tinygrad fused both sums into every element's update (100x slower)
      out.append(normalised * (d.square().sum().sqrt() / (normalised.square().sum().sqrt() + 1e-10)).contiguous())
    return out


class Aurora(MatrixOptimizer):
  """Aurora (Tilde Research, arXiv 2606.27715): like Muon, but a tall matrix's update also has uniform row norms,
  so no row (an MLP neuron, for an up-projection) is starved of updates. Square matrices get Muon's update; wide
  ones are transposed to tall and back. riemannian=True uses the more exact Riemannian solver."""
  def __init__(self, params: list[Tensor], lr: float, riemannian: bool = False, **kwargs):
    super().__init__(params, lr, **kwargs)
    self.solve = riemannian_balanced_polar if riemannian else balanced_polar

  def direction(self, g: Tensor) -> Tensor:
    if g.shape[-2] < g.shape[-1]: return self.direction(g.transpose(-1, -2)).transpose(-1, -2)
    return polar(g) if g.shape[-2] == g.shape[-1] else self.solve(g.float())


class Elementwise(Optimizer):
  """Base of the classic per-coordinate rules: each subclass names its state buffers and gives its update
  direction; weight decay is decoupled (added to the update, times lr), as in AdamW. `t` counts steps."""
  state: tuple[str, ...] = ()

  def __init__(self, params: list[Tensor], lr: float, weight_decay: float = 0.0, **hyper):
    super().__init__(params, lr)
    self.wd, self.t = weight_decay, Tensor.zeros(1, device=self.device).contiguous()
    for name, value in hyper.items(): setattr(self, name, value)
    for name in self.state: setattr(self, name, self._new_optim_param())

  def rule(self, i: int, g: Tensor) -> Tensor: raise NotImplementedError

  def _step(self, params: list[Tensor], grads: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    self.t.assign(self.t + 1)
    updates = [(self.lr * (self.rule(i, g.float()) + self.wd * t.detach())).cast(t.dtype) for i, (t, g) in enumerate(zip(params, grads))]
    return updates, [self.t] + [buf for name in self.state for buf in getattr(self, name)]


class AMSGrad(Elementwise):
  """Adam that divides by the largest second moment seen so far (Reddi et al. 2018)."""
  state = ("m", "v", "v_max")
  def __init__(self, params, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0):
    super().__init__(params, lr, weight_decay, b1=b1, b2=b2, eps=eps)

  def rule(self, i, g):
    self.m[i].assign(self.b1 * self.m[i] + (1 - self.b1) * g)
    self.v[i].assign(self.b2 * self.v[i] + (1 - self.b2) * g * g)
    self.v_max[i].assign(self.v_max[i].maximum(self.v[i]))
    return self.m[i] / (1 - self.b1 ** self.t) / ((self.v_max[i] / (1 - self.b2 ** self.t)).sqrt() + self.eps)


class RMSprop(Elementwise):
  """Divide by a running root mean square of the gradient (Hinton's lecture 6e)."""
  state = ("v",)
  def __init__(self, params, lr=1e-3, alpha=0.99, eps=1e-8, weight_decay=0.0):
    super().__init__(params, lr, weight_decay, alpha=alpha, eps=eps)

  def rule(self, i, g):
    self.v[i].assign(self.alpha * self.v[i] + (1 - self.alpha) * g * g)
    return g / (self.v[i].sqrt() + self.eps)


class Adagrad(Elementwise):
  """Divide by the root of the summed squared gradients (Duchi et al. 2011)."""
  state = ("s",)
  def __init__(self, params, lr=1e-2, eps=1e-10, weight_decay=0.0):
    super().__init__(params, lr, weight_decay, eps=eps)

  def rule(self, i, g):
    self.s[i].assign(self.s[i] + g * g)
    return g / (self.s[i].sqrt() + self.eps)


class Adadelta(Elementwise):
  """Step = RMS(past steps) / RMS(gradients) * g, no learning rate needed (Zeiler 2012); lr scales it, default 1."""
  state = ("v", "u")
  def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0):
    super().__init__(params, lr, weight_decay, rho=rho, eps=eps)

  def rule(self, i, g):
    self.v[i].assign(self.rho * self.v[i] + (1 - self.rho) * g * g)
    delta = (self.u[i] + self.eps).sqrt() / (self.v[i] + self.eps).sqrt() * g
    self.u[i].assign(self.rho * self.u[i] + (1 - self.rho) * delta * delta)
    return delta


class Adamax(Elementwise):
  """Adam with the infinity norm in place of the second moment (Kingma & Ba 2015, section 7)."""
  state = ("m", "u")
  def __init__(self, params, lr=2e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0):
    super().__init__(params, lr, weight_decay, b1=b1, b2=b2, eps=eps)

  def rule(self, i, g):
    self.m[i].assign(self.b1 * self.m[i] + (1 - self.b1) * g)
    self.u[i].assign((self.b2 * self.u[i]).maximum(g.abs() + self.eps))
    return self.m[i] / (1 - self.b1 ** self.t) / self.u[i]


class Nadam(Elementwise):
  """Adam with Nesterov momentum: the bias-corrected momentum looks one step ahead (Dozat 2016)."""
  state = ("m", "v")
  def __init__(self, params, lr=2e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0):
    super().__init__(params, lr, weight_decay, b1=b1, b2=b2, eps=eps)

  def rule(self, i, g):
    self.m[i].assign(self.b1 * self.m[i] + (1 - self.b1) * g)
    self.v[i].assign(self.b2 * self.v[i] + (1 - self.b2) * g * g)
    m_hat = self.b1 * self.m[i] / (1 - self.b1 ** (self.t + 1)) + (1 - self.b1) * g / (1 - self.b1 ** self.t)
    return m_hat / ((self.v[i] / (1 - self.b2 ** self.t)).sqrt() + self.eps)


class FTRL(Elementwise):
  """FTRL-proximal (McMahan et al. 2013) as TensorFlow and Keras define it, with learning-rate power -1/2: per
  coordinate, n sums the squared gradients (from initial_accumulator) and z the gradients less a pull toward the
  weight, sigma w with sigma = (sqrt(n_new) - sqrt(n)) / lr; the new weight is the closed-form minimiser
  (clip(z, -l1, l1) - z) / (sqrt(n_new) / lr + 2 l2), exactly 0 where |z| <= l1 (the L1 term's sparsity). It sets
  the weight rather than stepping it, so its update is w - new weight (w - w is exactly 0); l2 is its weight decay."""
  state = ("n", "z")
  def __init__(self, params, lr=1e-2, l1=0.0, l2=0.0, initial_accumulator=0.1):
    super().__init__(params, lr, l1=l1, l2=l2)
    self.n = [(n + initial_accumulator).contiguous() for n in self.n]

  def new_weight(self, i: int, w: Tensor, g: Tensor) -> Tensor:
    n_new = self.n[i] + g * g
    z = self.z[i] + g - (n_new.sqrt() - self.n[i].sqrt()) / self.lr * w
    self.z[i].assign(z)
    self.n[i].assign(n_new)
    return (z.clip(-self.l1, self.l1) - z) / (n_new.sqrt() / self.lr + 2 * self.l2)

  def _step(self, params: list[Tensor], grads: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    self.t.assign(self.t + 1)
    weights = [t.detach().float() for t in params]
    updates = [(w - self.new_weight(i, w, g.float())).cast(t.dtype) for i, (t, w, g) in enumerate(zip(params, weights, grads))]
    return updates, [self.t, *self.n, *self.z]


# --optimizer choices. Matrix optimizers take the 2-D hidden matrices; AdamW takes the rest (see build_optimizer).
# Each maker takes (params, lr, weight_decay); matrix optimizers also take each matrix's row blocks.
MATRIX_OPTIMIZERS = {
  "aurora": lambda p, lr, wd, blocks: Aurora(p, lr, weight_decay=wd, row_blocks=blocks),
  "aurora-riemannian": lambda p, lr, wd, blocks: Aurora(p, lr, riemannian=True, weight_decay=wd, row_blocks=blocks),
  "muon": lambda p, lr, wd, blocks: Muon(p, lr, weight_decay=wd, row_blocks=blocks),
  "normuon": lambda p, lr, wd, blocks: NorMuon(p, lr, weight_decay=wd, row_blocks=blocks)}
ELEMENTWISE_OPTIMIZERS = {
  "adamw": lambda p, lr, wd: nn.optim.AdamW(p, lr, b1=0.9, b2=0.95, weight_decay=wd),
  "adam": lambda p, lr, wd: nn.optim.Adam(p, lr, b1=0.9, b2=0.95),
  "amsgrad": lambda p, lr, wd: AMSGrad(p, lr, b2=0.95),
  "lamb": lambda p, lr, wd: nn.optim.LAMB(p, lr, b1=0.9, b2=0.95, weight_decay=wd),
  "sgd": lambda p, lr, wd: nn.optim.SGD(p, lr, momentum=0.9, nesterov=True),
  "rmsprop": lambda p, lr, wd: RMSprop(p, lr), "adagrad": lambda p, lr, wd: Adagrad(p, lr),
  "adadelta": lambda p, lr, wd: Adadelta(p, lr), "adamax": lambda p, lr, wd: Adamax(p, lr), "nadam": lambda p, lr, wd: Nadam(p, lr),
  "ftrl": lambda p, lr, wd: FTRL(p, lr),
}
OPTIMIZERS = (*MATRIX_OPTIMIZERS, *ELEMENTWISE_OPTIMIZERS)


def param_groups(model) -> dict[str, list[Tensor]]:
  """matrices: the blocks' 2-D weights (attention and MLP); embeddings: token (also the tied LM head) and position
  embeddings; other: norm gains and biases. Every parameter lands in exactly one group."""
  groups = {"matrices": [], "embeddings": [], "other": []}
  for name, t in get_state_dict(model).items():
    if not t.is_param: continue
    groups["matrices" if name.startswith("h.") and t.ndim == 2 else "embeddings" if t.ndim == 2 else "other"].append(t)
  return groups


def with_decay_split(make, params: list[Tensor], lr: float, weight_decay: float) -> list[Optimizer]:
  """`make` over params in two parts: weight decay on matrices and embeddings, never on norm gains and biases."""
  decay, rest = [p for p in params if p.ndim >= 2], [p for p in params if p.ndim < 2]
  return [make(ps, lr, wd) for ps, wd in ((decay, weight_decay), (rest, 0.0)) if ps]


def adamw(params: list[Tensor], lr: float, weight_decay: float) -> nn.optim.OptimizerGroup:
  return nn.optim.OptimizerGroup(*with_decay_split(ELEMENTWISE_OPTIMIZERS["adamw"], params, lr, weight_decay))


def build_optimizer(model, name: str, lr: float, adam_lr: float, weight_decay: float, matrix_weight_decay: float = 0.025) -> nn.optim.OptimizerGroup:
  """The optimizer for a model, grouped for the user: with a matrix optimizer (decaying the matrices by
  matrix_weight_decay), AdamW (at adam_lr) trains embeddings, head, norms and biases; otherwise `name` trains
  everything. Attention's fused c_attn goes to a matrix optimizer as q, k and v blocks."""
  g = param_groups(model)
  if name in MATRIX_OPTIMIZERS:
    qkv = {id(getattr(block.attn.c_attn, "weight", None)) for block in model.h}
    blocks = [3 if id(p) in qkv else 1 for p in g["matrices"]]
    parts = [MATRIX_OPTIMIZERS[name](g["matrices"], lr, matrix_weight_decay, blocks),
             *with_decay_split(ELEMENTWISE_OPTIMIZERS["adamw"], g["embeddings"] + g["other"], adam_lr, weight_decay)]
  else: parts = with_decay_split(ELEMENTWISE_OPTIMIZERS[name], g["matrices"] + g["embeddings"] + g["other"], lr, weight_decay)
  return nn.optim.OptimizerGroup(*parts)
