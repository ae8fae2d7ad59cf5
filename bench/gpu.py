"""One command for a machine with a GPU: everything Aurora wants measured there, written to
bench/results/gpu-<gpu>-<date>.md with the commands that produced each figure. Its parts' time limits add up to
under 8 minutes (not yet run on a GPU: how long each part takes there is the first thing it will tell).

  python bench/gpu.py [--device CUDA] [--size gpt2] [--parts kernels,plan,train,decode]

1. the kernel tests on the GPU (tests/kernels, CI's hypothesis profile);
2. the memory plan of the preset's bfloat16 step (aurora_tg/tools/plan.py, compiled on tinygrad's NULL device for this
   GPU's architecture) against the peak the same step reaches on the GPU, and the largest micro-batch that fits;
3. train-step throughput at that micro-batch, Aurora (AdamW and the Aurora optimizer) against nanoGPT in PyTorch
   (torch.compile, autocast bfloat16, fused AdamW, flash attention), with and without tinygrad's BEAM=2, and beside
   each Aurora step the least time its kernels can take on this GPU (the roofline of bench/gpu_model.py);
4. decoding against Hugging Face transformers (bench/decode.py).
Each part runs in its own process with a time limit; a part that fails or runs out of time is reported as such and
the rest still run."""
import argparse, datetime, os, re, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PARTS = ("kernels", "plan", "train", "decode")


def run(title: str, command: list[str], limit_s: int, env: dict | None = None, tail: int = 40) -> str:
  """A part's section of the report: its command, its exit, its time and the last lines of its output."""
  print(f"== {title}: {' '.join(command)}", flush=True)
  start = time.perf_counter()
  try:
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=limit_s)
    outcome, output = f"exit {done.returncode}", done.stdout + done.stderr
  except subprocess.TimeoutExpired as e:
    outcome, output = f"stopped after its {limit_s}s limit", (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace")
  lines = output.strip().splitlines()[-tail:]
  print("\n".join(lines), flush=True)
  prefix = " ".join(f"{k}={v}" for k, v in (env or {}).items())
  return (f"## {title}\n\n`{(prefix + ' ') if prefix else ''}{' '.join(command)}`: {outcome} in {time.perf_counter() - start:.0f}s\n\n"
          "```\n" + "\n".join(lines) + "\n```\n")


def plan_step(size: str, device: str, dtype: str) -> str:
  """Python for the plan part: planned (NULL device, this GPU's renderer) and measured (the GPU) peaks at the preset's
  micro-batch, then the largest micro-batch that fits the GPU's free memory. Prints `micro-batch N` last."""
  return f"""
from dataclasses import replace
from aurora_tg.backends import devices, memory
from aurora_tg.cli.plan import pretraining
from aurora_tg.cli.train import machine
from aurora_tg.tools import plan
device = devices.select_device({device!r})
free = memory.available(device)  # asked first: the measured step's buffers would count as taken
cfg, model_cfg = pretraining(dict(size={size!r}, dtype={dtype!r}), machine(device))
s, null = cfg.train, plan.null_device(device)
s1 = replace(s, grad_accum=1)
planned, measured = plan.measure(model_cfg, s1, null), plan.measure(model_cfg, s1, device)
print(f"micro-batch {{s.batch_size}}: planned peak {{plan.size(planned.peak)}} on {{null}}, measured {{plan.size(measured.peak)}} on {{device}} "
      f"({{planned.peak / measured.peak:.3f}}x); {{planned.kernels}} kernels, {{planned.flops / 1e12:.2f}} TFLOP, {{plan.size(planned.moved)}} moved a micro-batch")
best = plan.largest_fitting(model_cfg, s, null, free)
print(f"micro-batch {{best.micro_batch}}")
"""


def gpu_name(device: str) -> str:
  try:
    out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout
    if out.strip(): return out.strip().splitlines()[0]
  except (OSError, subprocess.TimeoutExpired): pass
  return device


def target_of(name: str) -> str | None:
  """The GPU's name in aurora_tg/backends/targets.py, from the name nvidia-smi gives ("NVIDIA H100 80GB HBM3": h100,
  "NVIDIA A100-SXM4-40GB": a100-40gb, "NVIDIA GeForce RTX 4090": rtx4090), or None for a GPU it does not list."""
  from aurora_tg.backends import targets
  words = re.findall(r"[a-z0-9]+", name.lower())
  names = set(words) | {a + b for a, b in zip(words, words[1:])}
  return next((t for t in targets.TARGETS if all(part in names for part in t.split("-"))), None)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--device", default="CUDA", help="tinygrad backend of the GPU (default CUDA)")
  p.add_argument("--size", default="gpt2", help="the preset to plan and time (default gpt2, GPT-2 124M)")
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--parts", default=",".join(PARTS), help=f"which parts to run (default all: {','.join(PARTS)})")
  args = p.parse_args()
  parts = args.parts.split(",")
  if unknown := set(parts) - set(PARTS): p.error(f"unknown parts {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
  from aurora_tg.backends import targets
  targets.use_nvidia_compiler()  # tinygrad's CUDA compiles with NVRTC: NVIDIA's wheels where no CUDA toolkit is installed
  py, name, started, sections, batch = sys.executable, gpu_name(args.device), time.perf_counter(), [], "16"
  if "kernels" in parts:
    sections.append(run("kernel tests", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/kernels"], 110,
                        env={"DEV": args.device, "HYPOTHESIS_PROFILE": "ci"}, tail=15))
  if "plan" in parts:
    sections.append(plan_section := run("memory plan", [py, "-c", plan_step(args.size, args.device, args.dtype)], 110))
    batch = next(iter(re.findall(r"micro-batch (\d+)\n", plan_section)[-1:]), batch)
  throughput = [py, "bench/train_throughput.py", "--size", args.size, "--batch-size", batch, "--device", args.device,
                "--dtype", args.dtype, "--optimizers", "adamw,aurora", "--steps", "10"] + (["--gpu", gpu] if (gpu := target_of(name)) else [])
  if "train" in parts:
    sections.append(run("train step", throughput, 80))
    sections.append(run("train step, BEAM=2", throughput, 100, env={"BEAM": "2"}))
  if "decode" in parts:
    sections.append(run("decoding", [py, "bench/decode.py", "--size", args.size, "--device", args.device, "--no-cold", "--rounds", "3"], 60))
  date = datetime.date.today().isoformat()
  out = ROOT / "bench" / "results" / f"gpu-{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}-{date}.md"
  out.write_text(f"# {name}, {date}\n\n`python bench/gpu.py --device {args.device} --size {args.size} --dtype {args.dtype} --parts {args.parts}` "
                 f"({time.perf_counter() - started:.0f}s in all)\n\n" + "\n".join(sections))
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
