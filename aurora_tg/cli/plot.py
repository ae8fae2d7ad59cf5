"""`aurora plot RUN [RUN ...] [--out FILE]`: overlay several runs' loss curves in one PNG (how optimizers are compared)."""
import argparse
from pathlib import Path
from aurora_tg import UserError
from aurora_tg.cli.errors import run
from aurora_tg.tools.plot import plot_runs


def parser(prog: str = "aurora plot") -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=prog, description="Overlay the loss curves of several runs in one PNG.")
  p.add_argument("runs", nargs="+", help="run folders (each holds a metrics.jsonl)")
  p.add_argument("--out", default="loss.png", help="the PNG to write (default: loss.png)")
  p.add_argument("--labels", help="comma-separated legend names, one per run (default: the folders' names)")
  return p


def plot_command(args) -> int:
  labels = args.labels.split(",") if args.labels else None
  if labels and len(labels) != len(args.runs): raise UserError(f"--labels names {len(labels)} runs, {len(args.runs)} given")
  try: import matplotlib  # noqa: F401
  except ImportError: raise UserError("plotting needs matplotlib: pip install matplotlib") from None
  print(f"wrote {plot_runs([Path(r) for r in args.runs], Path(args.out), labels)}")
  return 0


def main(argv=None, prog: str = "aurora plot") -> int:
  args = parser(prog).parse_args(argv)
  return run(lambda: plot_command(args))
