"""`train.py --plan` (and `--plan-for GPU`): a pretraining run's memory and cost on a device, planned without training
(aurora_tg/tools/plan.py); and `--batch-size auto`: the largest micro-batch that fits, which train.py then trains with."""
import time
from dataclasses import replace
from pathlib import Path
from aurora_tg import UserError, config
from aurora_tg.backends import memory, targets
from aurora_tg.config import PretrainConfig
from aurora_tg.data.shards import MANIFEST
from aurora_tg.data.tokenizer import Tokenizer, gpt2
from aurora_tg.formats import checkpoint
from aurora_tg.model import GPTConfig
from aurora_tg.tools import plan

PLAN_FLAGS = ("plan", "plan_for")


def pretraining(flags: dict, machine: config.Machine) -> tuple[PretrainConfig, GPTConfig]:
  """The pretraining run the flags describe, as training would configure it (the micro-batch the preset's, for auto).
  For a named GPU, the dtypes are that GPU's (every NVIDIA and Apple target computes in each), not this machine's."""
  if flags.get("resume"): raise UserError("--plan and --batch-size auto plan a new run; --resume takes the run's own micro-batch")
  if config.stage_of(flags) != "pretrain":
    raise UserError("--plan and --batch-size auto plan pretraining; for fine-tuning give --batch-size N (and --grad-accum K)")
  if flags.get("devices"): raise UserError("--plan and --batch-size auto plan one device; drop --devices or give --batch-size N")
  if flags.get("plan_for", "").lower() in targets.TARGETS: machine = replace(machine, supports_dtype=lambda dtype: True)
  given = {k: v for k, v in flags.items() if k not in PLAN_FLAGS and not (k == "batch_size" and v == "auto")}
  cfg = config.new_run("pretrain", given, machine)
  return cfg, cfg.model_config(vocabulary(cfg))


def vocabulary(cfg: PretrainConfig) -> int:
  """The size of the tokenizer the run would train with, without training one (an own BPE has the preset's size)."""
  if cfg.data and (Path(cfg.data) / MANIFEST).exists(): return Tokenizer.load(str(Path(cfg.data) / checkpoint.TOKENIZER_NAME)).n_vocab
  return gpt2().n_vocab if cfg.tokenizer == "gpt2" else config.bpe_vocab_size(cfg.size)


def plan_target(flags: dict) -> targets.Target:
  """--plan-for's target, its compiler set up: before tinygrad compiles anything, since its compiling processes take
  the environment (NVRTC_PATH) once, when they start."""
  target = targets.target(flags["plan_for"])
  if target.renderer.startswith("CUDA") and (missing := targets.use_nvidia_compiler()): raise UserError(missing)
  return target


def where(flags: dict, device: str) -> tuple[str, float | None, str]:
  """The NULL device to plan on, the memory to fit (None: unknown) and what it is, for --plan-for or the device in use."""
  if flags.get("plan_for"):
    target = plan_target(flags)
    null = target.null_device if target.name in targets.TARGETS else plan.null_device(device)
    return null, target.memory, f"{target.name} ({plan.size(target.memory)})"
  try: size = memory.available(device)
  except UserError: size = None
  return plan.null_device(device), size, f"{device}" + (f" ({plan.size(size)} available)" if size else "")


def print_plan(flags: dict, device: str, machine: config.Machine) -> int:
  cfg, model_cfg = pretraining(flags, machine)
  null, size, what = where(flags, device)
  s, tokens = cfg.train, model_cfg.block_size
  print(f"planning pretraining of {cfg.size} ({s.dtype}, {s.optimizer}, {s.batch_size * s.grad_accum} x {tokens} tokens a step) "
        f"for {what}, compiled on {null}...", flush=True)
  start = time.perf_counter()
  p = plan.measure(model_cfg, s, null)
  print(plan.describe(p, tokens, size) + f"\n  (planned in {time.perf_counter() - start:.0f}s)")
  if size is None:
    print("the device's memory is unknown here: --plan-for SIZE (24GB, say) or a GPU's name says what fits")
    return 0
  best = plan.largest_fitting(model_cfg, s, null, size, log=print)
  print(f"largest micro-batch that fits: {best.micro_batch} (--batch-size {best.micro_batch} --grad-accum {best.grad_accum} keeps "
        f"{best.micro_batch * best.grad_accum * tokens:,} tokens a step; peak {plan.size(best.peak)})")
  return 0


def auto_batch(flags: dict, device: str, machine: config.Machine) -> dict:
  """The flags with --batch-size auto replaced by the largest micro-batch that fits the device's memory (or
  --plan-for's), and --grad-accum raised to keep the tokens per step."""
  cfg, model_cfg = pretraining(flags, machine)
  if (Path(cfg.out) / checkpoint.CHECKPOINT_NAME).exists():  # before minutes of planning, as training would say at once
    raise UserError(f"{cfg.out} already holds a checkpoint: pass --resume to continue it, or --out for a new run")
  null, size, what = where(flags, device)
  if size is None: raise UserError(f"--batch-size auto: cannot ask {device} how much memory it has; give --plan-for SIZE (24GB, say) or a GPU's name")
  print(f"--batch-size auto: planning the micro-batch for {what} on {null}...", flush=True)
  best = plan.largest_fitting(model_cfg, cfg.train, null, size, log=print)
  print(f"--batch-size auto: micro-batch {best.micro_batch}, {best.grad_accum} per step (peak {plan.size(best.peak)})")
  return {k: v for k, v in flags.items() if k not in PLAN_FLAGS} | dict(batch_size=best.micro_batch, grad_accum=best.grad_accum)
