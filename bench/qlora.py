"""QLoRA against plain LoRA: the same LoRA fine-tuning of one model over its float base and over the base held in NF4
and int8 (--base-quantize), for the same steps: the base's bytes, the memory a run holds once its step is captured
(weights, adapters, optimizer state, the jitted step's buffers), the step time, and the held-out assistant-token loss,
as trained and once the adapters are merged into the float base (what chat.py loads).

  python bench/qlora.py                           # --init runs/small (python train.py's pretrained model), 300 steps
  python bench/qlora.py --init runs/small-sft --steps 100 --kinds float32,nf4
  python bench/qlora.py --memory gpt2       # a GPT-2-shaped step's memory, compiled on tinygrad's NULL device

Each run goes in a process of its own, one after another, so each memory figure is that run's alone. Results go to
bench/results/qlora.md with the command, machine and date."""
import argparse, json, os, platform, subprocess, sys, time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def one_run(init: str, kind: str, steps: int) -> dict:
  """Train LoRA over the base held as kind; -> the figures of one row."""
  import numpy as np
  from tinygrad import Device, GlobalCounters, Tensor
  from aurora_tg import config, finetune, lora, qlora
  from aurora_tg.cli.train import machine
  from aurora_tg.formats import checkpoint
  from aurora_tg.optim import adamw
  from aurora_tg.trainer import Trainer
  flags = {"init": init, "steps": steps, "out": "/nonexistent/qlora"} | ({} if kind == "float32" else {"base_quantize": kind})
  cfg = config.new_run("lora", flags, machine(Device.DEFAULT), config.preset_of(checkpoint.model_config(init)))
  trainer, _, data = finetune.prepare(cfg)
  float_bytes = sum(int(np.prod(t.shape)) * 4 for k, t in checkpoint.load(checkpoint.locate(init))[0].items())
  trainer.train_step(); trainer.train_step()  # compile and capture
  start = time.perf_counter()
  while trainer.step < steps: trainer.train_step()
  step_ms = (time.perf_counter() - start) / max(1, steps - 2) * 1000
  held = GlobalCounters.mem_used
  trained_loss = trainer.evaluate()
  adapters = {k: v.numpy() for k, v in lora.adapter_state(trainer.model).items()}
  merged, _, _ = checkpoint.load_model(init)  # the float base, with the adapters trained over the quantized one
  params = lora.add_adapters(merged, cfg.lora)
  for name, t in lora.adapter_state(merged).items(): t.assign(Tensor(adapters[name])).realize()
  lora.merge_adapters(merged)
  merged_loss = Trainer(merged, data, cfg.train, adamw(params, cfg.train.lr, 0.0)).evaluate()
  return dict(kind=kind, base_bytes=qlora.base_bytes(trainer.model), float_bytes=float_bytes, held_bytes=held, step_ms=step_ms,
              loss=trained_loss, merged_loss=merged_loss, steps=steps)


def step_memory(preset: str, kind: str) -> dict:
  """The memory one jitted LoRA step holds at a preset's shape (random weights, bfloat16, one sequence of the preset's
  context), compiled on tinygrad's NULL device, which allocates and runs nothing: what a GPU would need."""
  import numpy as np
  from tinygrad import GlobalCounters, Tensor
  from aurora_tg import lora, qlora
  from aurora_tg.config import TrainSettings
  from aurora_tg.model import GPT, GPTConfig, PRESETS
  from aurora_tg.optim import adamw
  from aurora_tg.tools.plan import RandomTokens
  from aurora_tg.trainer import Trainer
  cfg = GPTConfig(**{**PRESETS[preset], "vocab_size": PRESETS[preset].get("vocab_size", 50304)})
  model = GPT(cfg)
  if kind != "float32": qlora.quantize_base(model, kind)
  params = lora.add_adapters(model, lora.LoRAConfig())
  tokens = RandomTokens(cfg.block_size, cfg.vocab_size)
  trainer = Trainer(model, tokens, TrainSettings(batch_size=1, dtype="bfloat16"), adamw(params, 1e-3, 0.0))
  rng = np.random.default_rng(0)
  for _ in range(3):  # the trainer's own steps read values back, which NULL has not computed: its jitted pieces alone
    x, y = tokens.batch(rng, 1)
    trainer._micro_step(Tensor(x), Tensor(y)); trainer._update_step(Tensor([1.0]))
  return dict(kind=kind, base_bytes=qlora.base_bytes(model), held_bytes=GlobalCounters.mem_used)


def memory_table(preset: str, kinds: list[str]) -> str:
  rows = []
  for kind in kinds:
    print(f"a {preset} LoRA step over a {kind} base, compiled for NULL...", flush=True)
    done = subprocess.run([sys.executable, __file__, "--memory", preset, "--one", kind], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "DEV": "NULL", "NULL_ALLOW_COPYOUT": "1"})
    if done.returncode: sys.exit(f"error: the {kind} run failed:\n{done.stderr[-3000:]}")
    rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
  return "\n".join([f"| base ({preset}, NULL) | base MB | memory a step holds, MB |", "|---|---|---|"] +
                   [f"| {r['kind']} | {r['base_bytes'] / 1e6:,.0f} | {r['held_bytes'] / 1e6:,.0f} |" for r in rows])


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--init", default="runs/small", help="the model LoRA fine-tunes (default runs/small)")
  p.add_argument("--steps", type=int, default=300, help="steps of each run (default 300, the lora stage's)")
  p.add_argument("--kinds", default="float32,nf4,int8", help="the bases to compare (default float32,nf4,int8)")
  p.add_argument("--out", default=str(ROOT / "bench" / "results" / "qlora.md"))
  p.add_argument("--memory", metavar="PRESET", help="instead: the memory of one step at a preset's shape (gpt2, gpt2-xl, ...) "
                                                   "for each base, compiled on tinygrad's NULL device")
  p.add_argument("--one", help=argparse.SUPPRESS)  # a single run, in this process: what the parent starts
  args = p.parse_args()
  if args.one:
    print(json.dumps(step_memory(args.memory, args.one) if args.memory else one_run(args.init, args.one, args.steps)))
    return
  if args.memory:
    table = memory_table(args.memory, args.kinds.split(","))
    print(table)
    with open(args.out, "a") as f: f.write(f"\n`{' '.join(['python', 'bench/qlora.py', *sys.argv[1:]])}` ({date.today()}):\n\n{table}\n")
    print(f"appended to {args.out}")
    return
  if not (Path(args.init).exists()): sys.exit(f"error: no model at {args.init}: run `python train.py` first, or pass --init")
  rows = []
  for kind in args.kinds.split(","):
    print(f"LoRA over a {kind} base: {args.steps} steps...", flush=True)
    done = subprocess.run([sys.executable, __file__, "--one", kind, "--init", args.init, "--steps", str(args.steps)],
                          capture_output=True, text=True, cwd=ROOT)
    if done.returncode: sys.exit(f"error: the {kind} run failed:\n{done.stderr[-3000:]}")
    rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
  plain = next((r for r in rows if r["kind"] == "float32"), rows[0])
  lines = ["| base | base MB | base / float32 | memory held MB | step ms | held-out loss | vs LoRA | merged into float base |",
           "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['kind']} | {r['base_bytes'] / 1e6:.2f} | {r['base_bytes'] / r['float_bytes']:.3f}x | {r['held_bytes'] / 1e6:.1f} | "
                 f"{r['step_ms']:.0f} | {r['loss']:.4f} | {(r['loss'] / plain['loss'] - 1) * 100:+.2f}% | {r['merged_loss']:.4f} |")
  table = "\n".join(lines)
  print(table)
  device = os.environ.get("DEV", "default")
  header = (f"# QLoRA against LoRA\n\n- Command: `{' '.join(['python', f'bench/{Path(__file__).name}', *sys.argv[1:]])}`\n- Machine: {os.cpu_count()} "
            f"CPU cores ({platform.machine()}), tinygrad device {device}\n- Date: {date.today()}\n- Model: {args.init}, "
            f"{args.steps} LoRA steps each (the lora stage's defaults otherwise)\n\n")
  Path(args.out).write_text(header + table + "\n")
  print(f"wrote {args.out}")


if __name__ == "__main__": main()
