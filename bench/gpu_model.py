"""The roofline of a pretraining step on a GPU, without one (aurora_tg/tools/roofline.py), written to
bench/results/gpu_model.md:

  python bench/gpu_model.py                                   # GPT-2 124M, bfloat16, AdamW, 16 x 1,024 tokens, H100
  python bench/gpu_model.py --optimizer aurora --gpu rtx4090 --batch-size 8

The step (one micro-batch and the update, as one optimizer step of --batch-size sequences) is compiled for the GPU on
tinygrad's NULL device. Printed: kernels, FLOPs against the model's own (6N a token plus attention), bytes moved (a
step, a token), peak memory (the memory plan's), the least time the step can take on the GPU, and so at most which
tokens/s and MFU, and the kernels with the largest bounds. GPT-2 124M takes a minute or two here."""
import argparse, datetime, platform, sys, time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from aurora_tg.backends import targets  # noqa: E402
from aurora_tg.cli.plan import pretraining  # noqa: E402
from aurora_tg.cli.train import machine  # noqa: E402
from aurora_tg.tools import plan, roofline  # noqa: E402


def report(r: roofline.Roofline, peak: int, top: int) -> str:
  step_ms, model = r.seconds * 1e3, r.model_flops
  lines = ["| figure | value |", "|---|---|",
           f"| kernels a step | {len(r.kernels):,} |",
           f"| FLOPs a step | {r.flops / 1e12:,.2f} TFLOP, {r.flops / model:.2f}x the model's own ({model / 1e12:,.2f} TFLOP) |",
           f"| bytes moved a step | {r.moved / 1e9:,.1f} GB, {r.moved / r.tokens / 1e6:,.2f} MB a token |",
           f"| peak memory | {plan.size(peak)} |",
           f"| least time a step | {step_ms:,.2f} ms |" if step_ms >= 1 else f"| least time a step | {step_ms * 1e3:,.1f} µs |",
           f"| tokens/s at most | {r.tokens_per_s:,.0f} |",
           f"| MFU at most | {r.mfu:.1%} |",
           "", f"The {top} kernels with the largest bound (a name's launches together):", "",
           "| kernel | launches | GFLOP each | GB each | tensor cores (input dtype) | bound, all launches | share of the step |",
           "|---|---|---|---|---|---|---|"]
  for cost, launches, seconds in r.largest(top):
    lines.append(f"| `{cost.name}` | {launches} | {cost.flops / 1e9:,.2f} | {cost.moved / 1e9:,.3f} | "
                 f"{cost.matrix_dtype or 'no'} | {seconds * 1e6:,.1f} µs | {seconds / r.seconds:.1%} |")
  return "\n".join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--size", default="gpt2")
  p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
  p.add_argument("--optimizer", default="adamw")
  p.add_argument("--batch-size", type=int, default=16, help="sequences a step (one micro-batch)")
  p.add_argument("--gpu", default="h100", choices=[n for n, t in targets.TARGETS.items() if t.renderer.startswith("CUDA")])
  p.add_argument("--top", type=int, default=10)
  p.add_argument("--no-save", action="store_true", help="print only")
  args = p.parse_args()
  if missing := targets.use_nvidia_compiler(): sys.exit(f"error: {missing}")  # before anything compiles
  target = targets.TARGETS[args.gpu]
  cfg, model_cfg = pretraining(dict(size=args.size, dtype=args.dtype, optimizer=args.optimizer, plan_for=args.gpu), machine("CPU"))
  s = replace(cfg.train, batch_size=args.batch_size, grad_accum=1)
  print(f"compiling and planning {args.size}'s step ({args.dtype}, {args.optimizer}, {args.batch_size} x {model_cfg.block_size}) "
        f"for {args.gpu} on {target.null_device}...", flush=True)
  start = time.perf_counter()
  r = roofline.train_step(model_cfg, s, target)
  print(f"done in {time.perf_counter() - start:.0f}s", flush=True)
  peak = plan.measure(model_cfg, s, target.null_device).peak  # the plan the roofline was read from
  command = " ".join(["python bench/gpu_model.py", *sys.argv[1:]])
  section = (f"## {args.size}, {args.dtype}, {args.optimizer}, {args.batch_size} x {model_cfg.block_size} tokens a step, on "
             f"{args.gpu} (`{command}`, {datetime.date.today().isoformat()})\n\n{report(r, peak, args.top)}\n")
  print(section)
  if not args.no_save:
    out = ROOT / "bench" / "results" / "gpu_model.md"
    previous = out.read_text() if out.exists() else (
      "# The roofline of a training step, per GPU\n\nCompiled on tinygrad's NULL device (nothing runs): each kernel's bound "
      "is max(FLOPs / peak, bytes / bandwidth) with the vendor's peaks (aurora_tg/backends/targets.py). Compiled on "
      f"{platform.machine()} Linux, the 2-core machine of docs/testing.md.\n")
    out.write_text(previous.rstrip() + "\n\n" + section)
    print(f"appended to {out}")


if __name__ == "__main__":
  from aurora_tg import UserError
  try: main()
  except UserError as e: sys.exit(f"error: {e}")
