"""Run configuration as typed data: every training default in one table, and one validated config per stage
(pretrain, sft, lora, distill), resolved once from the preset, the optimizer's or stage's defaults, the user's flags
and, when a run resumes, its own record. Nothing here reads or writes files."""
import math, os
from dataclasses import asdict, dataclass, fields, replace
from typing import ClassVar
from pathlib import Path
from aurora_tg import UserError
from aurora_tg.backends import devices
from aurora_tg.lora import LoRAConfig, PROJECTIONS
from aurora_tg.model import GPTConfig, PRESETS
from aurora_tg.optim import OPTIMIZERS

STAGES = ("pretrain", "sft", "lora", "distill")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class TrainSettings:
  """What the trainer runs. These field values are the defaults' first layer; DEFAULTS below holds the rest."""
  steps: int = 300
  batch_size: int = 16
  grad_accum: int = 1            # micro-batches per optimizer step
  optimizer: str = "adamw"       # see optim.OPTIMIZERS
  lr: float = 3e-3
  adam_lr: float = 3e-3          # AdamW's rate for embeddings, head, norms and biases beside a matrix optimizer
  warmup: int = 20               # at most a tenth of the steps
  min_lr_frac: float = 0.1       # cosine decays to lr * min_lr_frac
  weight_decay: float = 0.1      # AdamW's (of everything, or beside a matrix optimizer)
  matrix_weight_decay: float = 0.025  # a matrix optimizer's, the reference's; --weight-decay sets both
  grad_clip: float = 1.0
  eval_every: int = 50
  eval_batches: int = 4
  log_every: int = 10
  seed: int = 1337
  devices: tuple[str, ...] = ()  # data parallel over these (two or more); () trains on the default device
  compute_dtype: str = "float32"  # bfloat16 or float16: mixed precision (float32 weights and optimizer state)

  @classmethod
  def from_dict(cls, d: dict) -> "TrainSettings":
    known = {f.name for f in fields(cls)}
    return cls(**{k: tuple(v) if k == "devices" else v for k, v in d.items() if k in known})


# Every training default, one row each. A new run starts from TrainSettings' values above, then takes its preset's
# row, then its optimizer's row (pretraining) or its stage's row (fine-tuning, which always uses AdamW), then the
# user's flags. adam_lr, AdamW's rate beside a matrix optimizer, is the preset's lr.
DEFAULTS: dict[str, dict] = {
  # presets: "small" is the default run, a few minutes on a 2-core CPU
  "tiny":        dict(steps=200, batch_size=16, lr=3e-3, eval_every=50),
  "small":       dict(steps=500, batch_size=8, lr=3e-3, eval_every=100),
  "medium":      dict(steps=2000, batch_size=32, lr=1.5e-3, eval_every=200),
  # nanoGPT's GPT-2 run: 16 x 32 sequences of 1024 = 0.5M tokens a step, bfloat16 where the backend has it;
  # the larger sizes take GPT-3's lower rates for their parameter counts
  "gpt2":        dict(steps=5000, batch_size=16, grad_accum=32, lr=6e-4, eval_every=250, warmup=300, compute_dtype="bfloat16"),
  "gpt2-medium": dict(steps=5000, batch_size=16, grad_accum=32, lr=3e-4, eval_every=250, warmup=300, compute_dtype="bfloat16"),
  "gpt2-large":  dict(steps=5000, batch_size=16, grad_accum=32, lr=2.5e-4, eval_every=250, warmup=300, compute_dtype="bfloat16"),
  "gpt2-xl":     dict(steps=5000, batch_size=16, grad_accum=32, lr=2e-4, eval_every=250, warmup=300, compute_dtype="bfloat16"),
  # optimizers, when pretraining (others use the preset's lr). Matrix optimizers take steps of a fixed spectral
  # size, so their rate does not depend on the model's width.
  "aurora": dict(lr=0.05), "aurora-riemannian": dict(lr=0.05), "muon": dict(lr=0.05), "lamb": dict(lr=1e-2),
  "sgd": dict(lr=0.3), "rmsprop": dict(lr=1e-3), "adagrad": dict(lr=3e-2), "adadelta": dict(lr=1.0), "adamax": dict(lr=6e-3),
  # fine-tuning stages: a fraction of pretraining's steps at a lower rate (LoRA's few weights take a higher one)
  "sft":     dict(steps=300, lr=1e-3, grad_accum=1),
  "lora":    dict(steps=300, lr=3e-3, grad_accum=1),
  "distill": dict(steps=500, lr=3e-3, grad_accum=1),
}

TEXT_FLAGS = ("text_field", "max_tokens", "data_order")  # the stages that train on text (see TextData)
# The flags every stage takes, and those of one stage (or a few); a flag of another stage is refused, naming its own.
# --stage, --device and --resume say how to run, not what: they are not part of a config.
COMMON_FLAGS = ("data", "out", "steps", "batch_size", "grad_accum", "lr", "weight_decay", "eval_every", "dtype", "devices", "seed", "wandb",
                "keep", "keep_best", "eval_hellaswag_every")
STAGE_FLAGS = {
  "pretrain": ("size", "tokenizer", "norm", "pos", "mlp", "optimizer", "bpe_sample_mb", *TEXT_FLAGS),
  "sft":      ("init", "freeze"),
  "lora":     ("init", "lora_rank", "lora_alpha", "lora_dropout", "lora_targets"),
  "distill":  ("teacher", "init", "size", "norm", "pos", "mlp", "distill_alpha", "distill_temperature", *TEXT_FLAGS),
}
RUN_FLAGS = ("stage", "device", "resume", "workers")
# A resumed run may go on longer, evaluate at another interval, move to other devices or log elsewhere; anything
# else it takes from its record.
RESUME_MAY_CHANGE = ("out", "steps", "eval_every", "devices", "wandb", "keep", "keep_best", "eval_hellaswag_every")


@dataclass(frozen=True, kw_only=True)
class StageConfig:
  stage: ClassVar[str]
  out: str                   # the run folder
  train: TrainSettings
  data: str | None = None    # None: Python's documentation (pretrain, distill) or conversations built from it (sft, lora)
  wandb: str | None = None   # a Weights & Biases project that also gets the metrics
  keep: int = 0              # step-numbered checkpoints kept besides the newest
  keep_best: bool = False    # keep the checkpoint of the lowest validation loss as best.safetensors
  eval_hellaswag_every: int = 0  # HellaSwag accuracy at the evaluations whose step is a multiple of this (0: never)

  def to_dict(self, run_dir: str | Path) -> dict:
    """For the run record. The run folder is where the record lies, not in it. The models it started from are
    stored relative to it when they lie in the same runs/ folder, so a copied or moved runs/ keeps working;
    others (a downloaded model, say) stay absolute."""
    d = {"stage": self.stage, **asdict(self)}
    del d["out"]
    runs = Path(run_dir).resolve().parent
    for name in ("init", "teacher"):
      if d.get(name) and Path(d[name]).exists():
        path = Path(d[name]).resolve()
        d[name] = os.path.relpath(path, Path(run_dir).resolve()) if path.is_relative_to(runs) else str(path)
    return d


@dataclass(frozen=True, kw_only=True)
class NewModel:
  """The shape of a model trained from scratch: a preset and the LLaMA switches."""
  size: str
  norm: str = "layernorm"
  pos: str = "learned"
  mlp: str = "gelu"

  def model_config(self, vocab_size: int) -> GPTConfig:
    shape = {k: v for k, v in PRESETS[self.size].items() if k != "vocab_size"}
    try: return GPTConfig(**shape, norm=self.norm, pos=self.pos, mlp=self.mlp, vocab_size=vocab_size)
    except ValueError as e: raise UserError(f"impossible model: {e}") from None


@dataclass(frozen=True, kw_only=True)
class TextData:
  """How a stage that trains on text takes it from --data (prepared into shards by aurora_tg/data/prepare.py)."""
  text_field: str = "text"        # the JSON lines' or parquet's field holding the text
  max_tokens: int | None = None   # the first this many tokens of the source
  data_order: str = "random"      # random windows, or a sequential pass over the shards in a seeded order


@dataclass(frozen=True, kw_only=True)
class PretrainConfig(TextData, NewModel, StageConfig):
  stage = "pretrain"
  size: str = "small"
  tokenizer: str = "bpe"     # an own BPE trained on the data, or GPT-2's
  bpe_sample_mb: float = 100.0  # the own BPE trains on this many megabytes from the start of the data
  chat_after: bool = False   # the default pipeline: chat fine-tuning follows (config.chat_finetune_after)


@dataclass(frozen=True, kw_only=True)
class SFTConfig(StageConfig):
  stage = "sft"
  init: str                  # the run folder, checkpoint or Hugging Face folder fine-tuning starts from
  freeze: int = 0            # embeddings and this many lowest blocks stay frozen


@dataclass(frozen=True, kw_only=True)
class LoRAStageConfig(StageConfig):
  stage = "lora"
  init: str                  # the frozen base
  lora: LoRAConfig = LoRAConfig()


@dataclass(frozen=True, kw_only=True)
class DistillConfig(TextData, NewModel, StageConfig):
  stage = "distill"
  teacher: str
  size: str = "tiny"         # the shape of a new student
  init: str | None = None    # the student; None: a new model of `size`
  alpha: float = 0.5         # weight of the teacher's soft targets against the data's
  temperature: float = 2.0


STAGE_CONFIGS = {cls.stage: cls for cls in (PretrainConfig, SFTConfig, LoRAStageConfig, DistillConfig)}


def from_dict(d: dict, run_dir: str | Path) -> StageConfig:
  """The inverse of StageConfig.to_dict."""
  cls, d = STAGE_CONFIGS[d["stage"]], {k: v for k, v in d.items() if k != "stage"}
  d |= {"out": str(run_dir), "train": TrainSettings.from_dict(d["train"])}
  for name in ("init", "teacher"):  # resolved first: a runs/ that is a symbolic link keeps its targets' ".."
    if d.get(name) and not Path(d[name]).is_absolute(): d[name] = os.path.normpath(Path(run_dir).resolve() / d[name])
  if "lora" in d: d["lora"] = LoRAConfig.from_dict(d["lora"])
  return cls(**d)


def dash(name: str) -> str: return "--" + name.replace("_", "-")


def stage_of(flags: dict) -> str:
  """--stage, or what the flags imply: fine-tuning with --init, else pretraining."""
  stage = flags.get("stage") or ("sft" if flags.get("init") else "pretrain")
  if stage not in STAGES: raise UserError(f"unknown stage {stage!r}; choose from {', '.join(STAGES)}")
  return stage


def check_flags(stage: str, flags: dict):
  """A flag that does not apply to the stage is an error, not silently ignored."""
  allowed = {*COMMON_FLAGS, *STAGE_FLAGS[stage], *RUN_FLAGS}
  for name in flags:
    if name not in allowed:
      owners = [s for s in STAGES if name in STAGE_FLAGS[s]]
      raise UserError(f"{dash(name)} applies to --stage {', '.join(owners)}, not to {stage}")


def default_out(stage: str, flags: dict) -> str:
  """runs/<size> for pretraining; a fine-tuned run sits beside the one it started from: runs/<init>-<stage>
  (runs/<name>-<stage> for a hub model)."""
  if stage == "pretrain": return f"runs/{flags.get('size') or 'small'}"
  start = flags.get("init") or f"runs/{flags.get('size') or 'tiny'}"
  path = Path(start)
  if not path.exists() and not Path(path.parts[0]).is_dir() and path.parts[0] != "runs":  # a hub id: gpt2, owner/name
    return f"runs/{path.name}-{stage}"
  return f"{path.parent if path.suffix == '.safetensors' else path}-{stage}"


def preset_of(cfg: GPTConfig) -> str:
  """The preset a model's training defaults come from: the one of its width and depth, else the nearest in width."""
  same = [name for name, p in PRESETS.items() if (p["n_layer"], p["n_embd"]) == (cfg.n_layer, cfg.n_embd)]
  return same[0] if same else min(PRESETS, key=lambda name: abs(PRESETS[name]["n_embd"] - cfg.n_embd))


def train_settings(preset: str, row: str, flags: dict, device: str) -> TrainSettings:
  """The table's layers for a new run: TrainSettings, the preset's row, the optimizer's or stage's row, then flags."""
  optimizer = flags.get("optimizer", "adamw")
  if optimizer not in OPTIMIZERS: raise UserError(f"unknown optimizer {optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
  values = {**DEFAULTS[preset], "adam_lr": DEFAULTS[preset]["lr"], **DEFAULTS.get(row, {}), "optimizer": optimizer}
  values |= {k: flags[k] for k in ("steps", "batch_size", "grad_accum", "lr", "eval_every", "seed") if k in flags}
  if "dtype" in flags: values["compute_dtype"] = flags["dtype"]
  if "weight_decay" in flags: values["weight_decay"] = values["matrix_weight_decay"] = flags["weight_decay"]
  s = TrainSettings(**values)
  check_counts(s)
  if not s.lr > 0 or not math.isfinite(s.lr): raise UserError(f"--lr must be positive, got {s.lr}")
  if not 0 <= s.weight_decay < math.inf: raise UserError(f"--weight-decay must be zero or positive, got {s.weight_decay}")
  if s.compute_dtype not in DTYPES: raise UserError(f"--dtype must be float32, bfloat16 or float16, got {s.compute_dtype!r}")
  if "dtype" not in flags and not devices.supports_dtype(device, s.compute_dtype):
    s = replace(s, compute_dtype="float32")  # the preset's mixed precision needs a backend that has it
  return replace(s, warmup=min(s.warmup, max(1, s.steps // 10)), devices=devices.parse_devices(flags.get("devices")))


def check_counts(s: TrainSettings):
  for name in ("steps", "batch_size", "grad_accum", "eval_every"):
    if getattr(s, name) < 1: raise UserError(f"{dash(name)} must be at least 1, got {getattr(s, name)}")


def check_machine(s: TrainSettings, device: str, resuming: bool = False):
  """What this machine must offer the settings: the compute dtype and an even split of the batch. A resumed run
  cannot change either setting, so its messages say what to change instead."""
  if not devices.supports_dtype(device, s.compute_dtype):
    fix = "resume it on a backend that has it (--device)" if resuming else "use --dtype float32"
    raise UserError(f"{device} cannot compute in {s.compute_dtype} on this machine; {fix}")
  if s.devices and s.batch_size % len(s.devices):
    split = f"does not split evenly across {len(s.devices)} devices ({', '.join(s.devices)})"
    raise UserError(f"the run's batch size {s.batch_size} {split}; pick --devices that divide it" if resuming else f"--batch-size {s.batch_size} {split}")


# flags whose config field has another name
RENAMED = {"distill_alpha": "alpha", "distill_temperature": "temperature", "lora_rank": "rank", "lora_alpha": "alpha",
           "lora_dropout": "dropout", "lora_targets": "targets"}


def _options(flags: dict, *names: str) -> dict:
  """The given flags among names, under their config field names; what is left out takes the class's default."""
  out = {RENAMED.get(k, k): flags[k] for k in names if k in flags}
  if "targets" in out: out["targets"] = tuple(out["targets"].split(","))
  return out


def new_run(stage: str, flags: dict, device: str, init_preset: str | None = None, chat_after: bool = False) -> StageConfig:
  """A new run's config from the user's flags; what they leave out takes the table's rows or the config classes'
  own defaults. init_preset: the preset of the model fine-tuning starts from (see preset_of), whose row sets the
  batch size. chat_after: pretraining is the default pipeline's first stage."""
  check_flags(stage, flags)
  if stage in ("sft", "lora") and not flags.get("init"):
    raise UserError(f"--stage {stage} needs --init CHECKPOINT: the pretrained run folder or checkpoint to start from")
  if stage == "distill" and not flags.get("teacher"): raise UserError("--stage distill needs --teacher CHECKPOINT")
  cls = STAGE_CONFIGS[stage]
  size = flags.get("size") or next((f.default for f in fields(cls) if f.name == "size"), None)
  if size is not None and size not in PRESETS: raise UserError(f"unknown size {size!r}; presets: {', '.join(PRESETS)}")
  data = flags.get("data")
  if data and Path(data).exists(): data = str(Path(data).resolve())  # a resumed run may start elsewhere
  row = flags.get("optimizer", "adamw") if stage == "pretrain" else stage
  common = dict(out=flags.get("out") or default_out(stage, flags), data=data, wandb=flags.get("wandb"), **_options(flags, "keep", "keep_best", "eval_hellaswag_every"),
                train=train_settings(init_preset or size, row, flags, device))
  if stage == "pretrain":
    tokenizer = flags.get("tokenizer") or ("bpe" if "vocab_size" in PRESETS[size] else "gpt2")
    cfg = PretrainConfig(**common, **_options(flags, "norm", "pos", "mlp", "bpe_sample_mb", *TEXT_FLAGS), size=size, tokenizer=tokenizer,
                         chat_after=chat_after)
  elif stage == "distill":
    cfg = DistillConfig(**common, **_options(flags, "norm", "pos", "mlp", "teacher", "init", "distill_alpha", "distill_temperature", *TEXT_FLAGS),
                        size=size)
  elif stage == "sft": cfg = SFTConfig(**common, **_options(flags, "init", "freeze"))
  else: cfg = LoRAStageConfig(**common, init=flags["init"], lora=LoRAConfig(**_options(flags, "lora_rank", "lora_alpha", "lora_dropout", "lora_targets")))
  validate(cfg)
  check_machine(cfg.train, device)
  return cfg


def validate(cfg: StageConfig):
  """Stage options in range (what needs the model, such as --freeze's upper bound, is checked where it is loaded)."""
  if cfg.keep < 0: raise UserError(f"--keep must be 0 or more, got {cfg.keep}")
  if cfg.eval_hellaswag_every < 0: raise UserError(f"--eval-hellaswag-every must be 0 or more, got {cfg.eval_hellaswag_every}")
  if isinstance(cfg, TextData):
    if cfg.data_order not in ("random", "sequential"): raise UserError(f"--data-order must be random or sequential, got {cfg.data_order!r}")
    if cfg.max_tokens is not None and cfg.max_tokens < 1: raise UserError(f"--max-tokens must be at least 1, got {cfg.max_tokens}")
  if isinstance(cfg, PretrainConfig) and not cfg.bpe_sample_mb > 0: raise UserError(f"--bpe-sample-mb must be positive, got {cfg.bpe_sample_mb}")
  if isinstance(cfg, SFTConfig) and cfg.freeze < 0: raise UserError(f"--freeze must be 0 or more, got {cfg.freeze}")
  if isinstance(cfg, LoRAStageConfig):
    lora = cfg.lora
    if lora.rank < 1: raise UserError(f"--lora-rank must be at least 1, got {lora.rank}")
    if not lora.alpha > 0: raise UserError(f"--lora-alpha must be positive, got {lora.alpha}")
    if not 0 <= lora.dropout < 1: raise UserError(f"--lora-dropout must be in [0, 1), got {lora.dropout}")
    unknown = sorted(set(lora.targets) - set(PROJECTIONS))
    if unknown: raise UserError(f"unknown --lora-targets {','.join(unknown)}; choose from {','.join(PROJECTIONS)}")
  if isinstance(cfg, DistillConfig):
    if not 0 <= cfg.alpha <= 1: raise UserError(f"--distill-alpha must be in [0, 1], got {cfg.alpha}")
    if not cfg.temperature > 0: raise UserError(f"--distill-temperature must be positive, got {cfg.temperature}")


def as_flags(cfg: StageConfig) -> dict:
  """The flags that would make this config: what a resumed run's own flags are compared with."""
  t = cfg.train
  flags = dict(data=cfg.data, steps=t.steps, batch_size=t.batch_size, grad_accum=t.grad_accum, lr=t.lr, weight_decay=t.weight_decay,
               eval_every=t.eval_every, dtype=t.compute_dtype, seed=t.seed, optimizer=t.optimizer)
  flags |= {f.name: getattr(cfg, f.name) for f in fields(cfg)
            if f.name in ("size", "tokenizer", "norm", "pos", "mlp", "init", "teacher", "freeze", "bpe_sample_mb", *TEXT_FLAGS)}
  if isinstance(cfg, LoRAStageConfig):
    flags |= dict(lora_rank=cfg.lora.rank, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout, lora_targets=",".join(cfg.lora.targets))
  if isinstance(cfg, DistillConfig): flags |= dict(distill_alpha=cfg.alpha, distill_temperature=cfg.temperature)
  return flags


def _same(name: str, given, recorded) -> bool:
  if name in ("data", "init", "teacher") and given is not None and recorded is not None:
    return Path(given).resolve() == Path(recorded).resolve()
  if name == "lora_targets": return set(given.split(",")) == set(recorded.split(","))
  return given == recorded


def resumed(saved: StageConfig, flags: dict, device: str) -> StageConfig:
  """The config of a run being resumed: its record's, with only what RESUME_MAY_CHANGE taken from the flags. Any
  other flag must agree with the record."""
  check_flags(saved.stage, flags)
  recorded = as_flags(saved)
  for name, value in flags.items():
    if name in RUN_FLAGS or name in RESUME_MAY_CHANGE or _same(name, value, recorded.get(name)): continue
    raise UserError(f"{dash(name)} {value} does not match the run being resumed ({recorded.get(name)}); "
                    "drop it, or start a new run with another --out")
  train = replace(saved.train, **{k: flags[k] for k in ("steps", "eval_every") if k in flags})
  check_counts(train)
  spec = flags["devices"] if "devices" in flags else ",".join(saved.train.devices) or None
  cfg = replace(saved, train=replace(train, devices=devices.parse_devices(spec)), wandb=flags.get("wandb", saved.wandb),
                keep=flags.get("keep", saved.keep), keep_best=flags.get("keep_best", saved.keep_best),
                eval_hellaswag_every=flags.get("eval_hellaswag_every", saved.eval_hellaswag_every))
  validate(cfg)
  check_machine(cfg.train, device, resuming=True)
  return cfg


def chat_finetune_after(pretrain: PretrainConfig, device: str) -> SFTConfig:
  """The default pipeline's second stage: chat fine-tuning of the model pretraining wrote, with the stage's defaults
  for its preset, and pretraining's batch size, compute dtype, devices, seed and W&B project."""
  t = pretrain.train
  flags = dict(init=pretrain.out, batch_size=t.batch_size, dtype=t.compute_dtype, seed=t.seed)
  if pretrain.wandb: flags["wandb"] = pretrain.wandb
  if t.devices: flags["devices"] = ",".join(t.devices)
  return new_run("sft", flags, device, init_preset=pretrain.size)

