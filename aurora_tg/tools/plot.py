"""Loss curves. `aurora plot RUN [RUN ...] [--out FILE]` overlays several runs' train and validation
loss, against steps and against training time, in one PNG (how optimizers are compared); every run also writes its
own loss.png when it ends. Needs matplotlib (pip install matplotlib)."""
from pathlib import Path
from aurora_tg import UserError
from aurora_tg.tools.metrics import read_metrics

PLOT_NAME = "loss.png"


def curves(metrics: list[dict]) -> dict[str, list[tuple[int, float, float]]]:
  """(step, elapsed seconds, loss) for the train log lines and for the evaluations."""
  train = [(m["step"], m["elapsed_s"], m["train_loss"]) for m in metrics if "val_loss" not in m and m.get("train_loss") is not None]
  val = [(m["step"], m["elapsed_s"], m["val_loss"]) for m in metrics if m.get("val_loss") is not None]
  return {"train": train, "val": val}


def plot_runs(run_dirs: list[Path], out: Path, labels: list[str] | None = None) -> Path:
  import matplotlib
  matplotlib.use("Agg")  # files only: no window, no display needed
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
  for i, run in enumerate(run_dirs):
    label, color = (labels or [Path(r).name for r in run_dirs])[i], f"C{i % 10}"
    for split, style in (("train", dict(alpha=0.6, linewidth=1)), ("val", dict(linestyle="--", marker="o", markersize=3))):
      points = curves(read_metrics(run))[split]
      if not points: continue
      steps, seconds, losses = zip(*points)
      for ax, x in zip(axes, (steps, [s / 60 for s in seconds])): ax.plot(x, losses, color=color, label=f"{label} {split}", **style)
  for ax, xlabel in zip(axes, ("step", "training time (minutes)")):
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("loss")
  axes[1].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out, dpi=110)
  plt.close(fig)
  return out


def save_run_plot(run_dir: Path) -> Path | None:
  """The run's own loss.png, when matplotlib is installed (it is optional)."""
  try: import matplotlib  # noqa: F401
  except ImportError: return None
  return plot_runs([run_dir], Path(run_dir) / PLOT_NAME)
