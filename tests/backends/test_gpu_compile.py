"""Every graph Aurora runs, at small shapes, compiled for NVIDIA GPUs without one: tinygrad's NULL device with the CUDA
renderer (DEV=NULL:CUDA:sm_80, an A100) generates each kernel, and NVIDIA's NVRTC (from PyPI,
aurora_tg/backends/targets.py) compiles it for sm_80 and for sm_90 (an H100); nothing runs. A kernel NVRTC rejects
fails its test. tinygrad generates the same kernels for both architectures (the first test checks it), so each is
generated once; one GPT-2-shaped step is generated for sm_90 itself.

The train step is compiled in three configurations that together take every dtype (float32, bfloat16, float16), MLP
(gelu, swiglu, relu2), position scheme (learned, rope) and optimizer family (AdamW, Muon, Aurora) once; then each
further graph (gradient accumulation, data parallel, evaluation, SFT, LoRA, distillation, decoding in each sampling
mode and as float16 and int8 weights, the batched serving step). Metal source is rendered for the same small train
step; AMD compiles where tinygrad's AMD LLVM path works with the LLVM installed."""
import dataclasses, functools, os, sys, types
import numpy as np
import pytest
from tinygrad import Context, Device, Tensor, dtypes, nn
from tinygrad.codegen import to_program_cache
from tinygrad.device import Compiler
from tinygrad.renderer import Renderer
from aurora_tg import lora
from aurora_tg.backends import host_copy, targets
from aurora_tg.config import TrainSettings
from aurora_tg.data.shards import TokenData
from aurora_tg.finetune import distillation_loss
from aurora_tg.inference.engine import Engine
from aurora_tg.inference.generate import Generator
from aurora_tg.inference.quantize import quantize
from aurora_tg.inference.sampling import Sampling
from aurora_tg.model import GPT, GPTConfig, IGNORE_INDEX
from aurora_tg.optim import adamw
from aurora_tg.trainer import Trainer, build_optimizer

GENERATED, ALSO = "sm_80", "sm_90"  # kernels generated for the first, compiled for both
SHAPE = dict(n_layer=2, n_head=2, n_embd=64, block_size=32, vocab_size=101)  # every graph's: each kernel compiles once
BATCH = 4

_missing = targets.use_nvidia_compiler()
if _missing and os.environ.get("CI") == "true": pytest.fail(f"CI installs NVIDIA's compiler (the test extra): {_missing}", pytrace=False)
pytestmark = pytest.mark.skipif(_missing is not None, reason=_missing or "")


@pytest.fixture
def cuda(monkeypatch):
  """The NULL device generating kernels for sm_80; decoding must take tinygrad's public path there (no CPU-only host
  copies), and NULL's copies out read zeros instead of refusing."""
  def private(*args): raise AssertionError("a CPU-only host copy ran on the GPU path")
  monkeypatch.setattr(host_copy, "_buffer", private)
  with Context(DEV=f"NULL:CUDA:{GENERATED}", NULL_ALLOW_COPYOUT=1):
    yield GENERATED


@functools.cache
def renderer(arch: str) -> Renderer:
  with Context(DEV=f"NULL:CUDA:{arch}"): return Device[Device.DEFAULT].renderer


def test_sm_90_is_given_the_kernels_sm_80_is():
  """tinygrad's CUDA renderer chooses by architecture only its tensor cores and dtypes, and sm_90's differ from sm_80's
  in fp8 alone, which Aurora does not use: a bfloat16 and a float16 graph give the same source for both. Should a
  tinygrad make them differ, this fails, and the tests below must generate for each architecture."""
  without_fp8 = lambda r: ([tc for tc in r.tensor_cores if tc.dtype_in not in dtypes.fp8s], r.supported_dtypes() - set(dtypes.fp8s))
  assert without_fp8(renderer(GENERATED)) == without_fp8(renderer(ALSO))
  def sources(arch, dtype):
    with Context(DEV=f"NULL:CUDA:{arch}"):
      a = Tensor.empty(64, 64, dtype=dtype)
      return compiles(arch, lambda: (a @ a.T).softmax(-1).sum(0).realize(), also=())
  for dtype in (dtypes.bfloat16, dtypes.half):
    assert sorted(sources(GENERATED, dtype)) == sorted(sources(ALSO, dtype)) != []


def programs(arch: str) -> dict[tuple, tuple[str, str, bytes]]:
  """Every program compiled in this process for the architecture: (kernel name, CUDA source, NVRTC's binary)."""
  return {key: (prg.arg.name, prg.src[2].arg, prg.src[3].arg) for key, prg in to_program_cache.items()
          if key[2].renderer == "CUDA" and key[2].arch == arch}


def compiles(arch: str, run, also=(ALSO,)) -> list[str]:
  """Run a graph on the NULL device: each of its kernels is generated and compiled for the architecture then (or was,
  by an earlier graph of this file: the graphs share their shapes, so each kernel compiles once), and each new one
  is compiled for the `also` architectures too. Returns the sources of the kernels new to it."""
  before = set(programs(arch))
  run()
  compiled = programs(arch)
  assert compiled, "nothing was compiled (the graph ran on another device?)"
  new = [(name, source) for key, (name, source, _) in compiled.items() if key not in before]
  binaries = [(name, binary) for name, _, binary in compiled.values()]
  binaries += [(f"{name} for {other}", renderer(other).compiler.compile(source)) for other in also for name, source in new]
  for name, binary in binaries: assert binary[:4] == b"\x7fELF", f"{name}: NVRTC gave no cubin"
  return [source for _, source in new]


def tokens(block_size: int = SHAPE["block_size"]) -> TokenData:
  return TokenData((np.arange(4000) % SHAPE["vocab_size"]).astype(np.uint16), block_size)


def train_steps(trainer: Trainer):
  """One step's jitted micro-batch(es) and update as train_step runs them (train_step itself reads the loss back,
  which NULL has not computed). TinyJit's first call compiles every kernel; its capture would compile nothing new."""
  x, y = trainer.data.batch(np.random.default_rng(0), trainer.s.batch_size)
  for _ in range(trainer.s.grad_accum): trainer._micro_step(trainer.tensor(x), trainer.tensor(y))
  trainer._update_step(trainer.tensor([1.0], axis=None))


def pretraining(dtype="float32", optimizer="adamw", devices=(), grad_accum=1, batch_size=BATCH, **shape) -> Trainer:
  model = GPT(GPTConfig(**(SHAPE | shape)))
  s = TrainSettings(batch_size=batch_size, dtype=dtype, optimizer=optimizer, devices=devices, grad_accum=grad_accum,
                    diagnostics=optimizer != "adamw")
  return Trainer(model, tokens(), s, build_optimizer(model, s))


@pytest.mark.parametrize("dtype,mlp,pos,optimizer", [("float32", "gelu", "learned", "adamw"), ("bfloat16", "swiglu", "rope", "muon"),
                                                     ("float16", "relu2", "rope", "aurora")])
def test_the_train_step_compiles(cuda, dtype, mlp, pos, optimizer):
  new = compiles(cuda, lambda: train_steps(pretraining(dtype, optimizer, mlp=mlp, pos=pos)))
  if dtype != "float32":  # the matmuls in half precision run on tensor cores: tinygrad's WMMA, mma.sync in the source
    assert any("mma.sync" in source for source in new), f"no {dtype} kernel uses tensor cores"
  if dtype == "float32":  # the first step compiled: the embedding's gradient (in float32 in every dtype) a scatter-add
    assert any("atomicAdd" in source for source in new), "the embedding's gradient is not the scatter-add"


def test_gradient_accumulation_evaluation_and_data_parallel_compile(cuda):
  """Data parallel over two NULL devices, each taking half of a batch of twice the rows (the all-reduce is new)."""
  trainer = pretraining(grad_accum=2)
  compiles(cuda, lambda: (train_steps(trainer), trainer.evaluate()))
  assert compiles(cuda, lambda: train_steps(pretraining(devices=("NULL", "NULL:1"), batch_size=2 * BATCH)))


def test_the_fine_tuning_steps_compile(cuda):
  """SFT (targets masked outside the answers), LoRA over a frozen base, distillation from a teacher."""
  class Answers:  # chat rows: the first half of each sequence is prompt
    block_size = SHAPE["block_size"]
    def batch(self, rng, n, split="train"):
      x, y = tokens().batch(rng, n, split)
      y[:, :self.block_size // 2] = IGNORE_INDEX
      return x, y
  s, model = TrainSettings(batch_size=BATCH), GPT(GPTConfig(**SHAPE))
  compiles(cuda, lambda: train_steps(Trainer(model, Answers(), s, adamw(nn.state.get_parameters(model), 1e-3, 0.1))))
  assert model.wte.weight.device == "NULL"
  student = GPT(GPTConfig(**SHAPE))
  assert compiles(cuda, lambda: train_steps(Trainer(student, Answers(), s, adamw(lora.add_adapters(student, lora.LoRAConfig()), 1e-3, 0.0))))
  teacher, student = GPT(GPTConfig(**SHAPE)), GPT(GPTConfig(**SHAPE))
  loss = lambda x, y: distillation_loss(student(x), teacher(x), y, 0.5, 2.0)
  assert compiles(cuda, lambda: train_steps(Trainer(student, tokens(), s, adamw(nn.state.get_parameters(student), 1e-3, 0.1), loss=loss)))


@pytest.mark.parametrize("weights", ["float32", "float16", "int8"])
def test_decoding_compiles_in_every_sampling_mode(cuda, weights):
  """Prefill, decode and each sampler (greedy, sampling, top-k/top-p filtering), with the weights as stored or
  quantized; on tinygrad's public path (the fixture refuses CPU-only host copies)."""
  model = GPT(GPTConfig(**SHAPE))
  if weights != "float32": quantize(model, weights, log=lambda line: None)
  generator = Generator(model)
  def decode():
    for s in (Sampling(temperature=0), Sampling(temperature=1), Sampling(temperature=0.8, top_k=5, top_p=0.9, repetition_penalty=1.1)):
      assert len(generator.generate([1, 2, 3], dataclasses.replace(s, max_tokens=3))) == 3
  assert compiles(cuda, decode)
  assert Device["NULL"].graph.__name__ == "NullGraph"  # tinygrad's own graph runner, not the one for OpenCL


def test_the_batched_serving_step_compiles(cuda):
  assert compiles(cuda, lambda: Engine(GPT(GPTConfig(**SHAPE)), slots=2).warm_up())


def test_a_gpt2_shaped_bfloat16_step_compiles_for_an_h100():
  """GPT-2 124M's own widths and vocabulary (one of its twelve identical layers, one sequence of 256: the kernels of
  the full model, fewer of them) in bfloat16 with the default optimizer: its tensor-core matmuls at GPT-2's sizes."""
  with Context(DEV="NULL:CUDA:sm_90", NULL_ALLOW_COPYOUT=1):
    model = GPT(GPTConfig(n_layer=1, n_head=12, n_embd=768, block_size=256, vocab_size=50261))
    s = TrainSettings(batch_size=1, dtype="bfloat16", optimizer="aurora")
    trainer = Trainer(model, TokenData((np.arange(4000) % 50257).astype(np.uint16), 256), s, build_optimizer(model, s))
    new = compiles("sm_90", lambda: train_steps(trainer), also=())
  assert sum("mma.sync" in source for source in new) >= 4


def test_metal_source_is_rendered_for_the_train_step(monkeypatch):
  """Metal's compiler exists only on macOS: here tinygrad's Metal renderer writes the kernels' source (compiling them
  is left to a Mac), standing in for its compiler a pass-through that keeps the source. In this process (PARALLEL=0):
  tinygrad's compiling processes would import the real Metal runtime."""
  if sys.platform != "darwin":
    monkeypatch.setitem(sys.modules, "tinygrad.runtime.ops_metal", types.SimpleNamespace(MetalCompiler=Compiler))
  with Context(DEV="NULL:METAL", NULL_ALLOW_COPYOUT=1, PARALLEL=0):
    train_steps(pretraining("float16", mlp="swiglu"))
  sources = [prg.src[2].arg for key, prg in to_program_cache.items() if key[2].renderer == "METAL"]
  assert sources and all("kernel void" in source for source in sources)


def amd_problem() -> str | None:
  try:
    with Context(DEV="NULL:AMDLLVM:gfx1100"): (Tensor.empty(8, 8) @ Tensor.empty(8, 8)).realize()
  except Exception as e: return f"{type(e).__name__}: {next(iter(str(e).strip().splitlines()), '')}"
  return None


def test_the_train_step_compiles_for_amd():
  if why := amd_problem(): pytest.skip(f"tinygrad's AMD LLVM path does not work with this machine's LLVM (it wants LLVM 18 or newer): {why}")
  with Context(DEV="NULL:AMDLLVM:gfx1100", NULL_ALLOW_COPYOUT=1): train_steps(pretraining("float16"))
  assert any(key[2].renderer == "AMDLLVM" for key in to_program_cache)
