"""Run configuration as typed data: every training default in one table, and one validated config per stage
(pretrain, sft, lora, adapter, dpo, distill), resolved once from the preset, the optimizer's or stage's row of the table, the user's
flags and, when a run resumes, its own record.

A field that a flag sets is named as its flag (batch_size is --batch-size) and carries the flag's help text, the
stages that take it and whether a resumed run may change it (option()); the command line is built from these fields
(flags() below, aurora_tg/cli/train.py), so adding a stage option touches one place. What the machine offers comes
in as a Machine from the caller: nothing here probes hardware, reads or writes files."""
import math, os
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from types import UnionType
from typing import Callable, ClassVar
from aurora_tg import UserError
from aurora_tg.lora import LoRAConfig, PROJECTIONS
from aurora_tg.qlora import KINDS as BASE_QUANTIZE_KINDS
from aurora_tg.model import GPTConfig, PRESETS
from aurora_tg.optim import MATRIX_OPTIMIZERS, OPTIMIZERS

STAGES = ("pretrain", "sft", "lora", "adapter", "dpo", "distill")
CHAT_STAGES = ("sft", "lora", "adapter", "dpo")  # fine-tuning an --init model on conversations or preference pairs
# --optimizer's default, chosen by measurement (bench/walltime.py, README's "Optimizers"); fine-tuning stages take no
# --optimizer and train with TrainSettings' own default, AdamW
PRETRAIN_OPTIMIZER = "aurora"
DTYPES = ("float32", "bfloat16", "float16")


def option(default=MISSING, *, help: str, stages: tuple[str, ...] = STAGES, resume: bool = False, choices: tuple | None = None,
           metavar: str | None = None):
  """A field set by the flag of its name. stages: where a field every stage's config has (TrainSettings') is a flag;
  a stage config's own fields are flags of the stages whose configs have them. resume: a resumed run may change it."""
  return field(default=default, metadata=dict(help=help, stages=stages, resume=resume, choices=choices, metavar=metavar))


@dataclass(frozen=True, kw_only=True)
class TrainSettings:
  """What the trainer runs. These field values are the defaults' first layer; DEFAULTS below holds the rest."""
  steps: int = option(300, help="optimizer steps (default: the preset's)", resume=True)
  batch_size: int = option(16, help="sequences per micro-batch (default: the preset's); pretrain: auto, the largest that fits "
                           "the device's memory (or --plan-for's), with --grad-accum raised to keep the tokens per step")
  grad_accum: int = option(1, help="micro-batches per optimizer step (default: the preset's)")
  # the trainer's own default (every fine-tuning stage's); pretraining's is PRETRAIN_OPTIMIZER, the flag's default
  optimizer: str = option("adamw", stages=("pretrain",), help="aurora (default), aurora-riemannian, muon, normuon (hidden "
                          "matrices; AdamW trains the rest), adamw, adam, amsgrad, lamb, sgd, rmsprop, adagrad, adadelta, adamax, nadam, ftrl")
  lr: float = option(3e-3, help="peak learning rate (default: the optimizer's and preset's)")
  adam_lr: float = 3e-3          # AdamW's rate for embeddings, head, norms and biases beside a matrix optimizer
  warmup: int = 20               # at most a tenth of the steps
  min_lr_frac: float = 0.1       # cosine decays to lr * min_lr_frac
  weight_decay: float = option(0.1, help="decoupled weight decay (default: AdamW 0.1; a matrix optimizer's matrices 0.025, "
                               "the reference's); given, it applies to every decayed weight")
  matrix_weight_decay: float = 0.025  # a matrix optimizer's, the reference's; --weight-decay sets both
  grad_clip: float = 1.0
  eval_every: int = option(50, help="steps between validation evaluations and checkpoints (default: the preset's)", resume=True)
  eval_batches: int = 4
  log_every: int = 10
  seed: int = option(1337, help="random seed of initialisation and batch sampling (default 1337)")
  devices: tuple[str, ...] = option((), resume=True, help="data parallel: a device list (CUDA:0,CUDA:1) or a count of "
                                    "--device's devices (8); each takes an equal share of every batch")
  dtype: str = option("float32", help="compute dtype: float32, or bfloat16/float16 for mixed precision (float32 weights and "
                      "optimizer state); default float32, bfloat16 for the gpt2 presets where the backend has it")
  diagnostics: bool = option(False, resume=True, help="neuron-death diagnostics in the logs and metrics (dead neurons, leverage "
                             "spread, never-active neurons); default on for pretraining with a matrix optimizer (muon, aurora), "
                             "off elsewhere, where they would only cost a copy of the MLP weights and kernels every step")

  @classmethod
  def from_dict(cls, d: dict) -> "TrainSettings":
    d = {"dtype" if k == "compute_dtype" else k: v for k, v in d.items()}  # the record's name before format 3
    known = {f.name for f in fields(cls)}
    return cls(**{k: tuple(v) if k == "devices" else v for k, v in d.items() if k in known})


# Every training default, one row each. A new run starts from TrainSettings' values above, then takes its preset's
# row, then its optimizer's row (pretraining) or its stage's row (fine-tuning, which always uses AdamW), then the
# user's flags. adam_lr, AdamW's rate beside a matrix optimizer, is the preset's lr.
DEFAULTS: dict[str, dict] = {
  # presets: "small" is the default run, a few minutes on a 2-core CPU: 360 of Aurora's steps take the time 500 of
  # AdamW's did, and reach 2.3 bits per byte where those reached 2.7 (bench/results/training.md)
  "tiny":        dict(steps=200, batch_size=16, lr=3e-3, eval_every=50),
  "small":       dict(steps=360, batch_size=8, lr=3e-3, eval_every=100),
  "medium":      dict(steps=2000, batch_size=32, lr=1.5e-3, eval_every=200),
  # nanoGPT's GPT-2 run: 16 x 32 sequences of 1024 = 0.5M tokens a step, bfloat16 where the backend has it;
  # the larger sizes take GPT-3's lower rates for their parameter counts
  "gpt2":        dict(steps=5000, batch_size=16, grad_accum=32, lr=6e-4, eval_every=250, warmup=300, dtype="bfloat16"),
  "gpt2-medium": dict(steps=5000, batch_size=16, grad_accum=32, lr=3e-4, eval_every=250, warmup=300, dtype="bfloat16"),
  "gpt2-large":  dict(steps=5000, batch_size=16, grad_accum=32, lr=2.5e-4, eval_every=250, warmup=300, dtype="bfloat16"),
  "gpt2-xl":     dict(steps=5000, batch_size=16, grad_accum=32, lr=2e-4, eval_every=250, warmup=300, dtype="bfloat16"),
  # optimizers, when pretraining (others use the preset's lr). Matrix optimizers take steps of a fixed spectral
  # size, so their rate does not depend on the model's width. Their runs watch for neuron death, the paper's question.
  "aurora": dict(lr=0.05, diagnostics=True), "aurora-riemannian": dict(lr=0.05, diagnostics=True), "muon": dict(lr=0.05, diagnostics=True),
  "normuon": dict(lr=0.05, diagnostics=True),
  "lamb": dict(lr=1e-2), "sgd": dict(lr=0.3), "rmsprop": dict(lr=1e-3), "adagrad": dict(lr=3e-2), "adadelta": dict(lr=1.0),
  "adamax": dict(lr=6e-3), "ftrl": dict(lr=3e-2),
  # fine-tuning stages: a fraction of pretraining's steps at a lower rate (LoRA's and adapters' few weights take a
  # higher one; DPO's a lower one, which moves the answers' likelihoods no further than it must)
  "sft":     dict(steps=300, lr=1e-3, grad_accum=1),
  "lora":    dict(steps=300, lr=3e-3, grad_accum=1),
  "adapter": dict(steps=300, lr=3e-3, grad_accum=1),
  "dpo":     dict(steps=200, lr=5e-5, grad_accum=1),
  "distill": dict(steps=500, lr=3e-3, grad_accum=1),
}
assert all(DEFAULTS[name].get("diagnostics") for name in MATRIX_OPTIMIZERS), "every matrix optimizer's row turns diagnostics on"


@dataclass(frozen=True)
class Machine:
  """What the machine offers a run, answered by the caller (aurora_tg/backends/devices.py asks tinygrad)."""
  device: str                                          # the default backend, CPU, CL, CUDA, ...
  supports_dtype: Callable[[str], bool]                # whether the default backend computes in a dtype
  parse_devices: Callable[[str | None], tuple[str, ...]]  # --devices as device names; () for one device


@dataclass(frozen=True, kw_only=True)
class StageConfig:
  stage: ClassVar[str]
  out: str = option(help="run folder for checkpoint, tokenizer and metrics (default: runs/<size>; a fine-tuned run: "
                    "runs/<init>-<stage>)", resume=True)
  train: TrainSettings
  data: str | None = option(None, help="pretrain/distill: a text file, a folder, .jsonl(.gz/.zst) or .parquet with a text "
                            "field, hf:REPO[:FILES] (a Hugging Face dataset), fineweb-edu, tinystories, or a folder `aurora "
                            "prepare` wrote (default: Python's bundled documentation); tokenized once into cached shards; "
                            "sft/lora/adapter: chat data, JSON lines or parquet in OpenAI messages, ShareGPT or Alpaca format, a "
                            "local file, hf:REPO[:FILES] or smoltalk (default: conversations built from that documentation); dpo: "
                            "preference pairs in TRL's format (prompt, chosen, rejected) or as two dialogues (chosen, rejected: "
                            "TRL's implicit prompt, Anthropic HH) (default: each default answer preferred over answers of another kind)")
  wandb: str | None = option(None, resume=True, metavar="PROJECT",
                             help="also log the metrics to this Weights & Biases project (pip install wandb)")
  keep: int = option(0, resume=True, help="also keep the last N checkpoints as checkpoint-<step>.safetensors (default 0)")
  keep_best: bool = option(False, resume=True, help="keep the checkpoint of the lowest validation loss as best.safetensors")
  eval_hellaswag_every: int = option(0, resume=True, help="also measure HellaSwag accuracy (its first 1,000 validation items) "
                                     "at the evaluations whose step is a multiple of N; the data is downloaded once")

  @property
  def adapters_only(self) -> bool:
    """Whether the run's checkpoints hold adapters alone (LoRA's, adapter layers), which load over its --init."""
    return False

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


SIZE_HELP = "model preset: tiny, small (default; distill: tiny), medium, gpt2, gpt2-medium, gpt2-large, gpt2-xl"
INIT_HELP = ("the model fine-tuning starts from (distill: the student, default a new --size model): an Aurora run folder or "
             "checkpoint, a Hugging Face GPT-2 folder (config.json + model.safetensors or pytorch_model.bin), or a hub model id "
             "(gpt2, gpt2-medium, ...); without --stage, chat fine-tunes it")


@dataclass(frozen=True, kw_only=True)
class NewModel:
  """The shape of a model trained from scratch: a preset and the LLaMA switches."""
  size: str
  norm: str = option("layernorm", choices=("layernorm", "rmsnorm"), help="layernorm (GPT-2, default) or rmsnorm")
  pos: str = option("learned", choices=("learned", "rope"), help="learned position embeddings (GPT-2, default) or rope")
  mlp: str = option("gelu", choices=("gelu", "swiglu", "relu2"), help="MLP activation: gelu (GPT-2, default), swiglu "
                    "(LLaMA's gated SiLU, 2/3 the hidden width), relu2 (squared ReLU, relu(x)^2, as modded-nanogpt and nanochat)")

  def model_config(self, vocab_size: int) -> GPTConfig:
    shape = {k: v for k, v in PRESETS[self.size].items() if k != "vocab_size"}
    try: return GPTConfig(**shape, norm=self.norm, pos=self.pos, mlp=self.mlp, vocab_size=vocab_size)
    except ValueError as e: raise UserError(f"impossible model: {e}") from None


@dataclass(frozen=True, kw_only=True)
class TextData:
  """How a stage that trains on text takes it from --data (prepared into shards by aurora_tg/data/prepare.py)."""
  text_field: str = option("text", help="the JSON or parquet field holding the text (default text)")
  max_tokens: int | None = option(None, help="take only the first N tokens of --data")
  data_order: str = option("random", choices=("random", "sequential"), help="random windows (default), or a sequential "
                           "pass over the data in a seeded shard order, continued exactly by --resume")


@dataclass(frozen=True, kw_only=True)
class PretrainConfig(TextData, NewModel, StageConfig):
  stage = "pretrain"
  size: str = option("small", help=SIZE_HELP)
  tokenizer: str = option("bpe", choices=("bpe", "gpt2"), help="own BPE trained on the data, or GPT-2's (default: by preset)")
  bpe_sample_mb: float = option(100.0, help="the own BPE trains on this many MB from the start of the data (default 100)")
  chat_after: bool = False   # the default pipeline: chat fine-tuning follows (chat_finetune_after)


@dataclass(frozen=True, kw_only=True)
class SFTConfig(StageConfig):
  stage = "sft"
  init: str = option(help=INIT_HELP)
  freeze: int = option(0, help="freeze the embeddings and the lowest N blocks (default 0)")


LORA_RANK_HELP = f"adapter rank (default {LoRAConfig.rank}; dpo: 0, no adapters, every weight trains)"


@dataclass(frozen=True, kw_only=True)
class LoRAOptions:
  """LoRA's adapters over a frozen base, which QLoRA holds quantized."""
  lora_rank: int = option(LoRAConfig.rank, help=LORA_RANK_HELP)
  lora_alpha: float = option(LoRAConfig.alpha, help=f"adapter scale numerator, scale = alpha / rank (default {LoRAConfig.alpha:g})")
  lora_dropout: float = option(LoRAConfig.dropout, help=f"dropout on the adapters' input (default {LoRAConfig.dropout:g})")
  lora_targets: tuple[str, ...] = option(LoRAConfig.targets, help=f"projections that get adapters (default {','.join(PROJECTIONS)})")
  base_quantize: str | None = option(None, choices=BASE_QUANTIZE_KINDS, help="QLoRA: hold the frozen base in 4-bit NormalFloat "
                                     "(nf4) or int8, in blocks of 64 weights with an absmax scale; the adapters train over it "
                                     "and merge into the float base (default: the float base)")

  @property
  def lora(self) -> LoRAConfig | None:
    return LoRAConfig(self.lora_rank, self.lora_alpha, self.lora_dropout, self.lora_targets) if self.lora_rank else None

  @property
  def adapters_only(self) -> bool: return self.lora is not None


@dataclass(frozen=True, kw_only=True)
class LoRAStageConfig(LoRAOptions, StageConfig):
  stage = "lora"
  init: str = option(help=INIT_HELP)  # the frozen base


@dataclass(frozen=True, kw_only=True)
class AdapterStageConfig(StageConfig):
  stage = "adapter"
  init: str = option(help=INIT_HELP)  # the frozen base
  adapter_size: int = option(64, help="adapter layers' bottleneck width (default 64)")

  @property
  def adapters_only(self) -> bool: return True


@dataclass(frozen=True, kw_only=True)
class DPOConfig(LoRAOptions, StageConfig):
  stage = "dpo"
  init: str = option(help=INIT_HELP)  # also the frozen reference
  dpo_beta: float = option(0.1, help="DPO's beta: how far from the reference the rewards let the model go (default 0.1)")
  rpo_alpha: float = option(0.0, help="weight of the chosen answers' token loss added to DPO's (RPO; TRL's rpo_alpha), which "
                            "keeps their likelihood from falling (default 0: DPO alone)")
  lora_rank: int = option(0, help=LORA_RANK_HELP)


@dataclass(frozen=True, kw_only=True)
class DistillConfig(TextData, NewModel, StageConfig):
  stage = "distill"
  teacher: str = option(help="the teacher checkpoint (the student is --init, or a new --size model)")
  size: str = option("tiny", help=SIZE_HELP)
  init: str | None = option(None, help=INIT_HELP)
  distill_alpha: float = option(0.5, help="weight of the teacher's soft targets against the data's (default 0.5)")
  distill_temperature: float = option(2.0, help="softmax temperature of both models (default 2)")


STAGE_CONFIGS = {cls.stage: cls for cls in (PretrainConfig, SFTConfig, LoRAStageConfig, AdapterStageConfig, DPOConfig, DistillConfig)}
TRAIN_FLAGS = tuple(f.name for f in fields(TrainSettings) if "help" in f.metadata)


def flags() -> dict[str, "Field"]:
  """Every flag a config field stands for, by name, with the field that defines it (the first class's, for a flag
  several stages share)."""
  out = {}
  for cls in (TrainSettings, *STAGE_CONFIGS.values()):
    for f in fields(cls):
      if "help" in f.metadata: out.setdefault(f.name, f)
  return out


def stage_flags(stage: str) -> tuple[str, ...]:
  """The flags a stage takes: its config's own flag fields, and the trainer's that apply to it."""
  own = [f.name for f in fields(STAGE_CONFIGS[stage]) if "help" in f.metadata]
  return (*own, *(f.name for f in fields(TrainSettings) if "help" in f.metadata and stage in f.metadata["stages"]))


STAGE_FLAGS = {stage: stage_flags(stage) for stage in STAGES}
RESUME_MAY_CHANGE = tuple(name for name, f in flags().items() if f.metadata["resume"])
RUN_FLAGS = ("stage", "device", "resume", "workers")  # how to run, not what: no part of a config


def flag_value(name: str, text):
  """A flag's value as its field holds it: a comma-separated list as a tuple."""
  return tuple(part.strip() for part in text.split(",")) if name == "lora_targets" and isinstance(text, str) else text


def field_type(f) -> type:
  """The type a flag's text converts to: the field's, without None."""
  t = f.type
  if isinstance(t, UnionType): t = next(a for a in t.__args__ if a is not type(None))
  return str if t in (tuple, tuple[str, ...]) else t


def from_dict(d: dict, run_dir: str | Path) -> StageConfig:
  """The inverse of StageConfig.to_dict; records before format 3 named some fields otherwise (see _RENAMED)."""
  cls, d = STAGE_CONFIGS[d["stage"]], {_RENAMED.get((d["stage"], k), k): v for k, v in d.items() if k != "stage"}
  if "lora" in d: d |= {f"lora_{k}": v for k, v in d.pop("lora").items()}
  d |= {"out": str(run_dir), "train": TrainSettings.from_dict(d["train"])}
  for name in ("init", "teacher"):  # resolved first: a runs/ that is a symbolic link keeps its targets' ".."
    if d.get(name) and not Path(d[name]).is_absolute(): d[name] = os.path.normpath(Path(run_dir).resolve() / d[name])
  if "lora_targets" in d: d["lora_targets"] = tuple(d["lora_targets"])
  return cls(**d)


_RENAMED = {("distill", "alpha"): "distill_alpha", ("distill", "temperature"): "distill_temperature"}


def dash(name: str) -> str: return "--" + name.replace("_", "-")


def stage_of(flags: dict) -> str:
  """--stage, or what the flags imply: fine-tuning with --init, else pretraining."""
  stage = flags.get("stage") or ("sft" if flags.get("init") else "pretrain")
  if stage not in STAGES: raise UserError(f"unknown stage {stage!r}; choose from {', '.join(STAGES)}")
  return stage


def check_flags(stage: str, given: dict):
  """A flag that does not apply to the stage is an error, not silently ignored."""
  for name in given:
    if name not in STAGE_FLAGS[stage] and name not in RUN_FLAGS:
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


def bpe_vocab_size(size: str) -> int:
  """An own BPE's vocabulary for a preset: the preset's, else 8,192 (the GPT-2 presets default to GPT-2's BPE)."""
  return PRESETS[size].get("vocab_size", 8192)


def preset_of(cfg: GPTConfig) -> str:
  """The preset a model's training defaults come from: the one of its width and depth, else the nearest in width."""
  same = [name for name, p in PRESETS.items() if (p["n_layer"], p["n_embd"]) == (cfg.n_layer, cfg.n_embd)]
  return same[0] if same else min(PRESETS, key=lambda name: abs(PRESETS[name]["n_embd"] - cfg.n_embd))


def train_settings(preset: str, stage: str, flags: dict, machine: Machine) -> TrainSettings:
  """The table's layers for a new run: TrainSettings, the preset's row, the optimizer's (pretraining) or stage's row,
  then flags."""
  if stage == "pretrain": optimizer = row = flags.get("optimizer", PRETRAIN_OPTIMIZER)
  else: optimizer, row = TrainSettings.optimizer, stage
  if optimizer not in OPTIMIZERS: raise UserError(f"unknown optimizer {optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
  values = {**DEFAULTS[preset], "adam_lr": DEFAULTS[preset]["lr"], **DEFAULTS.get(row, {}), "optimizer": optimizer}
  values |= {k: flags[k] for k in TRAIN_FLAGS if k in flags and k != "devices"}
  if "weight_decay" in flags: values["matrix_weight_decay"] = flags["weight_decay"]
  s = TrainSettings(**values)
  check_counts(s)
  if not s.lr > 0 or not math.isfinite(s.lr): raise UserError(f"--lr must be positive, got {s.lr}")
  if not 0 <= s.weight_decay < math.inf: raise UserError(f"--weight-decay must be zero or positive, got {s.weight_decay}")
  if s.dtype not in DTYPES: raise UserError(f"--dtype must be float32, bfloat16 or float16, got {s.dtype!r}")
  if "dtype" not in flags and not machine.supports_dtype(s.dtype):
    s = replace(s, dtype="float32")  # the preset's mixed precision needs a backend that has it
  return replace(s, warmup=min(s.warmup, max(1, s.steps // 10)), devices=machine.parse_devices(flags.get("devices")))


def check_counts(s: TrainSettings):
  for name in ("steps", "batch_size", "grad_accum", "eval_every"):
    if getattr(s, name) < 1: raise UserError(f"{dash(name)} must be at least 1, got {getattr(s, name)}")


def check_machine(s: TrainSettings, machine: Machine, resuming: bool = False):
  """What this machine must offer the settings: the compute dtype and an even split of the batch. A resumed run
  cannot change either setting, so its messages say what to change instead."""
  if not machine.supports_dtype(s.dtype):
    fix = "resume it on a backend that has it (--device)" if resuming else "use --dtype float32"
    raise UserError(f"{machine.device} cannot compute in {s.dtype} on this machine; {fix}")
  if s.devices and s.batch_size % len(s.devices):
    split = f"does not split evenly across {len(s.devices)} devices ({', '.join(s.devices)})"
    raise UserError(f"the run's batch size {s.batch_size} {split}; pick --devices that divide it" if resuming else f"--batch-size {s.batch_size} {split}")


def new_run(stage: str, flags: dict, machine: Machine, init_preset: str | None = None, chat_after: bool = False) -> StageConfig:
  """A new run's config from the user's flags; what they leave out takes the table's rows or the config classes'
  own defaults. init_preset: the preset of the model fine-tuning starts from (see preset_of), whose row sets the
  batch size. chat_after: pretraining is the default pipeline's first stage."""
  check_flags(stage, flags)
  if stage in CHAT_STAGES and not flags.get("init"):
    raise UserError(f"--stage {stage} needs --init CHECKPOINT: the pretrained run folder or checkpoint to start from")
  if stage == "distill" and not flags.get("teacher"): raise UserError("--stage distill needs --teacher CHECKPOINT")
  cls = STAGE_CONFIGS[stage]
  size = flags.get("size") or next((f.default for f in fields(cls) if f.name == "size"), None)
  if size is not None and size not in PRESETS: raise UserError(f"unknown size {size!r}; presets: {', '.join(PRESETS)}")
  values = {name: flag_value(name, flags[name]) for name in STAGE_FLAGS[stage] if name in flags and name not in TRAIN_FLAGS}
  if values.get("data") and Path(values["data"]).exists(): values["data"] = str(Path(values["data"]).resolve())  # a resumed run may start elsewhere
  values |= dict(out=flags.get("out") or default_out(stage, flags), train=train_settings(init_preset or size, stage, flags, machine))
  if size is not None: values["size"] = size
  if stage == "pretrain":
    values |= dict(tokenizer=flags.get("tokenizer") or ("bpe" if "vocab_size" in PRESETS[size] else "gpt2"), chat_after=chat_after)
  cfg = cls(**values)
  validate(cfg)
  check_machine(cfg.train, machine)
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
  if isinstance(cfg, LoRAOptions):
    least = 0 if isinstance(cfg, DPOConfig) else 1  # DPO without adapters trains every weight
    if cfg.lora_rank < least: raise UserError(f"--lora-rank must be at least {least}, got {cfg.lora_rank}")
    if cfg.base_quantize not in (None, *BASE_QUANTIZE_KINDS): raise UserError(f"--base-quantize must be nf4 or int8, got {cfg.base_quantize!r}")
    if cfg.base_quantize and not cfg.lora_rank: raise UserError("--base-quantize is for a frozen base: give --lora-rank too")
    unused = [dash(f) for f in ("lora_alpha", "lora_dropout", "lora_targets") if getattr(cfg, f) != getattr(LoRAConfig, f[len("lora_"):])]
    if unused and not cfg.lora_rank: raise UserError(f"{', '.join(unused)} go with --lora-rank: without it no adapter is trained")
    if not cfg.lora_alpha > 0: raise UserError(f"--lora-alpha must be positive, got {cfg.lora_alpha}")
    if not 0 <= cfg.lora_dropout < 1: raise UserError(f"--lora-dropout must be in [0, 1), got {cfg.lora_dropout}")
    unknown = sorted(set(cfg.lora_targets) - set(PROJECTIONS))
    if unknown: raise UserError(f"unknown --lora-targets {','.join(unknown)}; choose from {','.join(PROJECTIONS)}")
  if isinstance(cfg, AdapterStageConfig) and cfg.adapter_size < 1: raise UserError(f"--adapter-size must be at least 1, got {cfg.adapter_size}")
  if isinstance(cfg, DPOConfig) and not cfg.dpo_beta > 0: raise UserError(f"--dpo-beta must be positive, got {cfg.dpo_beta}")
  if isinstance(cfg, DPOConfig) and not cfg.rpo_alpha >= 0: raise UserError(f"--rpo-alpha must be 0 or more, got {cfg.rpo_alpha}")
  if isinstance(cfg, DPOConfig) and cfg.train.devices:  # tinygrad 0.14 fails to compile its step split over devices
    raise UserError("--stage dpo trains on one device: drop --devices")
  if isinstance(cfg, DistillConfig):
    if not 0 <= cfg.distill_alpha <= 1: raise UserError(f"--distill-alpha must be in [0, 1], got {cfg.distill_alpha}")
    if not cfg.distill_temperature > 0: raise UserError(f"--distill-temperature must be positive, got {cfg.distill_temperature}")


def as_flags(cfg: StageConfig) -> dict:
  """The flags that would make this config: what a resumed run's own flags are compared with."""
  names = STAGE_FLAGS[cfg.stage]
  values = {name: getattr(cfg.train if name in TRAIN_FLAGS else cfg, name) for name in names}
  return {name: ",".join(v) if isinstance(v, tuple) else v for name, v in values.items()}


def _same(name: str, given, recorded) -> bool:
  if name in ("data", "init", "teacher") and given is not None and recorded is not None:
    return Path(given).resolve() == Path(recorded).resolve()
  if name == "lora_targets": return set(flag_value(name, given)) == set(recorded.split(","))
  return given == recorded


def resumed(saved: StageConfig, flags: dict, machine: Machine) -> StageConfig:
  """The config of a run being resumed: its record's, with only what RESUME_MAY_CHANGE taken from the flags. Any
  other flag must agree with the record."""
  check_flags(saved.stage, flags)
  recorded = as_flags(saved)
  for name, value in flags.items():
    if name in RUN_FLAGS or name in RESUME_MAY_CHANGE or _same(name, value, recorded.get(name)): continue
    raise UserError(f"{dash(name)} {value} does not match the run being resumed ({recorded.get(name)}); "
                    "drop it, or start a new run with another --out")
  changes = {name: flags[name] for name in RESUME_MAY_CHANGE if name in flags and name not in ("out", "devices")}
  train = replace(saved.train, **{k: v for k, v in changes.items() if k in TRAIN_FLAGS})
  check_counts(train)
  spec = flags["devices"] if "devices" in flags else ",".join(saved.train.devices) or None
  cfg = replace(saved, train=replace(train, devices=machine.parse_devices(spec)), **{k: v for k, v in changes.items() if k not in TRAIN_FLAGS})
  validate(cfg)
  check_machine(cfg.train, machine, resuming=True)
  return cfg


def chat_finetune_after(pretrain: PretrainConfig, machine: Machine) -> SFTConfig:
  """The default pipeline's second stage: chat fine-tuning of the model pretraining wrote, with the stage's defaults
  for its preset, and pretraining's batch size, compute dtype, devices, seed and W&B project."""
  t = pretrain.train
  flags = dict(init=pretrain.out, batch_size=t.batch_size, dtype=t.dtype, seed=t.seed)
  if pretrain.wandb: flags["wandb"] = pretrain.wandb
  if t.devices: flags["devices"] = ",".join(t.devices)
  return new_run("sft", flags, machine, init_preset=pretrain.size)
