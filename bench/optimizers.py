"""Does Muon kill MLP neurons that Aurora keeps alive? The experiment behind the Aurora optimizer (Tilde Research,
arXiv 2606.27715), at the scale of this machine: a sweep over the MLP (gelu, swiglu, relu2) and its expansion
(4, 8, 16), each trained with every optimizer on the same data, seed and steps, warmup included, at the paper's
learning rates (matrix optimizers 0.05 with decay 0.025; AdamW beside them at the preset's rate).

Per run it records the loss against steps and wall time, per-layer neuron death by leverage (a neuron is dead when
its share of the update stays below a fraction of uniform for consecutive windows; see aurora_tg/tools/diagnostics.py),
the neurons never active on a probe batch, and the time per step. Step times come from a timing phase after a
setting's runs, in which the trained models take turns one step at a time: timed back to back instead, a whole run
apart, their ratio drifted with the machine's load (+25% for one setting that measures +8% interleaved); the loss
against wall time still uses each training run's own clock. It writes bench/results/optimizers.md (the table, and
Aurora's step time over Muon's), optimizers.json, optimizers.png (loss curves against steps and time) and
optimizers_leverage.png (leverage histograms at the end).

  python bench/optimizers.py                     # the sweep: about an hour on a 2-core CPU
  python bench/optimizers.py --quick             # one small setting, a minute: checks the bench runs
  python bench/optimizers.py --mlps relu2 --expansions 16 --steps 2000 --optimizers adamw,muon,normuon,aurora

Beside each run's validation loss, the table gives the steps it took to reach the train loss (smoothed over 20 steps)
at which the setting's slowest optimizer ended, as modded-nanogpt's optimizer track compares optimizers.
"""
import argparse, json, sys, time
from pathlib import Path
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WIDTH, LAYERS, HEADS, CONTEXT = 64, 2, 4, 64  # small enough for 18 runs of 1,000 steps in about an hour here


def train_one(optimizer: str, mlp: str, expansion: float, data, vocab_size: int, args) -> tuple[dict, object]:
  """One optimizer's run of a setting -> (its result, its trainer, kept for the timing phase)."""
  from tinygrad import Tensor
  from aurora_tg.config import DEFAULTS, TrainSettings
  from aurora_tg.model import GPT, GPTConfig
  from aurora_tg.trainer import Trainer, build_optimizer
  cfg = GPTConfig(n_layer=LAYERS, n_head=HEADS, n_embd=WIDTH, block_size=CONTEXT, vocab_size=vocab_size, mlp=mlp, mlp_ratio=expansion)
  settings = TrainSettings(optimizer=optimizer, lr=DEFAULTS.get(optimizer, {}).get("lr", 3e-3), adam_lr=3e-3, steps=args.steps,
                           batch_size=args.batch_size, warmup=max(1, args.steps // 10), eval_batches=4, seed=0, log_every=args.window,
                           diagnostics=True)
  Tensor.manual_seed(0)
  model = GPT(cfg)
  trainer = Trainer(model, data, settings, build_optimizer(model, settings))
  curve, dead, clock = [], [], 0.0
  for step in range(args.steps):
    start = time.perf_counter()
    loss, _ = trainer.train_step()
    if step >= 2: clock += time.perf_counter() - start  # the first steps compile: kept off the wall-time axis
    curve.append((step + 1, clock, loss))
    if (step + 1) % args.window == 0:
      report = trainer.watch.report()
      dead.append(report["dead_fraction"])
      if (step + 1) % (10 * args.window) == 0 or step + 1 == args.steps:
        print(f"  {mlp} x{expansion:g} {optimizer:7s} step {step + 1:5d} | loss {loss:.3f} | dead "
              + "/".join(f"{d:.0%}" for d in dead[-1]), flush=True)
  val_loss = trainer.evaluate()
  never_active = trainer.watch.never_active()
  return {"optimizer": optimizer, "mlp": mlp, "expansion": expansion, "hidden": cfg.mlp_hidden, "curve": curve,
          "val_loss": val_loss, "dead": dead[-1], "max_dead": max(max(d) for d in dead), "never_active": never_active,
          "leverage": [lev.tolist() for lev in trainer.watch.leverage]}, trainer


def interleaved_ms_per_step(trainers: list, steps: int) -> list[float]:
  """The median step time of each trainer, the trainers taking turns one step at a time so that a change in the
  machine's load falls on all of them alike."""
  times = [[] for _ in trainers]
  for _ in range(steps):
    for trainer, took in zip(trainers, times):
      start = time.perf_counter()
      trainer.train_step()
      took.append(time.perf_counter() - start)
  return [1e3 * float(np.median(t)) for t in times]


def smoothed(losses: np.ndarray, window: int = 20) -> np.ndarray:
  """A moving average of the train loss (a batch's loss alone is noisy), one value per step from the window's end."""
  window = min(window, len(losses))
  return np.convolve(losses, np.ones(window) / window, mode="valid")


def steps_to_target(results: list[dict]) -> dict[int, int]:
  """modded-nanogpt's optimizer question, per setting: the steps each run takes to reach the smoothed train loss that
  the setting's slowest run ends at (so every run reaches it), by index into results."""
  out = {}
  for setting in {(r["mlp"], r["expansion"]) for r in results}:
    members = [i for i, r in enumerate(results) if (r["mlp"], r["expansion"]) == setting]
    curves = {i: smoothed(np.array([c[2] for c in results[i]["curve"]])) for i in members}
    target = max(curve[-1] for curve in curves.values())
    for i, curve in curves.items(): out[i] = int(np.argmax(curve <= target)) + min(20, len(results[i]["curve"]))
  return out


def table(results: list[dict]) -> str:
  lines = ["| MLP | expansion (hidden) | optimizer | val loss | steps to the setting's target | dead at end (per layer) | "
           "worst window | never active on probe | ms/step |", "|---|---|---|---|---|---|---|---|---|"]
  to_target = steps_to_target(results)
  for i, r in enumerate(results):
    lines.append(f"| {r['mlp']} | {r['expansion']:g} ({r['hidden']}) | {r['optimizer']} | {r['val_loss']:.3f} | {to_target[i]} | "
                 f"{' / '.join(f'{d:.0%}' for d in r['dead'])} | {r['max_dead']:.0%} | "
                 f"{' / '.join(f'{d:.0%}' for d in r['never_active'])} | {r['ms_per_step']:.0f} |")
  muon = {(r["mlp"], r["expansion"]): r["ms_per_step"] for r in results if r["optimizer"] == "muon"}
  ratios = [r["ms_per_step"] / muon[(r["mlp"], r["expansion"])] for r in results
            if r["optimizer"] == "aurora" and (r["mlp"], r["expansion"]) in muon]
  if ratios: lines.append(f"\nAurora's step time over Muon's (median over settings): {np.median(ratios) - 1:+.1%} "
                          f"(from {min(ratios) - 1:+.1%} to {max(ratios) - 1:+.1%})")
  return "\n".join(lines)


def plot(results: list[dict], out: Path, title: str):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  settings = sorted({(r["mlp"], r["expansion"]) for r in results})
  fig, axes = plt.subplots(len(settings), 2, figsize=(10, 2.6 * len(settings)), squeeze=False)
  for row, (mlp, expansion) in enumerate(settings):
    for r in (r for r in results if (r["mlp"], r["expansion"]) == (mlp, expansion)):
      steps, seconds, losses = map(np.array, zip(*r["curve"]))
      window, smooth = min(20, len(losses)), smoothed(losses)
      label = f"{r['optimizer']} (val {r['val_loss']:.3f})"
      axes[row, 0].plot(steps[window - 1:], smooth, label=label)
      axes[row, 1].plot(seconds[window - 1:], smooth, label=label)
    axes[row, 0].set(xlabel="step", ylabel=f"{mlp} x{expansion:g}\ntrain loss")
    axes[row, 1].set(xlabel="seconds")
    axes[row, 0].legend(fontsize=7)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(out / "optimizers.png", dpi=100)

  fig, axes = plt.subplots(len(settings), 1, figsize=(6, 2.2 * len(settings)), squeeze=False)
  for row, (mlp, expansion) in enumerate(settings):
    for r in (r for r in results if (r["mlp"], r["expansion"]) == (mlp, expansion)):
      leverage = np.concatenate(r["leverage"]) if r["leverage"] else np.zeros(1)
      axes[row, 0].hist(leverage, bins=np.linspace(0, max(3.0, leverage.max()), 40), alpha=0.5, label=r["optimizer"])
    axes[row, 0].set(ylabel=f"{mlp} x{expansion:g}\nneurons", xlabel="leverage at the end (1 = uniform share)")
    axes[row, 0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out / "optimizers_leverage.png", dpi=100)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true", help="one setting (relu2 x4), 60 steps: checks that the bench runs")
  p.add_argument("--mlps", default="gelu,swiglu,relu2")
  p.add_argument("--expansions", default="4,8,16")
  p.add_argument("--optimizers", default="muon,normuon,aurora")
  p.add_argument("--steps", type=int, default=1000)
  p.add_argument("--batch-size", type=int, default=8)
  p.add_argument("--window", type=int, default=10, help="steps per leverage window")
  p.add_argument("--timing-steps", type=int, default=100, help="steps per optimizer in each setting's timing phase")
  p.add_argument("--device")
  p.add_argument("--out", default="bench/results")
  args = p.parse_args()
  if args.quick: args.mlps, args.expansions, args.steps, args.timing_steps = "relu2", "4", 60, 20

  from aurora_tg.backends import devices
  from aurora_tg.data.shards import TokenData, load_shards
  from aurora_tg.data.prepare import prepared
  from aurora_tg.data.sources import default_corpus
  from aurora_tg.data.tokenizer import train_bpe
  device = devices.select_device(args.device)
  tokenizer = train_bpe(default_corpus(), 1024)
  train, val = load_shards(prepared(None, tokenizer))
  data = TokenData(train, CONTEXT, val=val)
  runs = [(mlp, float(e)) for mlp in args.mlps.split(",") for e in args.expansions.split(",")]
  print(f"{device} | {LAYERS} layers, width {WIDTH} | {len(runs)} settings x {args.optimizers} | "
        f"{args.steps} steps of {args.batch_size}x{CONTEXT} tokens", flush=True)
  started = time.perf_counter()
  results = []
  for i, (mlp, expansion) in enumerate(runs):
    trained = [train_one(name, mlp, expansion, data, tokenizer.n_vocab, args) for name in args.optimizers.split(",")]
    for (result, _), ms in zip(trained, interleaved_ms_per_step([trainer for _, trainer in trained], args.timing_steps)):
      results.append(result | {"ms_per_step": ms})
    write_results(results, Path(args.out), f"{device}, {LAYERS} layers, width {WIDTH}, {args.steps} steps of "
                  f"{args.batch_size}x{CONTEXT} tokens")  # after every setting: a stopped sweep keeps what it measured
    done = time.perf_counter() - started
    print(f"setting {i + 1}/{len(runs)} done | {done / 60:.1f} min | about {done / (i + 1) * (len(runs) - i - 1) / 60:.0f} min left", flush=True)
  print(table(results))
  print(f"wrote {Path(args.out) / 'optimizers.md'}, optimizers.json, optimizers.png and optimizers_leverage.png")


def write_results(results: list[dict], out: Path, setting: str):
  out.mkdir(parents=True, exist_ok=True)
  (out / "optimizers.md").write_text(f"{setting}\n\n{table(results)}\n")
  (out / "optimizers.json").write_text(json.dumps(results))
  plot(results, out, setting)


if __name__ == "__main__":
  main()
