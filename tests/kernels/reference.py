"""Independent float64 numpy versions of Aurora's building blocks, written from the formulas (not from the tinygrad
code) so the kernel tests compare two implementations."""
import numpy as np

IGNORE_INDEX = -100  # PyTorch's convention, which aurora_tg.model follows


def softmax(x: np.ndarray) -> np.ndarray:
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def log_softmax(x: np.ndarray) -> np.ndarray:
  shifted = x - x.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def gelu(x: np.ndarray) -> np.ndarray:
  """GPT-2's GELU, the tanh approximation."""
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def relu2(x: np.ndarray) -> np.ndarray: return np.maximum(x, 0.0) ** 2  # squared ReLU


def silu(x: np.ndarray) -> np.ndarray: return x * 0.5 * (1 + np.tanh(x / 2))  # sigmoid's tanh form: exp cannot overflow


def layernorm(x: np.ndarray, weight: np.ndarray, bias=0.0, eps: float = 1e-5) -> np.ndarray:
  centred = x - x.mean(-1, keepdims=True)
  return centred / np.sqrt((centred ** 2).mean(-1, keepdims=True) + eps) * weight + bias


def rmsnorm(x: np.ndarray, weight: np.ndarray, eps: float = 1e-6) -> np.ndarray:
  return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * weight


def rope(x: np.ndarray, base: float = 10000.0) -> np.ndarray:
  """Rotary embedding as complex multiplication: the pair (x_i, x_{i+D/2}) is the number x_i + i x_{i+D/2}, turned by
  the angle position * base^(-2i/D)."""
  T, D = x.shape[-2:]
  angles = np.arange(T)[:, None] * base ** (-np.arange(0, D, 2) / D)[None, :]
  turned = (x[..., :D // 2] + 1j * x[..., D // 2:]) * np.exp(1j * angles)
  return np.concatenate([turned.real, turned.imag], -1)


def causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
  """The queries are the last q.shape[-2] positions of the keys'; each sees itself and every earlier key."""
  Tq, Tk = q.shape[-2], k.shape[-2]
  scores = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
  visible = np.arange(Tk)[None, :] <= np.arange(Tk - Tq, Tk)[:, None]
  return softmax(np.where(visible, scores, -np.inf)) @ v


def cross_entropy(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
  kept = targets != IGNORE_INDEX
  return np.asarray(-log_softmax(logits[kept])[np.arange(kept.sum()), targets[kept]].mean())


def polar(x: np.ndarray) -> np.ndarray:
  """U V^T of the singular value decomposition x = U S V^T."""
  u, _, vt = np.linalg.svd(x, full_matrices=False)
  return u @ vt


def block(x: np.ndarray, p: dict[str, np.ndarray], n_head: int, norm: str, pos: str, mlp: str) -> np.ndarray:
  """One pre-norm transformer block; p holds the weights under aurora_tg's state-dict names."""
  B, T, C = x.shape
  def normed(h, name): return layernorm(h, p[f"{name}.weight"], p.get(f"{name}.bias", 0.0)) if norm == "layernorm" else rmsnorm(h, p[f"{name}.weight"])
  def linear(h, name): return h @ p[f"{name}.weight"].T + p.get(f"{name}.bias", 0.0)
  def heads(t): return t.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)
  q, k, v = (heads(t) for t in np.split(linear(normed(x, "ln_1"), "attn.c_attn"), 3, axis=-1))
  if pos == "rope": q, k = rope(q), rope(k)
  x = x + linear(causal_attention(q, k, v).transpose(0, 2, 1, 3).reshape(B, T, C), "attn.c_proj")
  h = normed(x, "ln_2")
  if mlp == "swiglu": h = silu(linear(h, "mlp.c_gate")) * linear(h, "mlp.c_fc")
  else: h = (relu2 if mlp == "relu2" else gelu)(linear(h, "mlp.c_fc"))
  return x + linear(h, "mlp.c_proj")
