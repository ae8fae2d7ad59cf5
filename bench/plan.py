"""The memory plan's figures (aurora_tg/tools/plan.py, `train.py --plan`), written to bench/results/plan.md:

  python bench/plan.py --check    # planned peak (NULL device) against the peak a real step reaches on the CPU backend
  python bench/plan.py --table    # README's table: which micro-batch of each GPT-2 preset fits which GPU

--check plans and runs the tiny and small presets' pretraining step in float32 and float16 at the presets' own
micro-batches. --table plans the presets' default pretraining (bfloat16, the Aurora optimizer, 0.5M tokens a step)
on tinygrad's NULL device compiling for an H100 (sm_90); NVIDIA's other architectures allocate the same buffers, so
one plan serves every NVIDIA GPU's memory."""
import argparse, datetime, sys, time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from aurora_tg import UserError  # noqa: E402
from aurora_tg.backends import targets  # noqa: E402
from aurora_tg.cli.plan import pretraining  # noqa: E402
from aurora_tg.cli.train import machine  # noqa: E402
from aurora_tg.tools import plan  # noqa: E402

GPUS = ("rtx4090", "a100-40gb", "h100")


def check() -> str:
  rows = []
  for size in ("tiny", "small"):
    for dtype in ("float32", "float16"):
      cfg, model_cfg = pretraining(dict(size=size, dtype=dtype), machine("CPU"))
      s = replace(cfg.train, grad_accum=1)
      print(f"{size}, {dtype}: planning on {plan.null_device('CPU')}, then measuring on CPU...", flush=True)
      planned, measured = plan.measure(model_cfg, s, plan.null_device("CPU")), plan.measure(model_cfg, s, "CPU")
      rows.append(f"| {size} | {dtype} | {s.batch_size} | {plan.size(planned.peak)} | {plan.size(measured.peak)} | "
                  f"{planned.peak / measured.peak:.4f} |")
      print(rows[-1], flush=True)
  return ("| preset | dtype | micro-batch | planned peak (NULL) | measured peak (CPU) | planned / measured |\n"
          "|---|---|---|---|---|---|\n" + "\n".join(rows))


def table(presets: list[str], gpus: list[str]) -> str:
  null, rows = targets.TARGETS["h100"].null_device, []
  for size in presets:
    cfg, model_cfg = pretraining(dict(size=size, plan_for="h100"), machine("CPU"))  # an H100's dtypes, not this CPU's
    s = cfg.train
    cells = []
    for name in gpus:
      target = targets.TARGETS[name]
      print(f"{size} on {name} ({plan.size(target.memory)}), planned on {null}:", flush=True)
      start = time.perf_counter()
      try:
        best = plan.largest_fitting(model_cfg, s, null, target.memory)
        cells.append(f"{best.micro_batch} ({plan.size(best.peak)})")
      except UserError as e: cells.append(f"no: {e}")
      print(f"  -> {cells[-1]} in {time.perf_counter() - start:.0f}s", flush=True)
    rows.append(f"| {size} ({s.dtype}, {s.optimizer}) | " + " | ".join(cells) + " |")
  head = " | ".join(f"{n} ({targets.TARGETS[n].memory / targets.GIB:g} GiB)" for n in gpus)
  return (f"| preset | {head} |\n|---|" + "---|" * len(gpus) + "\n" + "\n".join(rows) +
          f"\n\nEach cell: the largest micro-batch (sequences of 1,024 tokens) whose step's peak fits {plan.HEADROOM:.0%} of the "
          "card's memory, and that peak; `--grad-accum` makes up the 512 sequences a step.")


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--check", action="store_true", help="planned against measured peak on the CPU backend")
  p.add_argument("--table", action="store_true", help="which micro-batch of each preset fits which GPU")
  p.add_argument("--presets", default="gpt2,gpt2-medium,gpt2-large,gpt2-xl")
  p.add_argument("--gpus", default=",".join(GPUS))
  args = p.parse_args()
  if not (args.check or args.table): p.error("give --check, --table or both")
  if args.table and (missing := targets.use_nvidia_compiler()): sys.exit(f"error: {missing}")  # before anything compiles
  date, out = datetime.date.today().isoformat(), ROOT / "bench" / "results" / "plan.md"
  sections = []
  if args.check: sections.append(f"## Planned against measured (`python bench/plan.py --check`, {date})\n\n{check()}\n")
  if args.table:
    sections.append(f"## Which micro-batch fits (`python bench/plan.py --table --presets {args.presets} --gpus {args.gpus}`, "
                    f"{date})\n\n{table(args.presets.split(','), args.gpus.split(','))}\n")
  text = "\n".join(sections)
  print(text)
  previous = out.read_text() if out.exists() else "# The memory plan's figures\n\nMachine: the 2-core CPU of docs/testing.md; planning compiles on it.\n"
  out.write_text(previous.rstrip() + "\n\n" + text)
  print(f"appended to {out}")


if __name__ == "__main__":
  main()
