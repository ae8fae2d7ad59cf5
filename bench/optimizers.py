"""AdamW vs Muon vs Aurora: the same model, data, seed and token budget, one run each, on a SwiGLU model with a
wide MLP (tall up-projections, where Aurora should matter most). Writes a markdown table (final validation loss,
dead-neuron fraction, time per step, Aurora's overhead over Muon) and a PNG of the loss curves.

  python bench/optimizers.py [--steps 300] [--mlp-ratio 8] [--optimizers adamw,muon,aurora] [--device CL] [--out bench/results]
"""
import argparse, json, sys, time
from pathlib import Path
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def train_one(name: str, cfg, data, args) -> dict:
  from tinygrad import Tensor
  from aurora_tg.config import DEFAULTS
  from aurora_tg.model import GPT
  from aurora_tg.trainer import Trainer, TrainSettings, build_optimizer
  settings = TrainSettings(optimizer=name, lr=DEFAULTS.get(name, {}).get("lr", 3e-3), adam_lr=3e-3, steps=args.steps,
                           batch_size=args.batch_size, warmup=max(1, args.steps // 20), eval_batches=8, seed=0)
  Tensor.manual_seed(0)
  model = GPT(cfg)
  trainer = Trainer(model, data, settings, build_optimizer(model, settings))
  trainer.train_step()  # compile outside the timing
  curve, dead, spread, step_times = [], [], [], []
  for step in range(1, args.steps):
    start = time.perf_counter()
    loss, _ = trainer.train_step()
    step_times.append(time.perf_counter() - start)
    curve.append((step + 1, loss))
    if (step + 1) % args.window == 0:
      report = trainer.watch.report()
      dead.append(float(np.mean(report["dead_fraction"])))
      spread.append(float(np.mean(report["update_spread"])))
      print(f"  {name:7s} step {step + 1:4d} | loss {loss:.3f} | dead neurons {dead[-1]:.1%} | update spread {spread[-1]:.2f}", flush=True)
  return {"name": name, "curve": curve, "val_loss": trainer.evaluate(), "dead": dead[-1], "max_dead": max(dead),
          "spread": spread[-1], "ms_per_step": 1e3 * float(np.median(step_times))}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--batch-size", type=int, default=16)
  p.add_argument("--mlp-ratio", type=float, default=8.0)
  p.add_argument("--window", type=int, default=50, help="steps per dead-neuron measurement")
  p.add_argument("--optimizers", default="adamw,muon,aurora")
  p.add_argument("--device")
  p.add_argument("--out", default="bench/results")
  args = p.parse_args()

  from aurora_tg import devices
  from aurora_tg.data import TokenData, load_shards
  from aurora_tg.model import GPTConfig
  from aurora_tg.prepare import prepared
  from aurora_tg.sources import default_corpus
  from aurora_tg.tokenizer import train_bpe
  device = devices.select_device(args.device)
  tokenizer = train_bpe(default_corpus(), 1024)
  cfg = GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=tokenizer.n_vocab, mlp="swiglu", mlp_ratio=args.mlp_ratio)
  train, val = load_shards(prepared(None, tokenizer))
  data = TokenData(train, cfg.block_size, val=val)
  print(f"{device} | 4 layers, width 128, SwiGLU hidden {cfg.mlp_hidden} | {args.steps} steps of {args.batch_size}x{cfg.block_size} tokens")

  results = [train_one(name, cfg, data, args) for name in args.optimizers.split(",")]
  by_name = {r["name"]: r for r in results}
  lines = ["| optimizer | final val loss | dead neurons (end / worst window) | update row spread | ms/step |", "|---|---|---|---|---|"]
  lines += [f"| {r['name']} | {r['val_loss']:.3f} | {r['dead']:.1%} / {r['max_dead']:.1%} | {r['spread']:.2f} | {r['ms_per_step']:.0f} |" for r in results]
  if "muon" in by_name and "aurora" in by_name:
    lines.append(f"\nAurora's step time over Muon's: {by_name['aurora']['ms_per_step'] / by_name['muon']['ms_per_step'] - 1:+.1%}")
  table = "\n".join(lines)
  print(table)

  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "optimizers.md").write_text(table + "\n")
  (out / "optimizers.json").write_text(json.dumps(results))
  plot(results, out / "optimizers.png", f"SwiGLU hidden {cfg.mlp_hidden}, width 128, {device}")
  print(f"wrote {out / 'optimizers.md'} and {out / 'optimizers.png'}")


def plot(results: list[dict], path: Path, title: str):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4))
  for r in results:
    steps, losses = zip(*r["curve"])
    smooth = np.convolve(losses, np.ones(10) / 10, mode="valid")  # a 10-step running mean; raw batch losses are noisy
    ax.plot(steps[9:], smooth, label=f"{r['name']} (val {r['val_loss']:.3f})")
  ax.set(xlabel="step", ylabel="train loss (10-step mean)", title=title)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)


if __name__ == "__main__":
  main()
