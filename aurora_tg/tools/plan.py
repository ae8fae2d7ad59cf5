"""The memory plan of a pretraining run (`train.py --plan`, `--batch-size auto`): what its training step holds on a
device, measured by running that step, as the trainer runs it, on tinygrad's NULL device. NULL takes a renderer (a
GPU's, aurora_tg/backends/targets.py) and allocates, schedules and compiles every kernel as that device would, and
computes nothing; tinygrad counts the bytes it allocates, the FLOPs and the bytes each kernel moves. So a plan costs
one compilation of the step per micro-batch tried, and no memory.

Peak memory is the high-water mark over what a run does first: an evaluation, three training steps (TinyJit runs the
step, captures it, then replays the capture with its buffers planned) and two more evaluations (capture, replay).
Gradient accumulation repeats the micro-batch's step, which holds the same buffers each time. Not planned: what
--diagnostics' never-active probe and --eval-hellaswag-every add (a forward pass each), which HEADROOM leaves room for."""
import functools, time
from dataclasses import dataclass, replace
import numpy as np
from tinygrad import Context, Device, GlobalCounters, nn
from aurora_tg import UserError
from aurora_tg.backends import memory
from aurora_tg.backends.kernel_costs import KernelCost, kernel_costs
from aurora_tg.config import TrainSettings
from aurora_tg.model import GPT, GPTConfig, num_params
from aurora_tg.trainer import Trainer, build_optimizer

HEADROOM = 0.9  # of a device's memory a plan fills at most: the rest for the CUDA context, fragmentation, the host side
# the NULL renderer that compiles what each backend's own renderer would (the embedding's scatter-add depends on it)
NULL_RENDERER = {"CPU": "CLANG", "CL": "OPENCL", "CUDA": "CUDA", "NV": "CUDA", "AMD": "HIP"}


@dataclass(frozen=True)
class StepPlan:
  micro_batch: int
  grad_accum: int
  params: int             # the model's parameters
  weights: int            # bytes: the model's weights
  optimizer_state: int    # bytes: the optimizer's state and the summed gradients
  peak: int               # bytes held at most, weights included
  flops: int              # per optimizer step (every micro-batch and the update)
  moved: int              # bytes read and written per optimizer step, as tinygrad estimates each kernel's
  kernels: int            # kernels per optimizer step
  step_kernels: tuple[KernelCost, ...]  # each kernel launch of an optimizer step, with its cost (tools/roofline.py)

  @property
  def activations(self) -> int: return self.peak - self.weights - self.optimizer_state


class RandomTokens:
  """Batches of the shape the run trains on; the values do not matter to what a step allocates or compiles."""
  def __init__(self, block_size: int, vocab_size: int): self.block_size, self.vocab_size = block_size, vocab_size
  def batch(self, rng, n: int, split: str = "train"):
    x = rng.integers(0, self.vocab_size, size=(n, self.block_size)).astype(np.int32)
    return x, x


def null_device(device: str) -> str:
  """DEV for the NULL device compiling as `device` (a backend in use, CPU, CUDA, ...) would (a CUDA device that works
  has found NVIDIA's compiler, which the NULL device then uses too)."""
  backend = device.split(":")[0]
  if backend not in NULL_RENDERER: return "NULL"  # Metal, WebGPU: the public lookup, as on NULL's own renderer
  arch = Device[device].renderer.target.arch
  return f"NULL:{NULL_RENDERER[backend]}" + (f":{arch}" if arch else "")


@functools.cache  # a plan depends on nothing else: a search and the --plan before it share what they measured
def measure(model_cfg: GPTConfig, s: TrainSettings, device: str) -> StepPlan:
  """The plan of one micro-batch size (s.batch_size), measured on `device` (a NULL device, or a real one to check)."""
  rng, data = np.random.default_rng(0), RandomTokens(model_cfg.block_size, model_cfg.vocab_size)
  with Context(DEV=device, NULL_ALLOW_COPYOUT=1), memory.peak(device.split(":")[0]) as held:
    model = GPT(model_cfg)
    trainer = Trainer(model, data, s, build_optimizer(model, s))
    weights = sum(t.nbytes() for t in nn.state.get_parameters(model))
    # an optimizer group lists each weight twice (its own and its members'): each tensor once, the weights left out
    trained = {id(p) for p in trainer.params}
    state = {id(t): t for t in nn.state.get_parameters(trainer.optimizer) if id(t) not in trained}
    optimizer_state = sum(t.nbytes() for t in state.values()) + sum(t.nbytes() for t in trainer.grad_sums)
    batch = lambda split: [trainer.tensor(a) for a in data.batch(rng, s.batch_size, split)]
    evaluate, micro, update = (lambda: trainer._eval_step(*batch("val"))), (lambda: trainer._micro_step(*batch("train"))), \
                              (lambda: trainer._update_step(trainer.tensor([1.0], axis=None)))
    evaluate()
    # TinyJit's first call runs each kernel as later calls replay them
    with kernel_costs() as micro_kernels: micro_cost = counted(micro)
    with kernel_costs() as update_kernels: update_cost = counted(update)
    micro(), update(), micro(), update(), evaluate(), evaluate()  # TinyJit's capture, a replay
    peak = held()
  flops, moved, kernels = (s.grad_accum * m + u for m, u in zip(micro_cost, update_cost))
  return StepPlan(s.batch_size, s.grad_accum, num_params(model), weights, optimizer_state, peak, flops, moved, kernels,
                  tuple(micro_kernels * s.grad_accum + update_kernels))


def counted(run) -> tuple[int, int, int]:
  """FLOPs, bytes moved and kernels of one call, as tinygrad counts them (a call replayed through a graph runner
  counts as one kernel: this is for calls that run their kernels one by one)."""
  GlobalCounters.reset()
  run()
  return GlobalCounters.global_ops, GlobalCounters.global_mem, GlobalCounters.kernel_count


def divisors(n: int) -> list[int]: return [d for d in range(1, n + 1) if n % d == 0]


def largest_fitting(model_cfg: GPTConfig, s: TrainSettings, device: str, memory_bytes: float, log=print) -> StepPlan:
  """The largest micro-batch whose step fits HEADROOM of memory_bytes, with grad_accum raised to keep the rows
  (sequences) per optimizer step: the micro-batch divides them. Memory grows by nearly the same bytes for every row a
  micro-batch adds (GPT-2 124M in bfloat16: 1.46 GB from one row to two, 1.95 GB a row from 8 to 32, bench/results/
  plan.md), so two small plans predict the size, and planning it checks the prediction (stepping down while it does
  not fit)."""
  rows, usable, tried = s.batch_size * s.grad_accum, HEADROOM * memory_bytes, {}
  def plan(b: int) -> StepPlan:
    if b not in tried:
      start = time.perf_counter()
      tried[b] = measure(model_cfg, replace(s, batch_size=b, grad_accum=rows // b), device)
      log(f"  micro-batch {b:4d}: peak {size(tried[b].peak):>10} ({time.perf_counter() - start:.0f}s to compile and plan)")
    return tried[b]
  sizes, one = divisors(rows), plan(1)
  if one.peak > usable: raise UserError(f"even one sequence per micro-batch needs {size(one.peak)}; "
                                        f"{size(usable)} of {size(memory_bytes)} is usable")
  if len(sizes) == 1: return one
  two = plan(sizes[1])
  per_row = (two.peak - one.peak) / (sizes[1] - 1)
  predicted = [b for b in sizes if one.peak + (b - 1) * per_row <= usable] or [1]
  for b in reversed([b for b in sizes if b <= predicted[-1]]):
    if plan(b).peak <= usable: return plan(b)
  return one


def size(n: float) -> str: return f"{n / 1e9:,.2f} GB" if n >= 1e9 else f"{n / 1e6:,.1f} MB"


def describe(p: StepPlan, tokens_per_row: int, memory_bytes: float | None = None) -> str:
  fits = "" if memory_bytes is None else f" of {size(HEADROOM * memory_bytes)} usable ({HEADROOM:.0%} of {size(memory_bytes)}): " + \
         ("fits" if p.peak <= HEADROOM * memory_bytes else "does NOT fit")
  return (f"  {p.params / 1e6:,.2f}M parameters | micro-batch {p.micro_batch} x {tokens_per_row} tokens, {p.grad_accum} per step\n"
          f"  weights {size(p.weights)} | optimizer state and gradient sums {size(p.optimizer_state)} | activations and the rest "
          f"{size(p.activations)}\n  peak {size(p.peak)}{fits}\n"
          f"  a step: {p.kernels:,} kernels, {p.flops / 1e9:,.1f} GFLOP, {size(p.moved)} moved")
