"""The transformer's layers, forward and gradient, on every backend and dtype: the norms, RoPE, causal attention, the
embedding lookup, cross-entropy with ignored targets, the three MLPs, and one whole block."""
import numpy as np
import pytest
import reference as ref
from hypothesis import example, given, strategies as st
from tinygrad import Tensor, nn
from aurora_tg.model import GPTConfig, Block, MLP, Norm, TiedEmbedding, apply_rope, causal_attention, cross_entropy, rope_tables
from kernel_check import FEWER_EXAMPLES, LARGE, LARGE_SCALES, SCALES, SIZES, SMALL_SIZES, SEEDS, check, in_range, normal, on

HEADS = st.sampled_from([1, 2, 3])
EVEN_HEAD_SIZES = st.sampled_from([8, 2, 4, 6, 16])  # RoPE rotates pairs


def with_weights(module, names: list[str], call=None):
  """A function of (x, *weights) that installs the weights in module under their state-dict names, then returns
  call(x) (by default module(x)), so the gradients reach the weights the test drew."""
  def run(x: Tensor, *weights: Tensor) -> Tensor:
    for name, w in zip(names, weights):
      *path, attr = name.split(".")
      owner = module
      for part in path: owner = getattr(owner, part)
      setattr(owner, attr, w)
    return (call or module)(x)
  return run


@given(rows=SMALL_SIZES, dim=SIZES, kind=st.sampled_from(["layernorm", "rmsnorm"]), offset=st.sampled_from([0.0, 10.0]),
       scale=SCALES, seed=SEEDS)
# CI's examples (tests/conftest.py); one shape, so each kind compiles its kernels once
@example(rows=3, dim=13, kind="layernorm", offset=0.0, scale=1.0, seed=0)  # LayerNorm (GPT-2), typical rows
@example(rows=3, dim=13, kind="rmsnorm", offset=0.0, scale=1.0, seed=0)  # RMSNorm (LLaMA), typical rows
@example(rows=3, dim=13, kind="layernorm", offset=10.0, scale=0.1, seed=0)  # mean 100x the spread: centring cancels digits
@example(rows=3, dim=13, kind="rmsnorm", offset=10.0, scale=0.1, seed=0)  # nearly constant rows: RMSNorm without centring
def test_norm(backend, dtype, rows, dim, kind, offset, scale, seed):
  rng = np.random.default_rng(seed)
  x = offset + normal(rng, rows, dim, scale=scale)
  weight, bias = 1 + normal(rng, dim, scale=0.3), normal(rng, dim, scale=0.3)
  if kind == "layernorm":
    with on(backend): check(with_weights(Norm(dim, kind, bias=True), ["weight", "bias"]), ref.layernorm, [x, weight, bias], dtype, seed)
  else:
    with on(backend): check(with_weights(Norm(dim, kind, bias=False), ["weight"]), ref.rmsnorm, [x, weight], dtype, seed)


@given(batch=SMALL_SIZES, heads=HEADS, length=SIZES, head_size=EVEN_HEAD_SIZES, seed=SEEDS)
@example(batch=3, heads=1, length=13, head_size=8, seed=0)  # four pairs per head: frequencies base^(-2i/D), 13 positions
def test_rope(backend, dtype, batch, heads, length, head_size, seed):
  x = normal(np.random.default_rng(seed), batch, heads, length, head_size)
  with on(backend): check(lambda t: apply_rope(t, *rope_tables(head_size, length)), ref.rope, [x], dtype, seed)


@given(batch=SMALL_SIZES, heads=HEADS, queries=SIZES, past=st.sampled_from([0, 12, 1, 4, 30]), head_size=SMALL_SIZES, seed=SEEDS)
# 13 keys in each; q and k of scale 2 give attention weights that are spread out, not one-hot (largest 0.46 to 0.71, median)
@example(batch=3, heads=1, queries=13, past=0, head_size=3, seed=0)  # training: as many queries as keys, the whole mask
@example(batch=3, heads=1, queries=1, past=12, head_size=3, seed=0)  # a decoding step: one query, no mask (its own branch)
@example(batch=3, heads=1, queries=4, past=9, head_size=3, seed=0)  # a prefill chunk after 9 cached keys: the mask's offset
def test_causal_attention(backend, dtype, batch, heads, queries, past, head_size, seed):
  """Queries may be fewer than keys: they are the newest of them, after `past` keys from a KV cache (a decoding step,
  or a chunk of a prefill). As many queries as keys (past = 0) is the training case."""
  rng = np.random.default_rng(seed)
  q, k, v = (normal(rng, batch, heads, n, head_size, scale=2.0) for n in (queries, queries + past, queries + past))
  with on(backend): check(causal_attention, ref.causal_attention, [q, k, v], dtype, seed)


@given(vocab=SIZES, dim=SIZES, batch=SMALL_SIZES, length=SMALL_SIZES, seed=SEEDS)
@example(vocab=13, dim=13, batch=3, length=3, seed=0)  # typical: 9 ids from 13 rows, one of them thrice, 6 rows unused
@example(vocab=1, dim=13, batch=3, length=3, seed=0)  # every id the same: all 9 gradients add into one row
def test_embedding(backend, dtype, vocab, dim, batch, length, seed):
  """The model's lookup (its gradient a scatter-add where the backend has atomics, aurora_tg/backends/scatter.py):
  repeated ids must add their gradients into the same row."""
  rng = np.random.default_rng(seed)
  ids, table = rng.integers(0, vocab, (batch, length)), normal(rng, vocab, dim)
  with on(backend): check(embedding_lookup, lambda ids, weight: weight[ids], [ids, table], dtype, seed)


def embedding_lookup(ids: Tensor, weight: Tensor) -> Tensor:
  embedding = TiedEmbedding(*weight.shape)
  embedding.weight = weight
  return embedding(ids)


@given(rows=SIZES, vocab=SIZES, scale=LARGE_SCALES, seed=SEEDS)
# one shape (13 rows, 3 of them ignored), so only the first compiles
@example(rows=13, vocab=13, scale=1.0, seed=0)  # typical logits: soft probabilities, every logit's gradient non-zero
@example(rows=13, vocab=13, scale=1e-3, seed=0)  # nearly uniform: the loss near log(vocab), gradients near (1/vocab - target)
@example(rows=13, vocab=13, scale=LARGE, seed=0)  # the largest the dtype takes: log-sum-exp needs its max-subtraction
def test_cross_entropy_ignores_targets(backend, dtype, rows, vocab, scale, seed):
  rng = np.random.default_rng(seed)
  logits = normal(rng, rows, vocab, scale=in_range(scale, dtype))
  targets = np.where(rng.random(rows) < 0.4, ref.IGNORE_INDEX, rng.integers(0, vocab, rows))
  targets[rng.integers(rows)] = rng.integers(vocab)  # at least one counted target: the mean of none is undefined
  with on(backend): check(cross_entropy, ref.cross_entropy, [logits, targets], dtype, seed)


@given(rows=SIZES, vocab=SIZES, dim=SIZES, seed=SEEDS)
@example(rows=13, vocab=13, dim=13, seed=0)  # 13 rows padded to 16: three -inf logits in each row
def test_padded_head_loss(backend, dtype, rows, vocab, dim, seed):
  """Training's LM head and loss (GPT.loss): the tied table's rows padded to a multiple (of 8 here, 64 in GPT.loss)
  with -inf logits, which must give the plain head's loss and gradients, the padding's gradient left out."""
  rng = np.random.default_rng(seed)
  x, table = normal(rng, rows, dim), normal(rng, vocab, dim, scale=dim ** -0.5)
  targets = np.where(rng.random(rows) < 0.3, ref.IGNORE_INDEX, rng.integers(0, vocab, rows))
  targets[rng.integers(rows)] = rng.integers(vocab)  # at least one counted target
  with on(backend): check(padded_head_loss, head_loss, [x, table, targets], dtype, seed)


def padded_head_loss(x: Tensor, table: Tensor, targets: Tensor) -> Tensor:
  head = TiedEmbedding(*table.shape)
  head.weight = table
  return cross_entropy(head.project_padded(x, multiple=8), targets)


def head_loss(x: np.ndarray, table: np.ndarray, targets: np.ndarray) -> np.ndarray: return ref.cross_entropy(x @ table.T, targets)


@given(rows=SMALL_SIZES, dim=SIZES, hidden=SIZES, kind=st.sampled_from(["gelu", "swiglu", "relu2"]), seed=SEEDS)
# pre-activations of scale ~1 (weights scaled by fan-in^-1/2), where GELU and SiLU curve
@example(rows=3, dim=13, hidden=13, kind="gelu", seed=0)  # GPT-2's MLP
@example(rows=3, dim=13, hidden=13, kind="swiglu", seed=0)  # LLaMA's gated MLP
@example(rows=3, dim=13, hidden=13, kind="relu2", seed=0)  # squared ReLU (nanochat): 22 of the 39 pre-activations negative
def test_mlp(backend, dtype, rows, dim, hidden, kind, seed):
  rng = np.random.default_rng(seed)
  x = normal(rng, rows, dim)
  names = ["c_fc.weight", "c_proj.weight"] + (["c_gate.weight"] if kind == "swiglu" else [])
  shapes = {"c_fc.weight": (hidden, dim), "c_gate.weight": (hidden, dim), "c_proj.weight": (dim, hidden)}
  weights = [normal(rng, *shapes[n], scale=shapes[n][1] ** -0.5) for n in names]
  def reference(x, *weights):
    w = dict(zip(names, weights))
    if kind == "swiglu": h = ref.silu(x @ w["c_gate.weight"].T) * (x @ w["c_fc.weight"].T)
    else: h = (ref.relu2 if kind == "relu2" else ref.gelu)(x @ w["c_fc.weight"].T)
    return h @ w["c_proj.weight"].T
  with on(backend):
    mlp = MLP(GPTConfig(n_embd=dim, n_head=1, mlp=kind, bias=False), proj_std=0.02)  # weights of any hidden width go in
    check(with_weights(mlp, names), reference, [x, *weights], dtype, seed)


ARCHITECTURES = {"gpt2": dict(norm="layernorm", pos="learned", mlp="gelu", bias=True),
                 "llama": dict(norm="rmsnorm", pos="rope", mlp="swiglu", bias=False),
                 "nanochat": dict(norm="rmsnorm", pos="rope", mlp="relu2", bias=False)}  # squared ReLU in a whole block


@pytest.mark.parametrize("arch", ARCHITECTURES)
@FEWER_EXAMPLES  # the first example of each strategy below is a typical shape, not the smallest
@given(batch=st.sampled_from([2, 1]), length=st.sampled_from([5, 1, 2, 3, 7, 13]), heads=st.sampled_from([2, 1, 3]),
       head_size=st.sampled_from([4, 2, 6, 8, 16]), seed=SEEDS)
@example(batch=2, length=5, heads=2, head_size=4, seed=0)  # a typical block, of each architecture (the parametrisation)
def test_block(backend, arch, batch, length, heads, head_size, seed):
  """One whole block, gradients with respect to its input and every weight, in float32: every op in it is checked in
  float16 and bfloat16 above, and a block's backward compiles many kernels (a minute per low-precision dtype on PoCL)."""
  dtype = "float32"
  norm, pos, mlp, bias = ARCHITECTURES[arch].values()
  rng = np.random.default_rng(seed)
  cfg = GPTConfig(n_layer=1, n_head=heads, n_embd=heads * head_size, block_size=length, norm=norm, pos=pos, mlp=mlp, bias=bias, mlp_ratio=2.0)
  with on(backend):
    block = Block(cfg)
    shapes = {name: t.shape for name, t in nn.state.get_state_dict(block).items()}
    names = sorted(shapes)
    weights = [1 + normal(rng, *shapes[n], scale=0.2) if n.startswith("ln_") and n.endswith("weight")
               else normal(rng, *shapes[n], scale=0.2 if n.endswith("bias") else shapes[n][-1] ** -0.5) for n in names]
    x = normal(rng, batch, length, cfg.n_embd)
    rope = rope_tables(head_size, length) if pos == "rope" else None
    run = with_weights(block, names, lambda x: block(x, rope))
    check(run, lambda x, *w: ref.block(x, dict(zip(names, w)), heads, norm, pos, mlp), [x, *weights], dtype, seed)
