"""Optimizers tinygrad lacks: Aurora (vanilla and Riemannian), Muon on the same polar routine, and the classic
elementwise rules. All are tinygrad `Optimizer`s with fixed iteration counts, so they run inside the jitted step.
tinygrad's own AdamW, SGD and LAMB are used as they are."""
import math
from tinygrad import Tensor, nn
from tinygrad.nn.optim import Optimizer
from tinygrad.nn.state import get_state_dict

NS_STEPS = 12
# the simple quintic p(s) = 2s - 1.5s^3 + 0.5s^5: s = 1 is a super-attracting fixed point, so singular values in
# (0, sqrt 2) converge to 1 (tinygrad's Muon uses 5 steps of a faster quintic that only lands near 1)
NS_COEFFICIENTS = (2.0, -1.5, 0.5)


def polar(x: Tensor) -> Tensor:
  """The polar factor U V^T of x = U S V^T by Newton-Schulz, normalised by the Frobenius norm first. Float32: the
  reference runs it in bfloat16, which CPU and OpenCL backends lack."""
  return x.float().newton_schulz(NS_STEPS, NS_COEFFICIENTS)


def balanced_polar(g: Tensor, iterations: int = 2) -> Tensor:
  """Aurora's vanilla direction for a tall g (m > n): a polar factor with (near) uniform squared row norms n/m,
  the only uniform value a matrix with orthonormal columns can have. A diagonal preconditioner D is refined so
  that polar(D g) has no starved rows."""
  m, n = g.shape
  d = 1.0 / g.square().sum(1, keepdim=True).sqrt().maximum(1e-7)
  for k in range(iterations):
    u = polar(d * g)
    if k < iterations - 1: d = d * ((n / m) / u.square().sum(1, keepdim=True).maximum(1e-14)).sqrt()
  return u


def riemannian_balanced_polar(g: Tensor, outer: int = 3, cg_steps: int = 20, step: float = 0.1, retraction: int = 2) -> Tensor:
  """Aurora's Riemannian direction for a tall g: approximately maximise <g, U> subject to U^T U = I and squared
  row norms n/m, by projected ascent from polar(g), retracting by alternating row normalisation and polar."""
  m, n = g.shape
  r, u = n / m, polar(g)
  for _ in range(outer):
    z = tangent_projection(u, g, cg_steps)
    y = u + step * z
    for _ in range(retraction):
      y = polar(y * (math.sqrt(r) / y.square().sum(1, keepdim=True).sqrt().maximum(1e-7)))
    u = z.isfinite().all().where(y, u)
  return u


def tangent_projection(u: Tensor, g: Tensor, cg_steps: int = 20) -> Tensor:
  """g - U S - diag(lam) U: g projected onto the tangent space at u of the manifold {U^T U = I, squared row norms n/m}
  (exactly so where u lies on it). S (symmetric) removes the Stiefel normal part; lam, the row norms' multipliers,
  comes from conjugate gradients."""
  m, n = u.shape
  utg = u.T @ g
  sym = 0.5 * (utg + utg.T)
  q = (g * u).sum(1) - ((u @ sym) * u).sum(1)
  lam = row_norm_multipliers(u, n / m, q - q.mean(), cg_steps)
  lam = lam - lam.mean()
  return g - u @ (sym - u.T @ (lam.unsqueeze(1) * u)) - lam.unsqueeze(1) * u


def row_norm_multipliers(u: Tensor, r: float, b: Tensor, steps: int) -> Tensor:
  """Conjugate gradients on (r' I - (U U^T)∘(U U^T)) x = b, without forming U U^T; r' = r plus the shift that keeps
  the operator positive definite. A fixed step count (for the jit): once converged or broken down, steps are masked."""
  reg = (u.square().sum(1).square().max() - r + 1e-3).maximum(0.0)
  def apply(v: Tensor) -> Tensor: return (r + reg) * v - ((u @ (u.T @ (v.unsqueeze(1) * u))) * u).sum(1)
  x, res, p = b.zeros_like(), b, b
  rs_old, b_norm, active = b.square().sum(), b.square().sum().sqrt().maximum(1e-12), Tensor.ones((), device=b.device)
  for _ in range(steps):
    ap = apply(p)
    denom = (p * ap).sum()
    active = active * (denom > 1e-30)
    alpha = (active > 0).where(rs_old / denom, 0.0)
    x, res = x + alpha * p, res - alpha * ap
    rs_new = res.square().sum()
    active = active * rs_new.isfinite() * (rs_new.sqrt() >= 1e-8 * b_norm)
    p = (active > 0).where(res + (rs_new / rs_old.maximum(1e-30)) * p, p)
    rs_old = (active > 0).where(rs_new, rs_old)
  return x.isfinite().all().where(x, 0.0)


class MatrixOptimizer(Optimizer):
  """Momentum, an orthogonalised direction per 2-D matrix, Muon's aspect-ratio scale, decoupled weight decay:
  W <- W (1 - lr wd) - lr sqrt(max(1, rows/cols)) direction(momentum)."""
  def __init__(self, params: list[Tensor], lr: float, momentum: float = 0.95, weight_decay: float = 0.025, nesterov: bool = True):
    super().__init__(params, lr)
    if any(p.ndim != 2 for p in self.params): raise ValueError(f"{type(self).__name__} takes 2-D matrices only")
    self.momentum, self.wd, self.nesterov = momentum, weight_decay, nesterov
    self.b = self._new_optim_param()

  def direction(self, g: Tensor) -> Tensor: raise NotImplementedError

  def _step(self, params: list[Tensor], grads: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    updates = []
    for t, g, b in zip(params, grads, self.b):
      b.assign(self.momentum * b + (1 - self.momentum) * g)  # an exponential average, as the reference keeps it
      g = (1 - self.momentum) * g + self.momentum * b if self.nesterov else b
      rows, cols = t.shape
      update = self.direction(g) * math.sqrt(max(1.0, rows / cols))
      updates.append((self.lr * (update + self.wd * t.detach())).cast(t.dtype))
    return updates, self.b


class Muon(MatrixOptimizer):
  """Muon: the polar factor of the momentum (Jordan et al. 2024)."""
  def direction(self, g: Tensor) -> Tensor: return polar(g)


class Aurora(MatrixOptimizer):
  """Aurora (Tilde Research, arXiv 2606.27715): like Muon, but a tall matrix's update also has uniform row norms,
  so no row (an MLP neuron, for an up-projection) is starved of updates. Square matrices get Muon's update; wide
  ones are transposed to tall and back. riemannian=True uses the more exact Riemannian solver."""
  def __init__(self, params: list[Tensor], lr: float, riemannian: bool = False, **kwargs):
    super().__init__(params, lr, **kwargs)
    self.solve = riemannian_balanced_polar if riemannian else balanced_polar

  def direction(self, g: Tensor) -> Tensor:
    rows, cols = g.shape
    if rows == cols: return polar(g)
    return self.solve(g.float()) if rows > cols else self.solve(g.float().T).T


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


# --optimizer choices. Matrix optimizers take the 2-D hidden matrices; AdamW takes the rest (see build_optimizer).
# Each maker takes (params, lr, weight_decay); matrix optimizers keep the reference's own decay of 0.025.
MATRIX_OPTIMIZERS = {"aurora": lambda p, lr, wd: Aurora(p, lr), "aurora-riemannian": lambda p, lr, wd: Aurora(p, lr, riemannian=True),
                     "muon": lambda p, lr, wd: Muon(p, lr)}
ELEMENTWISE_OPTIMIZERS = {
  "adamw": lambda p, lr, wd: nn.optim.AdamW(p, lr, b1=0.9, b2=0.95, weight_decay=wd),
  "adam": lambda p, lr, wd: nn.optim.Adam(p, lr, b1=0.9, b2=0.95),
  "amsgrad": lambda p, lr, wd: AMSGrad(p, lr, b2=0.95),
  "lamb": lambda p, lr, wd: nn.optim.LAMB(p, lr, b1=0.9, b2=0.95, weight_decay=wd),
  "sgd": lambda p, lr, wd: nn.optim.SGD(p, lr, momentum=0.9, nesterov=True),
  "rmsprop": lambda p, lr, wd: RMSprop(p, lr), "adagrad": lambda p, lr, wd: Adagrad(p, lr),
  "adadelta": lambda p, lr, wd: Adadelta(p, lr), "adamax": lambda p, lr, wd: Adamax(p, lr), "nadam": lambda p, lr, wd: Nadam(p, lr),
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


def build_optimizer(model, name: str, lr: float, adam_lr: float, weight_decay: float) -> nn.optim.OptimizerGroup:
  """The optimizer for a model, grouped for the user: with a matrix optimizer, AdamW (at adam_lr) trains embeddings,
  head, norms and biases; otherwise `name` trains everything."""
  g = param_groups(model)
  if name in MATRIX_OPTIMIZERS:
    parts = [MATRIX_OPTIMIZERS[name](g["matrices"], lr, weight_decay),
             *with_decay_split(ELEMENTWISE_OPTIMIZERS["adamw"], g["embeddings"] + g["other"], adam_lr, weight_decay)]
  else: parts = with_decay_split(ELEMENTWISE_OPTIMIZERS[name], g["matrices"] + g["embeddings"] + g["other"], lr, weight_decay)
  return nn.optim.OptimizerGroup(*parts)
