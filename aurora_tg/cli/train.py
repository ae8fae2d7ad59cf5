"""`aurora train` (and `python train.py`): plan the stages from the flags, then for each build tokenizer, data, model and
optimizer, train, and report."""
import argparse, functools, sys, time
from pathlib import Path
from tinygrad import Tensor
from aurora_tg import UserError, config, finetune, lora
from aurora_tg.cli.errors import run
from aurora_tg.cli import plan as memory_plan
from aurora_tg.formats import checkpoint
from aurora_tg.backends import devices, targets
from aurora_tg.tools import plot
from aurora_tg.tools import evaluation
from aurora_tg.formats.checkpoint import RunRecord
from aurora_tg.config import PretrainConfig, StageConfig
from aurora_tg.formats.files import RunLock, remove_stale_temporaries
from aurora_tg.data.shards import MANIFEST, TokenData
from aurora_tg.data.prepare import make_tokenizer, token_data
from aurora_tg.data.sources import open_source
from aurora_tg.inference.generate import Generator
from aurora_tg.inference.conversation import stop_tokens, stream_text
from aurora_tg.inference.sampling import Sampling
from aurora_tg.tools.metrics import RunLog, new_wandb_id, require_wandb
from aurora_tg.model import GPT, IGNORE_INDEX, num_params
from aurora_tg.data.preference_data import PreferenceData
from aurora_tg.data.tokenizer import Tokenizer
from aurora_tg.trainer import Trainer, NonFinite, build_optimizer


def plan(flags: dict, machine: config.Machine) -> list[tuple[StageConfig, bool]]:
  """The stages to run, each with whether it resumes. Without --stage (and --data), pretraining is followed by chat
  fine-tuning (the pretraining config records it); with --init alone, that model is chat fine-tuned. --resume takes
  each stage's config from its record."""
  stage = config.stage_of(flags)
  # checked before any file is read, so a misplaced flag is reported as such; a resumed run's stage is in its record
  if not flags.get("resume"): config.check_flags(stage, flags)
  if flags.get("resume"): first = resumed_config(Path(flags.get("out") or config.default_out(stage, flags)), flags, machine)
  else:
    init_preset = config.preset_of(checkpoint.model_config(flags["init"])) if flags.get("init") and stage != "pretrain" else None
    first = config.new_run(stage, flags, machine, init_preset, chat_after=flags.get("stage") is None and not flags.get("data"))
  stages = [(first, bool(flags.get("resume")))]
  if isinstance(first, PretrainConfig) and first.chat_after:
    sft = config.chat_finetune_after(first, machine)
    if flags.get("resume") and (Path(sft.out) / checkpoint.CHECKPOINT_NAME).exists():
      stages.append((resumed_config(Path(sft.out), {}, machine), True))
    else: stages.append((sft, False))
  return stages


def machine(device: str) -> config.Machine:
  """What the config asks of this machine, answered by tinygrad (device: the selected backend)."""
  return config.Machine(device, functools.partial(devices.supports_dtype, device), devices.parse_devices)


def resumed_config(out: Path, flags: dict, machine: config.Machine) -> StageConfig:
  path = out / checkpoint.CHECKPOINT_NAME
  if not path.exists(): raise UserError(f"nothing to resume: {path} does not exist")
  saved = checkpoint.read_record(path)
  if saved.run is None: raise UserError(f"{out} was written by an older Aurora that did not record its settings; it cannot be resumed")
  if flags.get("stage") not in (None, saved.stage): raise UserError(f"--stage {flags['stage']} does not match the run being resumed ({saved.stage})")
  if flags.get("steps", saved.step) < saved.step: raise UserError(f"--steps {flags['steps']} is fewer than the {saved.step} the run has done")
  return config.resumed(saved.run, flags, machine)


def train(flags: dict) -> int:
  """Run the planned stages in order; stop at the first that does not finish."""
  if flags.get("plan_for"): memory_plan.plan_target(flags)
  device = devices.select_device(flags.get("device"))
  if flags.get("plan") or flags.get("plan_for") and flags.get("batch_size") != "auto": return memory_plan.print_plan(flags, device, machine(device))
  if flags.get("batch_size") == "auto": flags = memory_plan.auto_batch(flags, device, machine(device))
  devices.replay_jitted_steps()
  stages = plan(flags, machine(device))
  if any(cfg.wandb for cfg, _ in stages): require_wandb()
  for i, (cfg, resume) in enumerate(stages):
    if i: print("\nchat fine-tuning the pretrained model on conversations built from Python's documentation")
    code = run_stage(cfg, resume, device, flags.get("workers", 0))
    if code: return code
  return 0


def pretraining_tokenizer(cfg: PretrainConfig) -> Tokenizer:
  """A prepared folder's own tokenizer, GPT-2's, or a BPE trained on the start of the data."""
  if cfg.data and (Path(cfg.data) / MANIFEST).exists(): return Tokenizer.load(str(Path(cfg.data) / checkpoint.TOKENIZER_NAME))
  return make_tokenizer(cfg.tokenizer, open_source(cfg.data, cfg.text_field), config.bpe_vocab_size(cfg.size), cfg.bpe_sample_mb)


def prepare_pretrain(cfg: PretrainConfig, run_dir: Path, resumed: RunRecord | None, workers: int):
  tokenizer = Tokenizer.load(str(run_dir / checkpoint.TOKENIZER_NAME)) if resumed else pretraining_tokenizer(cfg)
  model_cfg = cfg.model_config(tokenizer.n_vocab)
  if resumed and model_cfg != resumed.model: raise UserError(f"the model config differs from the checkpoint's ({resumed.model})")
  data = token_data(cfg, tokenizer, model_cfg.block_size, workers)
  Tensor.manual_seed(cfg.train.seed)
  model = GPT(model_cfg)
  return Trainer(model, data, cfg.train, build_optimizer(model, cfg.train), token_bytes=tokenizer.token_bytes()), tokenizer, data


def run_stage(cfg: StageConfig, resume: bool, device: str, workers: int = 0) -> int:
  """One stage in its run folder, which it holds locked from start to end. workers: the processes that tokenize
  data not yet prepared (0: one per core)."""
  with RunLock(Path(cfg.out)):
    remove_stale_temporaries(Path(cfg.out))
    return train_stage(cfg, resume, device, workers)


def train_stage(cfg: StageConfig, resume: bool, device: str, workers: int = 0) -> int:
  run_dir = Path(cfg.out)
  ckpt_path = run_dir / checkpoint.CHECKPOINT_NAME
  if not resume and ckpt_path.exists():
    raise UserError(f"{run_dir} already holds a checkpoint: pass --resume to continue it, or --out for a new run")
  weights, optim_state, saved = checkpoint.load(ckpt_path) if resume else (None, None, None)
  if cfg.stage == "pretrain": trainer, tokenizer, data = prepare_pretrain(cfg, run_dir, saved, workers)
  else: trainer, tokenizer, data = finetune.prepare(cfg, workers)
  record = RunRecord(cfg.stage, trainer.model.cfg, tokenizer.fingerprint(), cfg,
                     wandb_id=(saved.wandb_id if saved else None) or (new_wandb_id() if cfg.wandb else None))
  if saved:
    checkpoint.copy_into(trainer.saved_state(), weights, "model weights")
    trainer.restore(optim_state, saved)
  run_dir.mkdir(parents=True, exist_ok=True)
  tokenizer.save(str(run_dir / checkpoint.TOKENIZER_NAME))
  if cfg.eval_hellaswag_every:
    stage_eval, hellaswag = trainer.extra_eval, hellaswag_during_training(trainer.model, tokenizer, cfg.eval_hellaswag_every)
    trainer.extra_eval = lambda step: stage_eval(step) | hellaswag(step)
  print_header(cfg, trainer, data, device, saved is not None)
  log = RunLog(run_dir, trainer.step, wandb_project=cfg.wandb, wandb_id=record.wandb_id, wandb_config=cfg.to_dict(run_dir))
  start = time.perf_counter()
  try: outcome = trainer.run(run_dir, record, log)
  except NonFinite as e:  # an error like any other: one line on stderr, naming what was kept
    kept = f"the last good checkpoint (step {checkpoint.read_record(ckpt_path).step}) is kept in {run_dir}" if ckpt_path.exists() \
           else "no checkpoint had been written yet"
    print(f"error: {e}; stopped, {kept}", file=sys.stderr)
    outcome = "failed"
  finally: log.close()
  plot.save_run_plot(run_dir)
  if outcome == "failed": return 1
  trainer.for_inference()
  if outcome in ("interrupted", "terminated"):
    print(f"{outcome} at step {trainer.step}: saved {ckpt_path}; continue with --resume --out {run_dir}")
    return 130 if outcome == "interrupted" else 143  # the shell's codes for SIGINT and SIGTERM
  print(f"trained in {time.perf_counter() - start:.0f}s | checkpoint: {ckpt_path}")
  if cfg.stage in config.CHAT_STAGES:
    # a run resumed when already finished trains no step, so it has not evaluated yet
    if isinstance(data, PreferenceData): print(preference_summary(trainer.extra_eval(trainer.step)))
    else: print(f"held-out assistant-token loss: {trainer.last_val_loss or trainer.evaluate():.4f}")
    lora.merge_adapters(trainer.model)
    rows = [chosen for chosen, _ in data.val] if isinstance(data, PreferenceData) else data.val
    for question, answer in sample_answers(trainer.model, tokenizer, rows): print(f"  Q: {question}\n  A: {answer}")
    print(f"talk to it: python chat.py --checkpoint {run_dir}")
  else: print_sample(trainer.model, tokenizer, cfg.train.seed)
  return 0


HELLASWAG_DURING_TRAINING = 1000  # items: the first thousand, a fixed subset, so the figure is comparable across steps


def hellaswag_during_training(model: GPT, tokenizer: Tokenizer, every: int):
  """extra_eval for the trainer: HellaSwag accuracy on a fixed subset, at the evaluations whose step is a multiple
  of every (and the first)."""
  items = evaluation.read_hellaswag(evaluation.hellaswag_path(None), HELLASWAG_DURING_TRAINING)
  def run(step: int) -> dict[str, float]:
    if step % every: return {}
    result = evaluation.hellaswag(model, tokenizer, items, log=lambda line: None)
    return {"hellaswag_acc": result["acc"], "hellaswag_acc_norm": result["acc_norm"]}
  return run


def print_header(cfg: StageConfig, trainer: Trainer, data, device: str, resumed: bool):
  model, s = trainer.model, trainer.s
  where = f"devices {','.join(s.devices)}" if s.devices else f"device {device}"
  print(f"{cfg.stage} | {where}{'' if s.dtype == 'float32' else ', ' + s.dtype + ' compute'} | model: "
        f"{num_params(model) / 1e6:.2f}M parameters ({sum(p.numel() for p in trainer.params) / 1e6:.2f}M trained), context "
        f"{model.cfg.block_size}, vocabulary {model.cfg.vocab_size} | data: {size(data)} | {s.steps} steps of {s.batch_size * s.grad_accum} x "
        f"{model.cfg.block_size} tokens, {s.optimizer} at lr {s.lr:g}" + (f" | resuming at step {trainer.step}" if resumed else ""))


def size(data) -> str:
  if isinstance(data, TokenData): return f"{data.train_tokens:,} train / {data.val_tokens:,} val tokens" + (", sequential" if data.order == "sequential" else "")
  return f"{len(data.train):,} train / {len(data.val):,} val {'pairs' if isinstance(data, PreferenceData) else 'conversations'}"


def print_sample(model: GPT, tokenizer: Tokenizer, seed: int):
  prompt = "The"
  sampling = Sampling(temperature=0.8, top_k=40, max_tokens=model.cfg.block_size // 2, seed=seed)
  ids = Generator(model).generate(tokenizer.encode(prompt), sampling, stop={tokenizer.eot})
  print(f"sample: {prompt}{tokenizer.decode(ids)}")


def preference_summary(figures: dict[str, float]) -> str:
  return (f"held-out pairs: reward accuracy {figures['reward_acc']:.1%} | reward margin {figures['reward_margin']:.3f} | "
          f"DPO loss {figures['dpo_loss']:.4f} | chosen answers' token loss {figures['chosen_loss']:.4f}")


def sample_answers(model: GPT, tokenizer: Tokenizer, rows: list[tuple[list[int], list[int]]], n: int = 3) -> list[tuple[str, str]]:
  """Greedy answers to n distinct questions of held-out rows ((ids, targets), as ChatData holds them), spread over
  them (the held-out set repeats some, such as the oversampled small talk), stopping where chat.py stops."""
  prompts, user = {}, tokenizer.special("<|user|>")
  for ids, targets in rows:
    prompt_len = next(i for i, t in enumerate(targets) if t != IGNORE_INDEX)
    asked = max(i for i, t in enumerate(ids[:prompt_len]) if t == user) + 1
    question = tokenizer.decode([t for t in ids[asked:prompt_len] if t < tokenizer.eot]).strip()  # without role tokens
    prompts.setdefault(question.lower(), (question, ids[:prompt_len]))
  distinct = list(prompts.values())
  picked = [distinct[i * len(distinct) // n] for i in range(min(n, len(distinct)))]
  generator, stop = Generator(model), stop_tokens(tokenizer)
  return [(question, "".join(stream_text(generator, tokenizer, prompt, Sampling(temperature=0, max_tokens=48), stop)).strip())
          for question, prompt in picked]


def given_flags(argv=None, prog: str = "aurora train") -> dict:
  """The flags the user gave, and only those (every default comes from aurora_tg/config.py's table): the run flags,
  then one flag per config field that has one (config.option), with its help, type and choices."""
  p = argparse.ArgumentParser(prog=prog, description="Train an Aurora GPT model. Without --stage (and --data): pretrain, then "
                                                     "chat fine-tune on conversations built from Python's documentation.")
  p.add_argument("--stage", help="run one stage: pretrain, sft (chat fine-tuning), lora (and QLoRA), adapter (adapter "
                                 "layers), dpo (preference tuning), distill")
  p.add_argument("--device", help="tinygrad backend: CPU, CL, CUDA, METAL, ... (default: tinygrad's pick)")
  p.add_argument("--resume", action="store_true", default=None, help="continue the run in --out from its checkpoint, with its own settings")
  p.add_argument("--workers", type=int, help="processes that tokenize --data the first time (default: one per core)")
  p.add_argument("--plan", action="store_true", default=None, help="pretrain: train nothing; print the step's memory (weights, "
                 "optimizer state, activations, peak), FLOPs, bytes moved and kernels, and the largest micro-batch that fits, "
                 "planned on tinygrad's NULL device for --device or --plan-for")
  p.add_argument("--plan-for", metavar="GPU", help=f"plan for a GPU (alone, this implies --plan; with --batch-size auto, trains "
                 f"with its plan): {', '.join(targets.TARGETS)}, or a memory size (24GB, 24GiB) of --device's backend; "
                 "NVIDIA GPUs compile with NVRTC (the gpu-plan extra)")
  for name, f in config.flags().items():
    stages = [s for s in config.STAGES if name in config.STAGE_FLAGS[s]]
    where = "" if len(stages) == len(config.STAGES) else "/".join(stages) + ": "
    kind, meta = config.field_type(f), f.metadata
    options = dict(action=argparse.BooleanOptionalAction if name == "diagnostics" else "store_true") if kind is bool else \
              dict(type=kind, choices=meta["choices"], metavar=meta["metavar"])
    if name == "batch_size": options |= dict(type=micro_batch, metavar="N|auto")
    p.add_argument(config.dash(name), dest=name, default=None, help=where + meta["help"], **options)
  return {name: value for name, value in vars(p.parse_args(argv)).items() if value is not None}


def micro_batch(text: str) -> int | str:
  if text == "auto": return text
  try: return int(text)
  except ValueError: raise argparse.ArgumentTypeError(f"a number of sequences or auto, not {text!r}") from None


def main(argv=None, prog: str = "aurora train") -> int:
  flags = given_flags(argv, prog)
  # Ctrl-C before training starts (tokenizing, compiling); once it has started, the trainer saves and returns
  return run(lambda: train(flags), interrupted="interrupted before training started; nothing was saved")
