"""What `python train.py` does: assemble tokenizer, data, model and optimizer from the arguments, train, report."""
import argparse, time
from dataclasses import replace
from pathlib import Path
from tinygrad import Device, Tensor
from aurora_tg import UserError, checkpoint, devices, finetune, lora, optim
from aurora_tg.data import read_texts, tokenize_cached, TokenData
from aurora_tg.generate import Generator, Sampling
from aurora_tg.model import GPT, GPTConfig, PRESETS, num_params
from aurora_tg.tokenizer import Tokenizer, gpt2, train_bpe
from aurora_tg.trainer import Trainer, TrainSettings, build_optimizer, NonFinite

# Per-preset training defaults. "small" is the default run: a few minutes on a 2-core CPU.
TRAINING_DEFAULTS = {
  "tiny":   dict(steps=200, batch_size=16, lr=3e-3, eval_every=50),
  "small":  dict(steps=500, batch_size=8, lr=3e-3, eval_every=100),
  "medium": dict(steps=2000, batch_size=32, lr=1.5e-3, eval_every=200),
  # nanoGPT's GPT-2 run: 16 x 32 sequences of 1024 = 0.5M tokens a step, bfloat16 compute where the backend has it
  "gpt2":   dict(steps=5000, batch_size=16, grad_accum=32, lr=6e-4, eval_every=250, warmup=300, compute_dtype="bfloat16"),
}
ARCH_FLAGS = ("norm", "pos", "mlp")
RECORDED_ARGS = ("size", "data", "tokenizer", "optimizer", "init", "teacher", "freeze", *ARCH_FLAGS)
DEFAULT_SIZE = "small"


def model_config(args, vocab_size: int) -> GPTConfig:
  if args.size not in PRESETS: raise UserError(f"unknown size {args.size!r}; presets: {', '.join(PRESETS)}")
  shape = {k: v for k, v in PRESETS[args.size].items() if k != "vocab_size"}
  arch = {k: getattr(args, k) for k in ARCH_FLAGS if getattr(args, k) is not None}
  try: return GPTConfig(**shape, **arch, vocab_size=vocab_size)
  except ValueError as e: raise UserError(f"impossible model: {e}") from None


def train_settings(args, stage: str = "pretrain") -> TrainSettings:
  """The preset's defaults, then the optimizer's (pretraining) or the stage's (fine-tuning, always AdamW), then flags."""
  preset = TRAINING_DEFAULTS.get(args.size, TRAINING_DEFAULTS["gpt2"])
  name = (args.optimizer or "adamw") if stage == "pretrain" else "adamw"
  if name not in optim.OPTIMIZERS: raise UserError(f"unknown optimizer {name!r}; choose from {', '.join(optim.OPTIMIZERS)}")
  defaults = {**preset, "lr": optim.DEFAULT_LR.get(name) or preset["lr"]} if stage == "pretrain" else {**preset, **finetune.STAGE_DEFAULTS[stage]}
  given = {k: getattr(args, k) for k in ("steps", "batch_size", "grad_accum", "lr", "eval_every") if getattr(args, k) is not None}
  s = replace(TrainSettings(), **{**defaults, **given}, optimizer=name, adam_lr=preset["lr"], seed=args.seed,
              devices=devices.parse_devices(args.devices))
  for name in ("steps", "batch_size", "grad_accum", "eval_every"):
    if getattr(s, name) < 1: raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(s, name)}")
  if s.lr <= 0: raise UserError(f"--lr must be positive, got {s.lr}")
  if args.dtype not in (None, "float32", "bfloat16", "float16"): raise UserError(f"--dtype must be float32, bfloat16 or float16, got {args.dtype!r}")
  if args.dtype: s = replace(s, compute_dtype=args.dtype)
  if not devices.supports_dtype(Device.DEFAULT, s.compute_dtype):
    if args.dtype: raise UserError(f"{Device.DEFAULT} cannot compute in {args.dtype} on this machine; use --dtype float32")
    s = replace(s, compute_dtype="float32")  # the preset's mixed precision needs a backend that has it
  if s.devices and s.batch_size % len(s.devices):
    raise UserError(f"--batch-size {s.batch_size} does not split evenly across {len(s.devices)} devices ({', '.join(s.devices)})")
  return replace(s, warmup=min(s.warmup, max(1, s.steps // 10)))


def make_tokenizer(args, texts: list[str]) -> Tokenizer:
  kind = args.tokenizer or ("bpe" if "vocab_size" in PRESETS.get(args.size, {}) else "gpt2")
  if kind == "gpt2": return gpt2()
  vocab = PRESETS.get(args.size, {}).get("vocab_size", 8192)
  print(f"training a {vocab}-token BPE on the data...")
  return train_bpe(texts, vocab)


def check_resume_matches(args, record: dict):
  """Flags given on the command line must agree with the run being resumed."""
  saved = record["args"]
  for name in RECORDED_ARGS:
    value = getattr(args, name)
    if value is not None and value != saved.get(name):
      raise UserError(f"--{name} {value} does not match the run being resumed ({saved.get(name)}); drop it or use a new --out")


def train(args) -> int:
  """No --stage: pretrain, then (on the default data) chat fine-tune; with --init, only chat fine-tune that model.
  A --stage runs that one stage."""
  device = devices.select_device(args.device)
  if args.stage is not None and args.stage not in finetune.STAGES:
    raise UserError(f"unknown stage {args.stage!r}; choose from {', '.join(finetune.STAGES)}")
  if args.stage not in (None, "pretrain"): return run_stage(args.stage, args, device)
  if args.stage is None and args.init: return run_stage("sft", args, device)
  if args.init: raise UserError("pretraining starts from scratch; --init names the model a fine-tuning stage starts from")
  code = run_stage("pretrain", args, device)
  if args.stage == "pretrain" or args.data is not None or code != 0: return code
  print("\nchat fine-tuning the pretrained model on conversations built from Python's documentation")
  sft_args = argparse.Namespace(**{**vars(args), "init": args.out or f"runs/{args.size}", "out": None, "steps": None,
                                   "lr": None, "eval_every": None, "optimizer": None})
  return run_stage("sft", sft_args, device)


def prepare_pretrain(args, settings: TrainSettings, run_dir: Path, resumed):
  texts = read_texts(args.data)
  tokenizer = Tokenizer.load(str(run_dir / checkpoint.TOKENIZER_NAME)) if resumed else make_tokenizer(args, texts)
  cfg = model_config(args, tokenizer.n_vocab)
  if resumed and cfg.to_dict() != resumed[2]["config"]:
    raise UserError(f"the model config differs from the checkpoint's ({resumed[2]['config']})")
  data = TokenData(tokenize_cached(texts, tokenizer), cfg.block_size)
  Tensor.manual_seed(args.seed)
  model = GPT(cfg)
  record = {"config": cfg.to_dict(), "tokenizer": tokenizer.fingerprint(), "stage": "pretrain"}
  return Trainer(model, data, settings, build_optimizer(model, settings)), tokenizer, record, data


def run_stage(stage: str, args, device: str) -> int:
  if stage == "pretrain": default_out = f"runs/{args.size or DEFAULT_SIZE}"
  else: default_out = f"{checkpoint.run_folder(args.init) if args.init else 'runs/' + (args.size or 'tiny')}-{stage}"
  run_dir = Path(args.out or default_out)
  ckpt_path = run_dir / checkpoint.CHECKPOINT_NAME
  resumed = None
  if args.resume:
    if not ckpt_path.exists(): raise UserError(f"nothing to resume: {ckpt_path} does not exist")
    resumed = checkpoint.load(ckpt_path)
    check_resume_matches(args, resumed[2])
    for name in RECORDED_ARGS: setattr(args, name, resumed[2]["args"].get(name))
  elif ckpt_path.exists():
    raise UserError(f"{run_dir} already holds a checkpoint: pass --resume to continue it, or --out for a new run")
  else: args.size = args.size or (DEFAULT_SIZE if stage == "pretrain" else "tiny")

  settings = train_settings(args, stage)
  if stage == "pretrain": trainer, tokenizer, record, data = prepare_pretrain(args, settings, run_dir, resumed)
  else: trainer, tokenizer, record, data = finetune.prepare(stage, args, settings)
  if resumed:
    checkpoint.copy_into(trainer.saved_state(), resumed[0], "model weights")
    trainer.restore(resumed[1], resumed[2])
  run_dir.mkdir(parents=True, exist_ok=True)
  tokenizer.save(str(run_dir / checkpoint.TOKENIZER_NAME))
  record["args"] = {k: getattr(args, k) for k in RECORDED_ARGS}

  model, s = trainer.model, trainer.s
  where = f"devices {','.join(s.devices)}" if s.devices else f"device {device}"
  print(f"{stage} | {where}{'' if s.compute_dtype == 'float32' else ', ' + s.compute_dtype + ' compute'} | model: {num_params(model) / 1e6:.2f}M parameters ({sum(p.numel() for p in trainer.params) / 1e6:.2f}M "
        f"trained), context {model.cfg.block_size}, vocabulary {model.cfg.vocab_size} | data: {len(data.train):,} train / "
        f"{len(data.val):,} val {'tokens' if isinstance(data, TokenData) else 'conversations'} | {s.steps} steps of "
        f"{s.batch_size * s.grad_accum} x {model.cfg.block_size} tokens, {s.optimizer} at lr {s.lr:g}"
        + (f" | resuming at step {trainer.step}" if resumed else ""))
  start = time.perf_counter()
  try: outcome = trainer.run(run_dir, record)
  except NonFinite as e:
    print(f"error: {e}; stopped, the last good checkpoint is kept in {run_dir}")
    return 1
  trainer.for_inference()
  if outcome == "interrupted":
    print(f"interrupted at step {trainer.step}: saved {ckpt_path}; continue with --resume --out {run_dir}")
    return 130
  print(f"trained in {time.perf_counter() - start:.0f}s | checkpoint: {ckpt_path}")
  if stage in ("sft", "lora"):
    print(f"held-out assistant-token loss: {trainer.last_val_loss:.4f}")
    if stage == "lora": lora.merge_adapters(model)
    for question, answer in finetune.sample_answers(model, tokenizer, data): print(f"  Q: {question}\n  A: {answer}")
    print(f"talk to it: python chat.py --checkpoint {run_dir}")
  else: print_sample(model, tokenizer, args.seed)
  return 0


def print_sample(model: GPT, tokenizer: Tokenizer, seed: int):
  prompt = "The"
  sampling = Sampling(temperature=0.8, top_k=40, max_tokens=model.cfg.block_size // 2, seed=seed)
  ids = Generator(model).generate(tokenizer.encode(prompt), sampling, stop={tokenizer.eot})
  print(f"sample: {prompt}{tokenizer.decode(ids)}")
