"""Learning per second: the default pretraining (`python train.py`'s first stage, its data, tokenizer, preset, batch and
learning-rate schedule) trained by Aurora with each optimizer, and by nanoGPT's model in PyTorch, each for the same
wall time, then evaluated on the same validation windows (loss and bits per byte).

  python bench/walltime.py                      # 210 s each: AdamW, Muon, NorMuon, Aurora, and PyTorch (AdamW, Muon)
  python bench/walltime.py --budget 60 --runs aurora,adamw,torch-adamw --mlp relu2
  python bench/walltime.py --runs aurora,muon --seed 7 --out bench/results/walltime-seed7.md   # the noise between seeds
  python bench/walltime.py --quick              # a few seconds each on the tiny preset: checks that the bench runs

A run's steps are set so that its training fills the budget: a probe measures the step time, then a fresh run trains
as many steps as fit, the schedule's warmup and cosine decay spread over them. The budget includes the fresh run's
first steps (jit capture; tinygrad's compiled kernels are cached by then, as on a user's second run). Evaluation is
outside it. Runs go one after another,
never two at once (a 2-core machine). Results go to bench/results/walltime.md with the command, machine and date.
"""
import argparse, math, os, platform, sys, time
from dataclasses import replace
from datetime import date
from pathlib import Path
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

AURORA_RUNS = ("adamw", "muon", "normuon", "aurora")
TORCH_RUNS = ("torch-adamw", "torch-muon")


def settings_for(args, optimizer: str):
  """The pretraining config `python train.py --optimizer optimizer` resolves to on this machine (plus --mlp)."""
  from aurora_tg import config
  from aurora_tg.cli.train import machine
  from tinygrad import Device
  flags = {"optimizer": optimizer, "size": args.size, "out": "/nonexistent/walltime", "mlp": args.mlp}
  if args.seed is not None: flags["seed"] = args.seed
  return config.new_run("pretrain", flags, machine(Device.DEFAULT))


def aurora_trainer(cfg, data, tokenizer, steps: int):
  from tinygrad import Tensor
  from aurora_tg.model import GPT
  from aurora_tg.trainer import Trainer, build_optimizer
  settings = replace(cfg.train, steps=steps, warmup=min(cfg.train.warmup, max(1, steps // 10)), diagnostics=False)
  Tensor.manual_seed(settings.seed)
  model = GPT(cfg.model_config(tokenizer.n_vocab))
  return Trainer(model, data, settings, build_optimizer(model, settings), token_bytes=tokenizer.token_bytes())


def train_for(budget: float, make, step, set_steps) -> tuple[object, int, float]:
  """Fill the budget: a probe's steps after its first two (compile, jit capture) give the step time; a fresh run,
  built for as many steps as fit, takes its own first two, then its step count is set to fill what is left (the
  schedule's cosine reaches its end there). -> (the run, steps taken, seconds)."""
  probe = make(10 ** 6)
  for _ in range(2): step(probe)
  start = time.perf_counter()
  for _ in range(5): step(probe)
  per_step = (time.perf_counter() - start) / 5
  run = make(max(3, int(budget / per_step)))
  start = time.perf_counter()
  for _ in range(2): step(run)
  steps = max(2, 2 + int((budget - (time.perf_counter() - start)) / per_step))
  set_steps(run, steps)
  taken = 2
  while taken < steps and time.perf_counter() - start < budget:
    step(run)
    taken += 1
  return run, taken, time.perf_counter() - start


def validation_windows(data, batches: int, batch_size: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
  rng = np.random.default_rng(seed)
  return [data.batch(rng, batch_size, "val") for _ in range(batches)]


def bits_per_byte(token_losses: np.ndarray, targets: np.ndarray, token_bytes: np.ndarray) -> tuple[float, float]:
  """(mean loss per token, bits per byte) of per-token losses in nats, special tokens' bytes counted as none."""
  weights = token_bytes[targets]
  return float(token_losses.mean()), float(token_losses[weights > 0].sum() / math.log(2) / weights.sum())


def aurora_losses(trainer, windows) -> np.ndarray:
  from tinygrad import Tensor
  return np.concatenate([trainer._eval_step(Tensor(x), Tensor(y)).numpy().reshape(-1) for x, y in windows])


def torch_run(args, cfg, data, optimizer: str):
  """nanoGPT's loop in PyTorch on the same batches' distribution: AdamW (decay on 2-D weights), or torch.optim.Muon on
  the blocks' matrices with AdamW on the rest; the same warmup, cosine decay and gradient clipping."""
  import torch
  from train_throughput import torch_model
  from aurora_tg.trainer import lr_multiplier
  torch.set_num_threads(os.cpu_count())
  model_cfg = cfg.model_config(args.vocab)
  s = cfg.train

  def make(steps: int):
    torch.manual_seed(s.seed)
    model = torch_model(model_cfg)
    matrices = [p for n, p in model.named_parameters() if n.startswith("h.") and p.dim() == 2]
    decayed = [p for n, p in model.named_parameters() if p.dim() == 2 and not any(p is m for m in matrices)]
    rest = [p for p in model.parameters() if p.dim() < 2]
    adam_lr = s.adam_lr if optimizer == "torch-muon" else s.lr
    adam_groups = [{"params": decayed, "weight_decay": s.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    if optimizer == "torch-muon":
      opts = [torch.optim.Muon(matrices, lr=s.lr, weight_decay=s.matrix_weight_decay, adjust_lr_fn="match_rms_adamw"),
              torch.optim.AdamW(adam_groups, lr=adam_lr, betas=(0.9, 0.95))]
    else:
      opts = [torch.optim.AdamW([{"params": matrices, "weight_decay": s.weight_decay}] + adam_groups, lr=s.lr, betas=(0.9, 0.95))]
    state = {"model": model, "opts": opts, "base": [[g["lr"] for g in o.param_groups] for o in opts], "step": 0,
             "settings": replace(s, steps=steps, warmup=min(s.warmup, max(1, steps // 10))), "rng": np.random.default_rng(s.seed)}
    return state

  def step(state):
    mult = lr_multiplier(state["step"], state["settings"])
    for opt, base in zip(state["opts"], state["base"]):
      for group, lr in zip(opt.param_groups, base): group["lr"] = lr * mult
    x, y = data.batch(state["rng"], s.batch_size)
    loss = state["model"](torch.from_numpy(x.astype(np.int64)), torch.from_numpy(y.astype(np.int64)))
    for opt in state["opts"]: opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(state["model"].parameters(), s.grad_clip)
    for opt in state["opts"]: opt.step()
    state["step"] += 1

  return make, step


def torch_losses(state, windows) -> np.ndarray:
  import torch
  with torch.no_grad():
    return np.concatenate([state["model"](torch.from_numpy(x.astype(np.int64)), torch.from_numpy(y.astype(np.int64)), reduction="none").numpy()
                           for x, y in windows])


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--budget", type=float, default=210.0, help="seconds of training per run (default: the default pretraining's, about 3.5 minutes here)")
  p.add_argument("--runs", default=",".join(AURORA_RUNS + TORCH_RUNS), help=f"any of {', '.join(AURORA_RUNS + TORCH_RUNS)}")
  p.add_argument("--size", default="small")
  p.add_argument("--mlp", default="gelu", help="the Aurora runs' MLP (PyTorch's stays nanoGPT's GELU)")
  p.add_argument("--eval-batches", type=int, default=32, help="validation windows, batches of the run's batch size")
  p.add_argument("--seed", type=int, help="the runs' initialisation and batch order (default: the run's own); the "
                 "validation windows stay the default's, so rows of two seeds compare on the same tokens")
  p.add_argument("--device")
  p.add_argument("--quick", action="store_true", help="the tiny preset, 4 s a run, 2 validation batches, no results file")
  p.add_argument("--out", default="bench/results/walltime.md")
  args = p.parse_args()
  if args.quick: args.size, args.budget, args.eval_batches = "tiny", 4.0, 2
  runs = args.runs.split(",")
  if unknown := [r for r in runs if r not in AURORA_RUNS + TORCH_RUNS]: sys.exit(f"error: unknown run {unknown[0]!r}")
  try: import torch
  except ImportError:
    print("PyTorch is not importable: no nanoGPT rows (pip install torch)")
    runs = [r for r in runs if r not in TORCH_RUNS]
  else:
    if not hasattr(torch.optim, "Muon"): runs = [r for r in runs if r != "torch-muon"]

  from aurora_tg.backends import devices
  from aurora_tg.config import TrainSettings
  from aurora_tg.cli.train import pretraining_tokenizer
  from aurora_tg.data.prepare import token_data
  device = devices.select_device(args.device)
  devices.replay_jitted_steps()
  base = settings_for(args, "adamw")
  tokenizer = pretraining_tokenizer(base)
  args.vocab = tokenizer.n_vocab
  data = token_data(base, tokenizer, base.model_config(tokenizer.n_vocab).block_size)
  windows = validation_windows(data, args.eval_batches, base.train.batch_size, TrainSettings.seed + 1)
  targets = np.concatenate([y.reshape(-1) for _, y in windows])
  token_bytes = tokenizer.token_bytes()
  print(f"{device} | preset {args.size}, batch {base.train.batch_size} x {data.block_size} | {args.budget:g} s a run | "
        f"{len(windows) * base.train.batch_size} validation windows", flush=True)

  rows = []
  for i, name in enumerate(runs):
    started = time.perf_counter()
    if name in TORCH_RUNS:
      make, step = torch_run(args, base if name == "torch-adamw" else settings_for(args, "muon"), data, name)
      def set_steps(state, n): state["settings"] = replace(state["settings"], steps=n)
      state, steps, seconds = train_for(args.budget, make, step, set_steps)
      losses, label = torch_losses(state, windows), f"nanoGPT-style PyTorch {torch.__version__}, {name.split('-')[1]}"
    else:
      cfg = settings_for(args, name)
      def set_steps(trainer, n): trainer.s = replace(trainer.s, steps=n)  # read by the schedule at every step
      trainer, steps, seconds = train_for(args.budget, lambda n: aurora_trainer(cfg, data, tokenizer, n), lambda t: t.train_step(), set_steps)
      losses, label = aurora_losses(trainer, windows), f"Aurora, {name}, {args.mlp}"
    loss, bpb = bits_per_byte(losses, targets, token_bytes)
    rows.append((label, steps, seconds, loss, bpb))
    print(f"[{i + 1}/{len(runs)}] {label}: {steps} steps in {seconds:.0f} s, val loss {loss:.3f}, {bpb:.3f} bits per byte "
          f"({time.perf_counter() - started:.0f} s with the probe and evaluation)", flush=True)

  reference = next((r[4] for r in rows if r[0].startswith("nanoGPT") and r[0].endswith("adamw")), math.nan)
  table = ["| run | steps | seconds | ms/step | val loss | bits per byte | vs nanoGPT (AdamW) |", "|---|---|---|---|---|---|---|"]
  for label, steps, seconds, loss, bpb in rows:
    ratio = f"{bpb / reference:.2f}x" if math.isfinite(reference) else "no nanoGPT row"
    table.append(f"| {label} | {steps} | {seconds:.0f} | {1000 * seconds / steps:.0f} | {loss:.3f} | {bpb:.3f} | {ratio} |")
  print("\n" + "\n".join(table))
  if not args.quick:
    command = "python bench/walltime.py " + " ".join(sys.argv[1:])
    header = (f"# Learning per second: bits per byte at equal wall time\n\n- Command: `{command.strip()}`\n- Machine: {os.cpu_count()} "
              f"CPU cores ({platform.machine()}), tinygrad device {device}\n- Date: {date.today()}\n- Budget: {args.budget:g} s of "
              f"training per run (compile included, evaluation not); preset {args.size}, batch {base.train.batch_size}; "
              f"{len(targets):,} validation tokens\n\n")
    Path(args.out).write_text(header + "\n".join(table) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
