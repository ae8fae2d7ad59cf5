"""Train-step throughput: tokens/s and model FLOPs utilisation (MFU) of Aurora's jitted step, and of the same
model and batch in PyTorch when it is importable (the user's alternative is nanoGPT), measured in one run.

  python bench/train_throughput.py --size small --batch-size 16 --steps 10 [--device CPU] [--compare-fusion]
  python bench/train_throughput.py --size gpt2 --batch-size 16 --device CUDA --dtype bfloat16 [--devices 8]
  python bench/train_throughput.py --size tiny --devices CPU:0,CPU:1 --compare-devices   # data parallel vs one device

Timings are per micro-batch step (forward, backward, update); gradient accumulation repeats the first two.
"""
import argparse, math, os, sys, time
from dataclasses import replace
from pathlib import Path
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def flops_per_token(cfg) -> float:
  """Forward + backward FLOPs per token, PaLM-style: 6 per parameter plus attention's 12 * L * T * C."""
  n = 2 * cfg.n_layer * cfg.n_embd * (2 * cfg.n_embd) + cfg.n_layer * cfg.n_embd * cfg.mlp_hidden * (3 if cfg.mlp == "swiglu" else 2)
  n += cfg.vocab_size * cfg.n_embd  # the tied head's matmul
  return 6 * n + 12 * cfg.n_layer * cfg.block_size * cfg.n_embd


def cpu_peak_flops() -> float:
  """The CPU has no spec sheet here: take numpy's float32 1024x1024 matmul rate as the reachable peak."""
  a = np.random.rand(1024, 1024).astype(np.float32)
  a @ a
  start, reps = time.perf_counter(), 10
  for _ in range(reps): a @ a
  return reps * 2 * 1024 ** 3 / (time.perf_counter() - start)


PEAK_FLOPS = {"CUDA": 989e12, "NV": 989e12}  # H100 SXM dense bf16; other accelerators: pass --peak-tflops


def time_steps(step, n_steps: int, launched: list | None = None) -> float:
  """Seconds a step, after two to compile and capture; the first one's kernel costs go to `launched` if given."""
  if launched is None: step()
  else:
    from aurora_tg.backends.kernel_costs import kernel_costs
    with kernel_costs() as costs: step()  # the jit's first call launches its kernels one by one
    launched.extend(costs)
  step()
  start = time.perf_counter()
  for _ in range(n_steps): step()
  return (time.perf_counter() - start) / n_steps


def tinygrad_step(cfg, batch_size: int, dtype: str = "float32", devices: tuple[str, ...] = (), optimizer: str = "adamw"):
  from tinygrad import Tensor
  from aurora_tg.data.shards import TokenData
  from aurora_tg.model import GPT
  from tinygrad import Device
  from aurora_tg.cli.train import machine
  from aurora_tg.config import preset_of, train_settings
  from aurora_tg.trainer import Trainer, build_optimizer
  # what `train.py --optimizer NAME` resolves to for this preset (its rate and diagnostics), one micro-batch a step
  flags = {"optimizer": optimizer, "batch_size": batch_size, "dtype": dtype, "grad_accum": 1, "steps": 10 ** 6}
  settings = replace(train_settings(preset_of(cfg), "pretrain", flags, machine(Device.DEFAULT)), devices=devices)
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, size=200_000, dtype=np.int64).astype(np.uint32)
  Tensor.manual_seed(0)
  model = GPT(cfg)
  trainer = Trainer(model, TokenData(tokens, cfg.block_size), settings, build_optimizer(model, settings))
  return trainer.train_step


def torch_model(cfg):
  """nanoGPT's GPT-2 in PyTorch, for an Aurora GPTConfig's shape (GELU MLP, learned positions, LayerNorm, tied head)."""
  import torch
  import torch.nn as tnn

  class Block(tnn.Module):
    def __init__(self):
      super().__init__()
      self.ln_1, self.ln_2 = tnn.LayerNorm(cfg.n_embd), tnn.LayerNorm(cfg.n_embd)
      self.c_attn, self.c_proj = tnn.Linear(cfg.n_embd, 3 * cfg.n_embd), tnn.Linear(cfg.n_embd, cfg.n_embd)
      self.mlp = tnn.Sequential(tnn.Linear(cfg.n_embd, cfg.mlp_hidden), tnn.GELU(approximate="tanh"), tnn.Linear(cfg.mlp_hidden, cfg.n_embd))

    def forward(self, x):
      B, T, C = x.shape
      q, k, v = (t.view(B, T, cfg.n_head, -1).transpose(1, 2) for t in self.c_attn(self.ln_1(x)).split(C, dim=2))
      y = tnn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
      x = x + self.c_proj(y.transpose(1, 2).reshape(B, T, C))
      return x + self.mlp(self.ln_2(x))

  class TorchGPT(tnn.Module):
    def __init__(self):
      super().__init__()
      self.wte, self.wpe = tnn.Embedding(cfg.vocab_size, cfg.n_embd), tnn.Embedding(cfg.block_size, cfg.n_embd)
      self.h, self.ln_f = tnn.ModuleList(Block() for _ in range(cfg.n_layer)), tnn.LayerNorm(cfg.n_embd)
      for name, p in self.named_parameters():  # GPT-2's initialisation, as nanoGPT's _init_weights
        if p.dim() == 2: tnn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer) if name.endswith("c_proj.weight") or name.endswith("mlp.2.weight") else 0.02)
        elif name.endswith("bias"): tnn.init.zeros_(p)

    def forward(self, idx, targets, reduction="mean"):
      x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
      for block in self.h: x = block(x)
      logits = self.ln_f(x) @ self.wte.weight.T
      return tnn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction=reduction)

  return TorchGPT()


def torch_step(cfg, batch_size: int, dtype: str):
  """nanoGPT's recipe: on CUDA, torch.compile, autocast to the compute dtype (float32 weights and AdamW state) and the
  fused AdamW. On a CPU the model runs eagerly: compiling there needs a C++ toolchain and costs minutes."""
  import torch
  torch.manual_seed(0)
  device = "cuda" if torch.cuda.is_available() else "cpu"
  model = torch_model(cfg).to(device)
  opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, fused=device == "cuda")
  forward = torch.compile(model) if device == "cuda" else model  # compiled on the first of time_steps' warm-up steps
  x = torch.randint(0, cfg.vocab_size, (batch_size, cfg.block_size), device=device)
  autocast = torch.autocast(device, dtype=getattr(torch, dtype), enabled=device == "cuda" and dtype != "float32")

  def step():
    with autocast: loss = forward(x, x)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if device == "cuda": torch.cuda.synchronize()
  return step


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--size", default="small")
  p.add_argument("--batch-size", type=int, default=16)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--device", help="tinygrad backend (default: tinygrad's pick)")
  p.add_argument("--compare-fusion", action="store_true", help="also time the step without stored activations")
  p.add_argument("--optimizers", default="adamw", help="Aurora rows, one per optimizer, each with its default diagnostics (PyTorch's is AdamW)")
  p.add_argument("--dtype", default="float32", help="compute dtype: float32, bfloat16 or float16 (mixed precision)")
  p.add_argument("--devices", help="data parallel over these devices (CUDA:0,CUDA:1 or a count)")
  p.add_argument("--compare-devices", action="store_true", help="also time the same global batch on one device")
  p.add_argument("--peak-tflops", type=float, help="the device's peak, for MFU (default: known GPUs; on CPU numpy's matmul rate)")
  p.add_argument("--gpu", help="the GPU it runs on, by its name in aurora_tg/backends/targets.py (h100, a100-80gb, ...): "
                 "adds the least time its kernels can take there (the roofline, bench/gpu_model.py) beside the measured")
  args = p.parse_args()
  if args.device: os.environ["DEV"] = args.device.upper()
  from tinygrad import Device
  from aurora_tg.backends.devices import parse_devices, replay_jitted_steps
  replay_jitted_steps()  # as a training run does (CL: the graph runner)
  from aurora_tg.model import GPTConfig, PRESETS
  from aurora_tg.backends import targets
  from aurora_tg.tools import roofline
  if args.gpu and args.gpu not in targets.TARGETS: p.error(f"unknown --gpu {args.gpu}; choose from {', '.join(targets.TARGETS)}")
  devices = parse_devices(args.devices)
  cfg = GPTConfig(**{"vocab_size": 50261, **PRESETS[args.size]})
  device = Device.DEFAULT
  peak = (args.peak_tflops * 1e12 if args.peak_tflops else PEAK_FLOPS.get(device.split(":")[0]) or cpu_peak_flops()) * max(1, len(devices))
  tokens, fpt = args.batch_size * cfg.block_size, flops_per_token(cfg)
  print(f"preset {args.size}: {cfg.n_layer} layers, width {cfg.n_embd}, context {cfg.block_size}, vocabulary {cfg.vocab_size}; "
        f"batch {args.batch_size} x {cfg.block_size} = {tokens} tokens; {fpt * tokens / 1e9:.2f} GFLOP per step; peak {peak / 1e12:.3f} TFLOPS")

  where = f"{len(devices)} x {devices[0].split(':')[0]}" if devices else device
  gpu = targets.TARGETS[args.gpu] if args.gpu else None
  rows, modelled = [], {}
  for name in args.optimizers.split(","):
    launched = [] if gpu else None
    rows.append((f"aurora {name} (tinygrad, {where}, {args.dtype})", time_steps(tinygrad_step(cfg, args.batch_size, args.dtype, devices, name), args.steps, launched)))
    if gpu: modelled[rows[-1][0]] = sum(roofline.bound(k, gpu) for k in launched)
  if args.compare_devices and devices:
    rows.append((f"  same batch on one {device}", time_steps(tinygrad_step(cfg, args.batch_size, args.dtype), args.steps)))
  if args.compare_fusion:  # the same step with every activation left for tinygrad to fuse into its consumers
    import aurora_tg.model
    aurora_tg.model.stored = lambda x: x
    rows.append((f"  same, activations not stored", time_steps(tinygrad_step(cfg, args.batch_size), args.steps)))
  try:
    import torch
    torch.set_num_threads(os.cpu_count())
    torch_device = "cuda, compiled" if torch.cuda.is_available() else "cpu"
    rows.append((f"nanoGPT-style PyTorch {torch.__version__} ({torch_device})", time_steps(torch_step(cfg, args.batch_size, args.dtype), args.steps)))
  except ImportError: print("PyTorch is not importable: no comparison row (pip install torch)")

  least = f" {'least ms on ' + gpu.name:>16} |" if gpu else ""
  print(f"\n| {'implementation':<40} | {'ms/step':>8} | {'tokens/s':>9} | {'MFU':>6} | {'vs PyTorch':>10} |{least}")
  print(f"|{'-' * 42}|{'-' * 10}|{'-' * 11}|{'-' * 8}|{'-' * 12}|" + ("-" * 18 + "|" if gpu else ""))
  torch_time = rows[-1][1] if rows[-1][0].startswith("nanoGPT") else math.nan
  for name, t in rows:
    least = (f" {modelled[name] * 1000:16.3f} |" if name in modelled else f" {'':>16} |") if gpu else ""
    print(f"| {name:<40} | {t * 1000:8.0f} | {tokens / t:9,.0f} | {fpt * tokens / t / peak:6.1%} | {torch_time / t:9.2f}x |{least}")


if __name__ == "__main__":
  main()
