"""`aurora train` (and `python train.py`): plan the stages from the flags, then for each build tokenizer, data, model and
optimizer, train, and report."""
import argparse, sys, time
from pathlib import Path
from tinygrad import Tensor
from aurora_tg import UserError, config, finetune, lora
from aurora_tg.cli.errors import run
from aurora_tg.formats import checkpoint
from aurora_tg.backends import devices
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
from aurora_tg.model import GPT, IGNORE_INDEX, PRESETS, num_params
from aurora_tg.data.chat_data import ChatData
from aurora_tg.data.tokenizer import Tokenizer
from aurora_tg.trainer import Trainer, NonFinite, build_optimizer


def plan(flags: dict, device: str) -> list[tuple[StageConfig, bool]]:
  """The stages to run, each with whether it resumes. Without --stage (and --data), pretraining is followed by chat
  fine-tuning (the pretraining config records it); with --init alone, that model is chat fine-tuned. --resume takes
  each stage's config from its record."""
  stage = config.stage_of(flags)
  # checked before any file is read, so a misplaced flag is reported as such; a resumed run's stage is in its record
  if not flags.get("resume"): config.check_flags(stage, flags)
  if flags.get("resume"): first = resumed_config(Path(flags.get("out") or config.default_out(stage, flags)), flags, device)
  else:
    init_preset = config.preset_of(checkpoint.model_config(flags["init"])) if flags.get("init") and stage != "pretrain" else None
    first = config.new_run(stage, flags, device, init_preset, chat_after=flags.get("stage") is None and not flags.get("data"))
  stages = [(first, bool(flags.get("resume")))]
  if isinstance(first, PretrainConfig) and first.chat_after:
    sft = config.chat_finetune_after(first, device)
    if flags.get("resume") and (Path(sft.out) / checkpoint.CHECKPOINT_NAME).exists():
      stages.append((resumed_config(Path(sft.out), {}, device), True))
    else: stages.append((sft, False))
  return stages


def resumed_config(out: Path, flags: dict, device: str) -> StageConfig:
  path = out / checkpoint.CHECKPOINT_NAME
  if not path.exists(): raise UserError(f"nothing to resume: {path} does not exist")
  saved = checkpoint.read_record(path)
  if saved.run is None: raise UserError(f"{out} was written by an older Aurora that did not record its settings; it cannot be resumed")
  if flags.get("stage") not in (None, saved.stage): raise UserError(f"--stage {flags['stage']} does not match the run being resumed ({saved.stage})")
  if flags.get("steps", saved.step) < saved.step: raise UserError(f"--steps {flags['steps']} is fewer than the {saved.step} the run has done")
  return config.resumed(saved.run, flags, device)


def train(flags: dict) -> int:
  """Run the planned stages in order; stop at the first that does not finish."""
  device = devices.select_device(flags.get("device"))
  stages = plan(flags, device)
  if any(cfg.wandb for cfg, _ in stages): require_wandb()
  for i, (cfg, resume) in enumerate(stages):
    if i: print("\nchat fine-tuning the pretrained model on conversations built from Python's documentation")
    code = run_stage(cfg, resume, device, flags.get("workers", 0))
    if code: return code
  return 0


def pretraining_tokenizer(cfg: PretrainConfig) -> Tokenizer:
  """A prepared folder's own tokenizer, GPT-2's, or a BPE trained on the start of the data."""
  if cfg.data and (Path(cfg.data) / MANIFEST).exists(): return Tokenizer.load(str(Path(cfg.data) / checkpoint.TOKENIZER_NAME))
  return make_tokenizer(cfg.tokenizer, open_source(cfg.data, cfg.text_field), PRESETS[cfg.size].get("vocab_size", 8192), cfg.bpe_sample_mb)


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
  if cfg.eval_hellaswag_every: trainer.extra_eval = hellaswag_during_training(trainer.model, tokenizer, cfg.eval_hellaswag_every)
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
  if cfg.stage in ("sft", "lora"):
    # a run resumed when already finished trains no step, so it has not evaluated yet
    print(f"held-out assistant-token loss: {trainer.last_val_loss or trainer.evaluate():.4f}")
    if cfg.stage == "lora": lora.merge_adapters(trainer.model)
    for question, answer in sample_answers(trainer.model, tokenizer, data): print(f"  Q: {question}\n  A: {answer}")
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
  print(f"{cfg.stage} | {where}{'' if s.compute_dtype == 'float32' else ', ' + s.compute_dtype + ' compute'} | model: "
        f"{num_params(model) / 1e6:.2f}M parameters ({sum(p.numel() for p in trainer.params) / 1e6:.2f}M trained), context "
        f"{model.cfg.block_size}, vocabulary {model.cfg.vocab_size} | data: {size(data)} | {s.steps} steps of {s.batch_size * s.grad_accum} x "
        f"{model.cfg.block_size} tokens, {s.optimizer} at lr {s.lr:g}" + (f" | resuming at step {trainer.step}" if resumed else ""))


def size(data) -> str:
  if isinstance(data, TokenData): return f"{data.train_tokens:,} train / {data.val_tokens:,} val tokens" + (", sequential" if data.order == "sequential" else "")
  return f"{len(data.train):,} train / {len(data.val):,} val conversations"


def print_sample(model: GPT, tokenizer: Tokenizer, seed: int):
  prompt = "The"
  sampling = Sampling(temperature=0.8, top_k=40, max_tokens=model.cfg.block_size // 2, seed=seed)
  ids = Generator(model).generate(tokenizer.encode(prompt), sampling, stop={tokenizer.eot})
  print(f"sample: {prompt}{tokenizer.decode(ids)}")


def sample_answers(model: GPT, tokenizer: Tokenizer, data: ChatData, n: int = 3) -> list[tuple[str, str]]:
  """Greedy answers to n distinct held-out questions, spread over the held-out set (which repeats some, such as the
  oversampled small talk), stopping where chat.py stops."""
  prompts, user = {}, tokenizer.special("<|user|>")
  for ids, targets in data.val:
    prompt_len = next(i for i, t in enumerate(targets) if t != IGNORE_INDEX)
    asked = max(i for i, t in enumerate(ids[:prompt_len]) if t == user) + 1
    question = tokenizer.decode([t for t in ids[asked:prompt_len] if t < tokenizer.eot]).strip()  # without role tokens
    prompts.setdefault(question.lower(), (question, ids[:prompt_len]))
  distinct = list(prompts.values())
  picked = [distinct[i * len(distinct) // n] for i in range(min(n, len(distinct)))]
  generator, stop = Generator(model), stop_tokens(tokenizer)
  return [(question, "".join(stream_text(generator, tokenizer, prompt, Sampling(temperature=0, max_tokens=48), stop)).strip())
          for question, prompt in picked]


def parse_args(argv=None, prog: str = "aurora train"):
  p = argparse.ArgumentParser(prog=prog, description="Train an Aurora GPT model. Without --stage (and --data): pretrain, then "
                                          "chat fine-tune on conversations built from Python's documentation.")
  p.add_argument("--stage", help="run one stage: pretrain, sft (chat fine-tuning), lora, distill")
  p.add_argument("--init", help="the model fine-tuning starts from: an Aurora run folder or checkpoint, a Hugging Face GPT-2 folder "
                 "(config.json + model.safetensors or pytorch_model.bin), or a hub model id (gpt2, gpt2-medium, ...); "
                 "without --stage, chat fine-tunes it")
  p.add_argument("--device", help="tinygrad backend: CPU, CL, CUDA, METAL, ... (default: tinygrad's pick)")
  p.add_argument("--dtype", help="compute dtype: float32, or bfloat16/float16 for mixed precision (float32 weights "
                 "and optimizer state); default float32, bfloat16 for the gpt2 presets where the backend has it")
  p.add_argument("--devices", help="data parallel: a device list (CUDA:0,CUDA:1) or a count of --device's devices (8); "
                 "each takes an equal share of every batch")
  p.add_argument("--data", help="pretrain/distill: a text file, a folder, .jsonl(.gz/.zst) or .parquet with a text field, "
                                "hf:REPO[:FILES] (a Hugging Face dataset), fineweb-edu, tinystories, or a folder "
                                "python -m aurora_tg.prepare wrote (default: Python's bundled documentation); tokenized once "
                                "into cached shards; sft/lora: chat data, JSON lines or parquet in OpenAI messages, ShareGPT "
                                "or Alpaca format, a local file, hf:REPO[:FILES] or smoltalk (default: conversations built "
                                "from that documentation)")
  p.add_argument("--text-field", help="pretrain/distill: the JSON or parquet field holding the text (default text)")
  p.add_argument("--max-tokens", type=int, help="pretrain/distill: take only the first N tokens of --data")
  p.add_argument("--data-order", choices=("random", "sequential"), help="pretrain/distill: random windows (default), or a "
                 "sequential pass over the data in a seeded shard order, continued exactly by --resume")
  p.add_argument("--workers", type=int, help="processes that tokenize --data the first time (default: one per core)")
  p.add_argument("--out", help="run folder for checkpoint, tokenizer and metrics (default: runs/<size>)")
  p.add_argument("--size", help="model preset: tiny, small (default), medium, gpt2, gpt2-medium, gpt2-large, gpt2-xl")
  p.add_argument("--steps", type=int, help="optimizer steps (default: the preset's)")
  p.add_argument("--batch-size", type=int, help="sequences per micro-batch")
  p.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step")
  p.add_argument("--optimizer", help="aurora, aurora-riemannian, muon (hidden matrices; AdamW trains the rest), adamw "
                                     "(default), adam, amsgrad, lamb, sgd, rmsprop, adagrad, adadelta, adamax, nadam")
  p.add_argument("--lr", type=float, help="peak learning rate (default: the optimizer's and preset's)")
  p.add_argument("--weight-decay", type=float, help="decoupled weight decay (default: AdamW 0.1; a matrix optimizer's "
                 "matrices 0.025, the reference's); given, it applies to every decayed weight")
  p.add_argument("--eval-every", type=int, help="steps between validation evaluations and checkpoints")
  p.add_argument("--tokenizer", choices=("bpe", "gpt2"), help="own BPE trained on the data, or GPT-2's (default: by preset)")
  p.add_argument("--bpe-sample-mb", type=float, help="the own BPE trains on this many MB from the start of the data (default 100)")
  p.add_argument("--norm", choices=("layernorm", "rmsnorm"))
  p.add_argument("--pos", choices=("learned", "rope"))
  p.add_argument("--mlp", choices=("gelu", "swiglu", "relu2"), help="MLP activation: gelu (GPT-2, default), swiglu "
                 "(LLaMA's gated SiLU, 2/3 the hidden width), relu2 (squared ReLU, relu(x)^2, as modded-nanogpt and nanochat)")
  p.add_argument("--freeze", type=int, help="sft: freeze the embeddings and the lowest N blocks (default 0)")
  p.add_argument("--lora-rank", type=int, help="lora: adapter rank (default 8)")
  p.add_argument("--lora-alpha", type=float, help="lora: adapter scale numerator, scale = alpha / rank (default 16)")
  p.add_argument("--lora-dropout", type=float, help="lora: dropout on the adapters' input (default 0)")
  p.add_argument("--lora-targets", help="lora: projections that get adapters (default c_attn,c_proj,c_fc,c_gate)")
  p.add_argument("--teacher", help="distill: the teacher checkpoint (the student is --init, or a new --size model)")
  p.add_argument("--distill-alpha", type=float, help="distill: weight of the teacher's soft targets against the data's (default 0.5)")
  p.add_argument("--distill-temperature", type=float, help="distill: softmax temperature of both models (default 2)")
  p.add_argument("--wandb", metavar="PROJECT", help="also log the metrics to this Weights & Biases project (pip install wandb)")
  p.add_argument("--keep", type=int, help="also keep the last N checkpoints as checkpoint-<step>.safetensors (default 0)")
  p.add_argument("--eval-hellaswag-every", type=int, help="also measure HellaSwag accuracy (its first 1,000 validation items) at "
                 "the evaluations whose step is a multiple of N; the data is downloaded once (python -m aurora_tg.eval)")
  p.add_argument("--keep-best", action="store_true", help="keep the checkpoint of the lowest validation loss as best.safetensors")
  p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint, with its own settings")
  p.add_argument("--seed", type=int, help="random seed of initialisation and batch sampling (default 1337)")
  return p.parse_args(argv)


def main(argv=None, prog: str = "aurora train") -> int:
  args = parse_args(argv, prog)
  # the flags the user gave, and only those: every default comes from aurora_tg/config.py's table
  flags = {name: value for name, value in vars(args).items() if value is not None and value is not False}
  # Ctrl-C before training starts (tokenizing, compiling); once it has started, the trainer saves and returns
  return run(lambda: train(flags), interrupted="interrupted before training started; nothing was saved")
