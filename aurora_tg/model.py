"""GPT-2 decoder-only transformer on tinygrad, with switches for the LLaMA changes (RoPE, RMSNorm, SwiGLU) and squared ReLU."""
import math
from dataclasses import dataclass, asdict, fields
from tinygrad import Tensor, dtypes, nn
from aurora_tg.backends import scatter


@dataclass(frozen=True)
class GPTConfig:
  vocab_size: int = 2048
  block_size: int = 128       # context length
  n_layer: int = 4
  n_head: int = 4
  n_embd: int = 128
  mlp_ratio: float = 4.0      # MLP hidden width / n_embd (SwiGLU keeps 2/3 of it so parameters match)
  norm: str = "layernorm"     # layernorm | rmsnorm
  pos: str = "learned"        # learned | rope
  mlp: str = "gelu"           # gelu | swiglu | relu2
  bias: bool = True

  def __post_init__(self):
    choices = {"norm": ("layernorm", "rmsnorm"), "pos": ("learned", "rope"), "mlp": ("gelu", "swiglu", "relu2")}
    for name, allowed in choices.items():
      if getattr(self, name) not in allowed: raise ValueError(f"{name} must be one of {'|'.join(allowed)}, got {getattr(self, name)!r}")
    for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
      if getattr(self, name) < 1: raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
    if self.n_embd % self.n_head: raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
    if self.pos == "rope" and self.head_dim % 2: raise ValueError(f"RoPE needs an even head size, got {self.head_dim}")
    if self.mlp_ratio <= 0: raise ValueError(f"mlp_ratio must be positive, got {self.mlp_ratio}")

  @property
  def head_dim(self) -> int: return self.n_embd // self.n_head

  @property
  def mlp_hidden(self) -> int:
    hidden = self.mlp_ratio * self.n_embd
    return round(hidden) if self.mlp != "swiglu" else 16 * math.ceil(2 * hidden / 3 / 16)

  def to_dict(self) -> dict: return asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "GPTConfig":
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in known})


# Targets with this value add nothing to the loss (PyTorch's convention). Not -1: tinygrad's cross-entropy
# still counts -1 targets in the mean's denominator.
IGNORE_INDEX = -100

# Named sizes so nobody hand-sets widths. The small ones use an own BPE vocabulary: the LM head and embedding
# dominate a small model's FLOPs, so a 1k-8k vocabulary trains several times faster on a CPU than GPT-2's 50k.
PRESETS: dict[str, dict] = {
  "tiny":   dict(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=512),
  "small":  dict(n_layer=4, n_head=4, n_embd=128, block_size=128, vocab_size=1024),
  "medium": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=8192),
  "gpt2":   dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),
  "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024),
  "gpt2-large":  dict(n_layer=36, n_head=20, n_embd=1280, block_size=1024),
  "gpt2-xl":     dict(n_layer=48, n_head=25, n_embd=1600, block_size=1024),
}


def stored(x: Tensor) -> Tensor:
  """Materialise x. tinygrad fuses elementwise work into the matmul that consumes it, recomputing it for every output
  column; storing norm, activation, RoPE and softmax outputs once is much faster (bench/train_throughput.py)."""
  return x.contiguous()


# The three ops below run in float32 whatever the input dtype, as mixed-precision training does. tests/kernels found
# two float16 failures this avoids: GELU's x**3 overflows below about -40 and its backward turns inf * 0 into NaN;
# tinygrad's OpenCL renderer emits uncompilable code for the backward of a float16 softmax (e.g. of shape (1, 16)).
# The loss needs float32 anyway: a half-precision log-sum-exp over 50k logits loses the loss's low digits.
def gelu(x: Tensor) -> Tensor:
  """GPT-2's GELU (tanh approximation)."""
  return x.float().gelu().cast(x.dtype)


def relu2(x: Tensor) -> Tensor:
  """Squared ReLU, relu(x)^2 (modded-nanogpt, nanochat). In x's dtype, unlike GELU: its float16 result overflows above
  x = 255 however it is computed, and float32 would not round it better (a float16's square is exact in float32)."""
  return x.relu().square()


def softmax(x: Tensor) -> Tensor:
  """Softmax over the last axis."""
  return x.float().softmax(-1).cast(x.dtype)


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
  """Mean cross-entropy over the targets that are not IGNORE_INDEX, in float32."""
  return logits.float().sparse_categorical_crossentropy(targets, ignore_index=IGNORE_INDEX)


def padding_masked(logits: Tensor, rows: int) -> Tensor:
  """The logits with every column from `rows` on made -inf: a padded LM head's padding, never chosen nor learned."""
  return (Tensor.arange(logits.shape[-1]).to(logits.device) < rows).where(logits, float("-inf"))


class Linear:
  """y = x W^T + b, GPT-2 initialised (normal(0, std), zero bias)."""
  def __init__(self, n_in: int, n_out: int, bias: bool, std: float = 0.02):
    self.weight = Tensor.normal(n_out, n_in, std=std)
    self.bias = Tensor.zeros(n_out) if bias else None

  @classmethod
  def of(cls, weight: Tensor, bias: Tensor | None) -> "Linear":
    """A Linear holding these tensors."""
    linear = cls.__new__(cls)
    linear.weight, linear.bias = weight, bias
    return linear

  def __call__(self, x: Tensor) -> Tensor:
    """In x's dtype: with mixed precision the float32 weights are cast to the compute dtype here."""
    return x.linear(self.weight.cast(x.dtype).T, None if self.bias is None else self.bias.cast(x.dtype))


class Norm:
  """LayerNorm (with optional bias) or RMSNorm, picked by the config."""
  def __init__(self, dim: int, kind: str, bias: bool):
    self.kind = kind
    self.weight = Tensor.ones(dim)
    self.bias = Tensor.zeros(dim) if bias and kind == "layernorm" else None

  def __call__(self, x: Tensor) -> Tensor:
    """Normalised in float32 whatever x's dtype (a half-precision mean of squares loses too much), returned in x's."""
    h = x.float()
    if self.kind == "rmsnorm": h = h * (h.square().mean(-1, keepdim=True) + 1e-6).rsqrt()
    else: h = h.layernorm(eps=1e-5)
    h = h * self.weight
    return stored((h if self.bias is None else h + self.bias).cast(x.dtype))


def rope_tables(head_dim: int, length: int, base: float = 10000.0) -> tuple[Tensor, Tensor]:
  """cos and sin of shape (length, head_dim/2) for rotary position embeddings."""
  inv_freq = 1.0 / base ** (Tensor.arange(0, head_dim, 2, dtype="float32") / head_dim)
  angles = Tensor.arange(length, dtype="float32").unsqueeze(1) * inv_freq.unsqueeze(0)
  return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
  """Rotate pairs (x_i, x_{i+D/2}) by position-dependent angles (the GPT-NeoX / LLaMA "rotate half" layout)."""
  half = x.shape[-1] // 2
  x1, x2 = x[..., :half], x[..., half:]
  return (x1 * cos - x2 * sin).cat(x2 * cos + x1 * sin, dim=-1).cast(x.dtype)


def causal_attention(q: Tensor, k: Tensor, v: Tensor, visible: Tensor | None = None) -> Tensor:
  """softmax(q k^T / sqrt(d) + causal mask) v, with q's positions the last q.shape[2] of k's, or, given `visible`
  (broadcastable to the scores, True where a query may see a key), with that mask instead."""
  Tq, Tk = q.shape[2], k.shape[2]
  # One query (decoding): the product with each key summed over the head's width. As a matmul, tinygrad turned the
  # cache's view of symbolic length into index arithmetic dividing by that length, and the kernel ran 2x slower.
  products = (q * k).sum(-1).unsqueeze(-2) if Tq == 1 else (q @ k.transpose(-1, -2)).contiguous_backward()
  scores = products * (1.0 / math.sqrt(q.shape[-1]))
  if visible is not None: scores = visible.where(scores, float("-inf"))
  # a single query is the newest position and sees every key: no mask, which lets Tk stay symbolic when decoding
  elif Tq > 1: scores = Tensor.ones(Tq, Tk, dtype="bool", device=scores.device).tril(Tk - Tq).where(scores, float("-inf"))
  # The scores, the probabilities and the gradients of the probabilities and of the products are stored in the
  # compute dtype: else the matmuls write them in float32 for the softmax (which runs in float32), and its passes over
  # them move twice the bytes; with the products' gradient stored, the two matmuls that read it stay on the tensor
  # cores (bench/results/gpu_model.md).
  return stored(softmax(stored(scores))).contiguous_backward() @ v


class NoCache:
  """The plain forward (training, a whole sequence): idx holds positions 0..T-1, its tokens attend to each other alone,
  and each gives logits. A KV cache (aurora_tg/inference/kv_cache.py) answers the same three calls for its layout."""
  def positions(self, T: int) -> slice:
    """What the position tables (learned, RoPE) are indexed with for T tokens: a slice, or a (B, T) tensor."""
    return slice(0, T)

  def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    """The keys and values (B, H, T, D) that layer's queries attend to, and which of them each query sees
    (causal_attention's `visible`; None: the causal mask)."""
    return k, v, None

  def pick(self, x: Tensor) -> Tensor:
    """The hidden states (B, T, C) whose logits are wanted."""
    return x


NO_CACHE = NoCache()


class Attention:
  def __init__(self, cfg: GPTConfig, proj_std: float):
    self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
    self.c_attn = Linear(cfg.n_embd, 3 * cfg.n_embd, cfg.bias)
    self.c_proj = Linear(cfg.n_embd, cfg.n_embd, cfg.bias, std=proj_std)

  def __call__(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, cache=NO_CACHE, layer: int = 0) -> Tensor:
    """x's tokens attend to the keys the cache gives this layer (NoCache: to each other)."""
    B, T, C = x.shape
    # The gradients of q, k and v, and of their concatenation, are stored: else tinygrad fuses the three attention
    # matmuls whose outputs they are into one kernel over the concatenation, off the tensor cores and recomputing the
    # scores (a quarter of GPT-2's step on an H100, bench/results/gpu_model.md), and the c_attn matmuls that read it too
    qkv = self.c_attn(x).contiguous_backward().split(C, dim=-1)
    q, k, v = [t.reshape(B, T, self.n_head, self.head_dim).transpose(1, 2).contiguous_backward() for t in qkv]
    if rope is not None: q, k = stored(apply_rope(q, *rope)), stored(apply_rope(k, *rope))
    k, v, visible = cache.update(layer, k, v)
    y = causal_attention(q, k, v, visible)
    # stored as the attention matmul writes it, then copied with the heads side by side for c_proj: written straight
    # into c_proj's layout the attention matmul, and read as a view of (B, H, T, D) c_proj's two backward matmuls,
    # miss the tensor cores. A decoded token's (T = 1) needs no copy, and decoding no more kernels.
    y = y.transpose(1, 2).reshape(B, T, C) if T == 1 else stored(y).transpose(1, 2).reshape(B, T, C).contiguous()
    return self.c_proj(y)


class MLP:
  def __init__(self, cfg: GPTConfig, proj_std: float):
    self.kind = cfg.mlp
    self.c_fc = Linear(cfg.n_embd, cfg.mlp_hidden, cfg.bias)
    self.c_gate = Linear(cfg.n_embd, cfg.mlp_hidden, cfg.bias) if self.kind == "swiglu" else None
    self.c_proj = Linear(cfg.mlp_hidden, cfg.n_embd, cfg.bias, std=proj_std)

  def __call__(self, x: Tensor) -> Tensor:
    if self.kind == "swiglu": h = self.c_gate(x).silu() * self.c_fc(x)
    else: h = relu2(self.c_fc(x)) if self.kind == "relu2" else gelu(self.c_fc(x))
    return self.c_proj(stored(h))


class Block:
  def __init__(self, cfg: GPTConfig):
    proj_std = 0.02 / math.sqrt(2 * cfg.n_layer)  # GPT-2: residual projections shrink with depth
    self.ln_1, self.attn = Norm(cfg.n_embd, cfg.norm, cfg.bias), Attention(cfg, proj_std)
    self.ln_2, self.mlp = Norm(cfg.n_embd, cfg.norm, cfg.bias), MLP(cfg, proj_std)
    self.adapter_attn = self.adapter_mlp = None  # adapter layers after attention and MLP (aurora_tg/adapters.py)

  def __call__(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, cache=NO_CACHE, layer: int = 0) -> Tensor:
    h = self.attn(self.ln_1(x), rope, cache, layer)
    x = x + (h if self.adapter_attn is None else self.adapter_attn(h))
    h = self.mlp(self.ln_2(x))
    return x + (h if self.adapter_mlp is None else self.adapter_mlp(h))


class TiedEmbedding:
  """The token embedding, which is also the LM head (GPT-2 ties them)."""
  def __init__(self, vocab_size: int, dim: int):  # GPT-2's initialisation
    self.weight = Tensor.normal(vocab_size, dim, std=0.02)

  def __call__(self, idx: Tensor) -> Tensor:
    """The ids' rows; the table's gradient is a scatter-add where the backend allows (aurora_tg/backends/scatter.py)."""
    return scatter.lookup(self.weight, idx)

  def pad_rows(self, multiple: int = 64):
    """For inference only: zero rows up to a multiple of `multiple`, whose logits GPT makes -inf. A decoded token's
    LM head is a matrix-vector product, and tinygrad's matvec kernel needs a row count that divides evenly (GPT-2's
    50,257 does not); GPT-2 124M's head then runs several times faster (README, bench/decode.py)."""
    self.weight = self.weight.pad(((0, -self.weight.shape[0] % multiple), (0, 0))).contiguous().realize()

  def project(self, x: Tensor) -> Tensor:
    """Hidden states (..., dim) -> logits (..., rows of the table)."""
    return x @ self.weight.cast(x.dtype).T

  def project_padded(self, x: Tensor, multiple: int = 64) -> Tensor:
    """As project, over the table's rows zero-padded to a multiple of `multiple`, whose logits are -inf: training's
    LM head (GPT.loss). tinygrad puts a matmul on tensor cores only when its shape tiles, and GPT-2's 50,261 rows do
    not: the head's three matmuls were a third of GPT-2's step on an H100 (bench/results/gpu_model.md). The padded
    copy and its gradient are stored whole, or tinygrad narrows the matmuls back to the odd width."""
    rows = self.weight.shape[0]
    if not (pad := -rows % multiple): return self.project(x)
    return padding_masked(x @ self.weight.cast(x.dtype).pad(((0, pad), (0, 0))).contiguous_backward().contiguous().T, rows)


class GPT:
  def __init__(self, cfg: GPTConfig):
    self.cfg = cfg
    self.wte = TiedEmbedding(cfg.vocab_size, cfg.n_embd)
    self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos == "learned" else None
    if self.wpe is not None: self.wpe.weight = Tensor.normal(cfg.block_size, cfg.n_embd, std=0.02)
    self.h = [Block(cfg) for _ in range(cfg.n_layer)]
    self.ln_f = Norm(cfg.n_embd, cfg.norm, cfg.bias)
    # Mixed precision: the weights (and the optimizer's state) stay float32; activations and matmuls run in this
    # dtype when the trainer sets bfloat16 or float16. Norms, softmax, GELU and the loss run in float32.
    self.compute_dtype = dtypes.float32

  def __call__(self, idx: Tensor, cache=NO_CACHE) -> Tensor:
    """Token ids (B, T) -> logits (B, T, head_rows): the vocabulary's, then -inf for any padding. The LM head is tied
    to the token embedding.
    With a KV cache (aurora_tg/inference/kv_cache.py), idx holds the tokens at the positions the cache gives, they
    attend to the keys it holds too, and only the tokens it picks give logits."""
    logits = self.wte.project(self.hidden(idx, cache))
    # a head padded for decoding (TiedEmbedding.pad_rows) keeps its width: the sampler's kernels over GPT-2's odd
    # 50,257 were several times slower
    return logits if logits.shape[-1] == self.cfg.vocab_size else padding_masked(logits, self.cfg.vocab_size)

  def hidden(self, idx: Tensor, cache=NO_CACHE) -> Tensor:
    """Token ids (B, T) -> the final hidden states (B, T, n_embd) the LM head reads (as __call__, less the head)."""
    B, T = idx.shape
    if T > self.cfg.block_size: raise ValueError(f"sequence of {T} tokens is longer than the context ({self.cfg.block_size})")
    positions = cache.positions(T)
    x = self.wte(idx)
    if self.wpe is not None: x = x + self.wpe.weight[positions]
    x = x.cast(self.compute_dtype)
    rope = None
    if self.cfg.pos == "rope":  # built inside the graph rather than stored, so the tables never enter the state dict
      # (T, D/2) or (B, 1, T, D/2): broadcast over the heads of q and k (B, H, T, D/2)
      rope = tuple(table[positions].unsqueeze(-3) for table in rope_tables(self.cfg.head_dim, self.cfg.block_size))
    for i, block in enumerate(self.h): x = block(x, rope, cache, i)
    return self.ln_f(cache.pick(x))

    logits = self.wte.project(self.hidden(idx, cache))
    # a head padded for decoding (TiedEmbedding.pad_rows) keeps its width: the sampler's kernels over GPT-2's odd
    # 50,257 were several times slower
    return logits if logits.shape[-1] == self.cfg.vocab_size else padding_masked(logits, self.cfg.vocab_size)
  @property
  def head_rows(self) -> int:
    """The logits' width: the vocabulary, or more once the head is padded for decoding (TiedEmbedding.pad_rows, which
    comes before a Generator or BatchDecoder is built: they size the sampler's state by it)."""
    return self.wte.weight.shape[0]

  def loss(self, idx: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over the targets that are not IGNORE_INDEX."""
    # the logits and their gradient stored in the compute dtype: else the head's matmul writes them in float32 for the
    # loss's passes, and the loss's gradient is float32 for the two backward matmuls (twice the bytes of bfloat16)
    return cross_entropy(stored(self.wte.project_padded(self.hidden(idx))).contiguous_backward(), targets)


def num_params(model: GPT) -> int:
  return sum(t.numel() for t in nn.state.get_parameters(model))
