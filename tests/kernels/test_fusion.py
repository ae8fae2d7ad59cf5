"""Fusion is part of Aurora's promise: pin how many kernels one forward pass and one training step schedule; and
generation compiles its kernels once, whatever the prompt's length.

A change that splits a fused kernel (a stray .contiguous(), an op tinygrad cannot fuse through) or merges what must
stay apart shows up here as a changed count. To update after a deliberate change, run
    python -m pytest tests/kernels/test_fusion.py
read the measured counts from the failure message, check that the change is the one you meant (DEBUG=2 prints every
kernel), and write them into PINNED below. The counts depend on tinygrad's version, which pyproject.toml pins."""
import numpy as np
import pytest
from tinygrad import Context, GlobalCounters, Tensor, dtypes, nn
from tinygrad.codegen import to_program_cache
from tinygrad.engine.realize import runtime_cache
from aurora_tg.backends import targets
from aurora_tg.backends.kernel_costs import kernel_costs
from aurora_tg.data.shards import TokenData
from aurora_tg.inference.generate import Generator
from aurora_tg.inference.kv_cache import SequenceCache
from aurora_tg.inference.sampling import Sampling
from aurora_tg.model import GPT, GPTConfig
from aurora_tg.inference.quantize import quantize
from aurora_tg.trainer import Trainer, TrainSettings, build_optimizer
from kernel_check import on

SHAPE = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=97)
# kernels for: the loss (forward only), one micro-batch (forward, backward, gradient accumulation), one optimizer
# update (clipping, AdamW), and that update with the neuron-death statistics (--diagnostics); SHAPE, batch 4, AdamW.
# The micro-batch has three for the embedding's scatter-add (zeroing, adding, the sum with the tied head's gradient);
# the loss one for the head's rows padded to 128 (97 rows do not tile), the micro-batch further stores that the GPU
# step needs to stay on tensor cores (the head's padded gradient, attention's q, k, v, scores and their gradients),
# and the forward one a layer for attention's output copied with the heads side by side.
PINNED = {"CPU": (43, 147, 261, 267), "CL": (43, 147, 259, 265)}


def kernels_of(fn, *args) -> int:
  GlobalCounters.reset()
  Tensor.realize(fn(*args))
  return GlobalCounters.kernel_count


def test_kernel_counts_of_forward_and_train_step(backend):
  if backend not in PINNED: pytest.skip(f"no kernel counts pinned for {backend} yet (see this file's docstring)")
  measured = []
  for diagnostics in (False, True):
    with on(backend):
      Tensor.manual_seed(0)
      model = GPT(GPTConfig(**SHAPE))
      tokens = (np.arange(2000) % SHAPE["vocab_size"]).astype(np.uint16)
      settings = TrainSettings(batch_size=4, diagnostics=diagnostics)
      trainer = Trainer(model, TokenData(tokens, SHAPE["block_size"]), settings, build_optimizer(model, settings))
      x, y = (Tensor(a).realize() for a in trainer.data.batch(np.random.default_rng(0), settings.batch_size))
      lr_mult = Tensor([1.0]).realize()
      # unjitted calls: the jit would replay captured kernels without scheduling anything
      if not diagnostics: measured += [kernels_of(model.loss, x, y), kernels_of(trainer._micro, x, y)]
      measured.append(kernels_of(trainer._update, lr_mult))
  assert tuple(measured) == PINNED[backend], f"{backend} kernel counts (forward, micro-batch, update, update with diagnostics) " \
    f"are {tuple(measured)}, pinned {PINNED[backend]}: fusion changed; if that is intended, update PINNED (see this file's docstring)"


def compiled() -> tuple[int, int]:
  """Kernels compiled so far in this process: programs generated and compiled (tinygrad's in-memory program cache,
  which every compilation fills, whether it ran here or in tinygrad's worker pool) and programs loaded onto a device
  (where OpenCL builds its binaries). Neither ever shrinks; the disk cache of binaries does not change them."""
  return len(to_program_cache), len(runtime_cache)


def test_generation_compiles_once_for_every_prompt_length(backend):
  """README (Chat): prefill in fixed-size chunks and decoding from the KV cache run under TinyJit with the position
  as a symbolic variable, "so one compiled kernel set serves every prompt length and position". The first prompt of a
  chat compiles it; every later prompt, of other lengths and starting at other positions, compiles nothing."""
  with on(backend):
    Tensor.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=97))
    generator = Generator(model)  # as chat.py makes it: chunks of half the context here, 8 tokens
    greedy, rng = Sampling(temperature=0, max_tokens=3), np.random.default_rng(0)  # two decode steps an answer
    def fresh(n: int) -> list[int]: return rng.integers(1, 97, n).tolist()
    recompiles = {}
    def ask(what: str, ids: list[int]) -> list[int]:
      """Generate an answer to ids and note any compilation; returns the conversation so far."""
      before = compiled()
      answer = generator.generate(ids, greedy)
      if compiled() != before: recompiles[what] = tuple(a - b for a, b in zip(compiled(), before))
      return ids + answer
    start, first = compiled(), fresh(3)
    conversation = first + generator.generate(first, greedy)
    assert compiled() != start, "the counters saw no compilation in the first prompt, so they cannot see a recompile"
    # The jits capture during the second prompt, so it counts too. Each prompt has another length, its prefill chunks
    # start at other positions, and decoding runs at others (3-4 in the first prompt; 7-8, 11-12, 14-15, 1-2).
    ask("the chat's next turn, 7 tokens: one chunk from position 5, after the cached prefix", conversation + fresh(2))
    conversation = ask("an 11-token prompt: chunks at 0 and 8", fresh(11))
    ask("its next turn, 14 tokens: one chunk, moved back from 13 to 8 by the end of the context", conversation + fresh(1))
    ask("a one-token prompt", fresh(1))
    ask("a 16-token prompt filling the context: chunks at 0 and 8, nothing to decode", fresh(16))
  assert not recompiles, f"{backend}: generation compiled again (new programs, programs loaded on the device): {recompiles}"


# kernels of one decoded token, SHAPE: the model's step (with the KV cache write), then choosing the token on the device
# greedily and with every filter (penalty, temperature, top-k, top-p: the threshold searches are most of it)
PINNED_DECODE = {"CPU": (37, 4, 43), "CL": (37, 4, 43)}


def test_kernel_counts_of_a_decode_step(backend):
  with on(backend):
    Tensor.manual_seed(0)
    model = GPT(GPTConfig(**SHAPE))
    generator = Generator(model)
    generator.start(Sampling(temperature=1.0, top_k=5, top_p=0.9), [1, 2, 3])
    logits = generator.prefill([1, 2, 3])
    token, key = Tensor([[4]]).realize(), generator._next_key()
    measured = (kernels_of(lambda: model(token, SequenceCache(generator.kv, 3))[:, -1]),
                kernels_of(generator._choose, logits, *key, "greedy"), kernels_of(generator._choose, logits, *key, "filter"))
    # the decode step runs both in one call, its token and key entering as bound variables: no kernel of its own
    fused = kernels_of(lambda: generator._decode(generator.token.bind(4), generator.position.bind(3), *key, "greedy")[0])
  assert fused == measured[0] + measured[1], f"{backend}: the fused decode step has {fused} kernels, apart {measured[:2]}"
  if backend not in PINNED_DECODE: pytest.skip(f"no decode kernel counts pinned for {backend}: measured {measured}")
  assert measured == PINNED_DECODE[backend], f"{backend} decode kernel counts (model step, greedy choice, filtered " \
    f"choice) are {measured}, pinned {PINNED_DECODE[backend]}: fusion changed; if intended, update PINNED_DECODE"


@pytest.mark.parametrize("kind", ["float16", "int8"])
def test_quantized_weights_add_no_kernels_to_a_decode_step(backend, kind):
  """float16 weights convert, and int8 ones scale, inside the kernels that use them: no pass of their own."""
  with on(backend):
    Tensor.manual_seed(0)
    model = GPT(GPTConfig(**SHAPE))
    plain, quantized = Generator(model), Generator(quantize(GPT(GPTConfig(**SHAPE)), kind))
    counts = []
    for generator in (plain, quantized):
      generator.start(Sampling(temperature=0), [1, 2, 3])
      generator.prefill([1, 2, 3])
      counts.append(kernels_of(lambda: generator.model(Tensor([[4]]), SequenceCache(generator.kv, 3))[:, -1]))
  assert counts[1] == counts[0], f"{backend}: {kind} weights take {counts[1]} kernels per decoded token, float32 {counts[0]}"


# GPT-2 124M's step on an H100 (bench/gpu_model.py): the bytes one layer and the vocabulary head move per token,
# forward and backward, at most. One sequence, so the head's weights weigh in more than at batch 16.
PINNED_BYTES_PER_TOKEN = 2.55e6
NVRTC_MISSING = targets.use_nvidia_compiler()  # at collection: tinygrad reads NVRTC_PATH when it first loads NVRTC


def test_a_gpt2_layer_and_head_move_at_most_the_pinned_bytes_on_an_h100():
  """One GPT-2 layer with its head (50,261 rows), bfloat16, a sequence of 1,024, its micro-batch compiled for an H100
  on tinygrad's NULL device (nothing runs): the bytes its kernels move per token stay under the pin, and every
  matmul runs on tensor cores. Scores stored in float32 again, or a matmul fused off the tensor cores (the head at its
  odd width; attention's three backward matmuls into one; its output written in c_proj's layout), fails here."""
  if NVRTC_MISSING: pytest.skip(NVRTC_MISSING)
  with Context(DEV="NULL:CUDA:sm_90", NULL_ALLOW_COPYOUT=1):
    model = GPT(GPTConfig(n_layer=1, n_head=12, n_embd=768, block_size=1024, vocab_size=50261))
    model.compute_dtype = dtypes.bfloat16
    params = nn.state.get_parameters(model)
    tokens = Tensor(np.arange(1024, dtype=np.int32).reshape(1, 1024)).realize()
    Tensor.realize(*params)
    with Context(TRAINING=1), kernel_costs() as costs:
      for p in params: p.requires_grad = True
      loss = model.loss(tokens, tokens)
      loss.backward()
      Tensor.realize(loss, *[p.grad for p in params])
  per_token = sum(k.moved for k in costs) / 1024
  assert per_token <= PINNED_BYTES_PER_TOKEN, f"{per_token / 1e6:.2f} MB a token, pinned {PINNED_BYTES_PER_TOKEN / 1e6:.2f}"
  matmuls_off_tensor_cores = [k.name for k in costs if not k.matrix_dtype and k.flops > 1e9]  # a matmul's are 1.6 GFLOP and up
  assert not matmuls_off_tensor_cores
