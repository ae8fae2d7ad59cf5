"""Checkpoints: one safetensors file holding model weights, optimizer state and the run's record (RunRecord)."""
import json, os, re
from dataclasses import dataclass, replace
from pathlib import Path
from tinygrad import Tensor
from tinygrad.nn.state import get_state_dict
from aurora_tg import UserError, adapters, config, lora
from aurora_tg.backends import devices
from aurora_tg.formats import huggingface as hf
from aurora_tg.data import hub
from aurora_tg.config import StageConfig
from aurora_tg.formats.files import read_safetensors, safetensors_header, write_atomically, write_safetensors
from aurora_tg.model import GPT, GPTConfig
from aurora_tg.data.tokenizer import Tokenizer, gpt2

CHECKPOINT_NAME = "checkpoint.safetensors"
TOKENIZER_NAME = "tokenizer.json"
BEST_NAME = "best.safetensors"  # --keep-best: the checkpoint of the lowest validation loss
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")  # owner/name, or a name alone (gpt2)
FORMAT_VERSION = 3  # 1: the untyped dict of Aurora 0.1 (no "version" key), read by _from_version_1; 2: some run fields
                    # named otherwise (LoRA's under "lora", compute_dtype), read by config.from_dict


@dataclass(frozen=True)
class RunRecord:
  """What a checkpoint says of its run: enough to load the model, resume the run and trace where it came from."""
  stage: str                       # pretrain, sft, lora, adapter, dpo, distill; "gpt2" for a model imported from Hugging Face
  model: GPTConfig
  tokenizer: str                   # fingerprint of the tokenizer.json that must lie beside the checkpoint
  run: StageConfig | None = None   # the resolved stage config: settings and lineage; None for imported models
  step: int = 0
  rng: dict | None = None          # the batch sampler's state
  elapsed_s: float = 0.0           # training time so far, so a resumed run's clock goes on
  wandb_id: str | None = None      # the Weights & Biases run a resumed run keeps logging to
  best_val_loss: float | None = None  # the lowest validation loss so far (--keep-best)
  data_position: dict | None = None   # where a sequential pass over the data is (--data-order sequential)
  quantized: str | None = None        # float16 or int8: written by `python -m aurora_tg.export --quantize`, for inference
  version: int = FORMAT_VERSION

  @property
  def lineage(self) -> dict[str, str]:
    """The checkpoints this run started from: init (for a run that saves adapters alone, also the base it needs) and
    the distillation teacher."""
    out = {k: getattr(self.run, k) for k in ("init", "teacher") if getattr(self.run, k, None)}
    return out | ({"base": out["init"]} if self.run is not None and self.run.adapters_only else {})

  def to_json(self, run_dir: str | Path) -> str:
    return json.dumps({"version": self.version, "stage": self.stage, "model": self.model.to_dict(), "tokenizer": self.tokenizer,
                       "run": self.run.to_dict(run_dir) if self.run else None, "step": self.step, "rng": self.rng,
                       "elapsed_s": self.elapsed_s, "wandb_id": self.wandb_id, "best_val_loss": self.best_val_loss,
                       "data_position": self.data_position, "quantized": self.quantized})

  @classmethod
  def from_json(cls, text: str, run_dir: str | Path) -> "RunRecord":
    d = json.loads(text)
    if "version" not in d: return _from_version_1(d, run_dir)
    if d["version"] > FORMAT_VERSION: raise UserError(f"record format {d['version']} is newer than this Aurora's ({FORMAT_VERSION}): update Aurora")
    run = config.from_dict(d["run"], run_dir) if d["run"] else None
    return cls(d["stage"], GPTConfig.from_dict(d["model"]), d["tokenizer"], run, d["step"], d["rng"], d["elapsed_s"], d["wandb_id"],
               d.get("best_val_loss"), d.get("data_position"), d.get("quantized"))


def _from_version_1(d: dict, run_dir: str | Path) -> RunRecord:
  """Aurora 0.1's record: {config, tokenizer, stage, step, rng, settings, args: {size, data, tokenizer, optimizer,
  init, teacher, freeze, norm, pos, mlp}}, plus init, teacher, or LoRA's lora and base: checkpoint files, as the
  working directory named them. Distillation's alpha and temperature were not recorded: they become the defaults."""
  model, args = GPTConfig.from_dict(d["config"]), d.get("args") or {}
  folder = lambda path: str(Path(path).parent if Path(path).name == CHECKPOINT_NAME else path)  # as --init names it
  run = None
  if "settings" in d:  # records written by training (not hand-made ones) hold settings and the arguments
    common = dict(out=str(run_dir), train=config.TrainSettings.from_dict(d["settings"]), data=args.get("data"))
    shape = dict(size=args.get("size") or config.preset_of(model), norm=model.norm, pos=model.pos, mlp=model.mlp)
    if d["stage"] == "pretrain":
      run = config.PretrainConfig(**common, **shape, tokenizer=args.get("tokenizer") or ("bpe" if "vocab_size" in config.PRESETS[shape["size"]] else "gpt2"))
    elif d["stage"] == "sft": run = config.SFTConfig(**common, init=folder(d["init"]), freeze=args.get("freeze") or 0)
    elif d["stage"] == "lora":
      run = config.LoRAStageConfig(**common, init=folder(d["base"]), **{f"lora_{k}": tuple(v) if k == "targets" else v for k, v in d["lora"].items()})
    elif d["stage"] == "distill": run = config.DistillConfig(**common, **shape, teacher=folder(d["teacher"]), init=args.get("init"))
  return RunRecord(d["stage"], model, d["tokenizer"], run, d.get("step", 0), d.get("rng"))


def optimizer_state(optimizer, params: list[Tensor]) -> dict[str, Tensor]:
  """The optimizer's own tensors (moments, step counters, learning rate), without the model weights it points at."""
  param_ids = {id(p) for p in params}
  return {k: v for k, v in get_state_dict(optimizer).items() if id(v) not in param_ids}


def save(run_dir: str | Path, model_state: dict[str, Tensor], optim_state: dict[str, Tensor], record: RunRecord, keep: int = 0) -> Path:
  """Write atomically (a crash mid-write leaves the previous checkpoint intact), with each tensor's checksum. keep:
  also keep this one as checkpoint-<step>.safetensors, and that many of them (the oldest go)."""
  path = Path(run_dir) / CHECKPOINT_NAME
  path.parent.mkdir(parents=True, exist_ok=True)
  tensors = {f"model.{k}": one_copy(v) for k, v in model_state.items()} | {f"optim.{k}": one_copy(v) for k, v in optim_state.items()}
  write_safetensors(path, tensors, metadata={"aurora": record.to_json(run_dir)})
  if keep:
    link(path, path.with_name(f"checkpoint-{record.step:06d}.safetensors"))
    for old in sorted(path.parent.glob("checkpoint-*.safetensors"))[:-keep]: old.unlink()
  return path


def save_quantized(run_dir: str | Path, model: GPT, tokenizer: Tokenizer, record: RunRecord, quantized: str) -> Path:
  """A quantized model for inference, with its tokenizer and no optimizer state (inference/loading.py reads it)."""
  Path(run_dir).mkdir(parents=True, exist_ok=True)
  tokenizer.save(str(Path(run_dir) / TOKENIZER_NAME))
  return save(run_dir, get_state_dict(model), {}, replace(record, quantized=quantized))


def link(source: Path, target: Path):
  """target as another name of source's file (no copy): the next save replaces source's name, not the file."""
  write_atomically(target, lambda tmp: os.link(source, tmp))


def one_copy(t: Tensor) -> Tensor:
  """A data-parallel tensor's copy on its first device (every device holds the same); others as they are."""
  return t.to(t.device[0]) if isinstance(t.device, tuple) else t


def locate(spec: str | Path) -> Path:
  """What --init or --checkpoint names: a path on disk, or else a Hugging Face hub model id (gpt2, gpt2-xl,
  openai-community/gpt2-medium), fetched into the hub's cache. A missing path under an existing folder (runs/x) is
  not looked up on the hub."""
  path = Path(spec)
  if path.exists() or not HUB_ID.fullmatch(str(spec)) or (len(path.parts) > 1 and Path(path.parts[0]).is_dir()): return path
  return hub.model_folder(str(spec))


def resolve(path: str | Path) -> Path:
  """Accept a run folder, a checkpoint file, or a Hugging Face GPT-2 folder (returned as it is)."""
  p = Path(path)
  return p / CHECKPOINT_NAME if p.is_dir() and not hf.is_hf_folder(p) else p


def run_folder(path: str | Path) -> Path:
  """The folder a checkpoint lives in, which names the runs fine-tuned from it."""
  p = resolve(path)
  return p if p.is_dir() else p.parent


def _corrupt(p: Path, e: Exception) -> UserError:
  return UserError(f"checkpoint {p} is corrupt or not an Aurora checkpoint ({type(e).__name__}: {e})")


def read_record(path: str | Path) -> RunRecord:
  """The run record alone, from the file's header: no tensor is read."""
  p = resolve(path)
  if not p.is_file(): raise UserError(f"no checkpoint at {path}")
  try: return RunRecord.from_json(safetensors_header(p)["__metadata__"]["aurora"], p.parent)
  except UserError: raise
  except Exception as e: raise _corrupt(p, e) from None


def load(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Tensor], RunRecord]:
  """-> (model tensors, optimizer tensors, run record). Tensors stay on disk until copied into the model."""
  p = resolve(path)
  if not p.is_file(): raise UserError(f"no checkpoint at {path}")
  try:
    tensors, metadata = read_safetensors(p)
    record = RunRecord.from_json(metadata["aurora"], p.parent)
  except UserError: raise
  except Exception as e: raise _corrupt(p, e) from None
  model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
  optim = {k[len("optim."):]: v for k, v in tensors.items() if k.startswith("optim.")}
  return model, optim, record


def copy_into(targets: dict[str, Tensor], saved: dict[str, Tensor], what: str):
  """Assign saved tensors into live ones (same names and shapes), on the live tensors' devices: a checkpoint holds one
  copy of each tensor, so one written by any number of devices loads on any other number."""
  missing, extra = targets.keys() - saved.keys(), saved.keys() - targets.keys()
  if missing or extra:
    raise UserError(f"{what} in the checkpoint does not match: missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]}")
  for name, t in targets.items():
    if saved[name].shape != t.shape:
      raise UserError(f"{what} tensor {name} has shape {saved[name].shape} in the checkpoint, {t.shape} here")
    t.assign(devices.like(saved[name].to(one_copy(t).device).cast(t.dtype), t))
  Tensor.realize(*targets.values())


def newest(root: str | Path = "runs") -> Path:
  """The most recently written checkpoint under root: what chat.py talks to by default."""
  found = sorted(Path(root).glob(f"**/{CHECKPOINT_NAME}"), key=lambda p: p.stat().st_mtime)
  if not found: raise UserError(f"no trained model in {root}/: train one with `python train.py`, or pass --checkpoint PATH")
  return found[-1]


def model_config(path: str | Path) -> GPTConfig:
  """The shape of the model at path (an Aurora checkpoint, a Hugging Face folder or hub id), without loading its weights."""
  path = locate(path)
  return hf.read_config(Path(path)) if hf.is_hf_folder(path) else read_record(path).model


def saved_tokenizer(path: str | Path, record: RunRecord) -> Tokenizer:
  """The tokenizer beside a checkpoint, checked to be the one it was trained with."""
  spec = resolve(path).parent / TOKENIZER_NAME
  tokenizer = Tokenizer.load(str(spec))
  if tokenizer.fingerprint() != record.tokenizer: raise UserError(f"{spec} is not the tokenizer this checkpoint was trained with")
  return tokenizer


def load_model(path: str | Path) -> tuple[GPT, Tokenizer, RunRecord]:
  """A float model with the tokenizer saved beside its checkpoint, and the run record. A Hugging Face GPT-2 folder
  comes with GPT-2's tokenizer (or the one an Aurora export left), its vocabulary grown to hold the chat tokens; a
  LoRA run's adapters are folded into its base; an adapter-layer run's are added to its base. Quantized exports are for inference (aurora_tg/inference/loading.py)."""
  path = locate(path)
  if hf.is_hf_folder(path):
    spec = Path(path) / hf.TOKENIZER_NAME
    tokenizer = Tokenizer.load(str(spec)) if spec.is_file() else gpt2()
    model = hf.extend_vocab(hf.load_weights(path), tokenizer.n_vocab)
    return model, tokenizer, RunRecord("gpt2", model.cfg, tokenizer.fingerprint())
  weights, _, record = load(path)
  tokenizer = saved_tokenizer(path, record)
  if record.quantized:
    raise UserError(f"{path} holds {record.quantized} weights for inference only; start from the float checkpoint it came from")
  if "base" in record.lineage:  # an adapter file: load its base, add the adapters (LoRA's fold into it)
    model, _, _ = load_model(record.lineage["base"])
    if getattr(record.run, "lora", None):
      lora.add_adapters(model, record.run.lora)
      copy_into(lora.adapter_state(model), weights, "LoRA adapters")
      lora.merge_adapters(model)
    else:
      adapters.add_adapters(model, record.run.adapter_size)
      copy_into(adapters.adapter_state(model), weights, "adapter layers")
    return model, tokenizer, record
  model = GPT(record.model)
  adapters.add_saved_adapters(model, weights)
  copy_into(get_state_dict(model), weights, "model weights")
  return model, tokenizer, record
