"""Checkpoints: one safetensors file holding model weights, optimizer state and a JSON record of the run."""
import json
from pathlib import Path
from tinygrad import Tensor
from tinygrad.nn.state import safe_save, safe_load, safe_load_metadata, get_state_dict
from aurora_tg import UserError, devices, hf, write_atomically
from aurora_tg.model import GPT, GPTConfig
from aurora_tg.tokenizer import Tokenizer, gpt2

CHECKPOINT_NAME = "checkpoint.safetensors"
TOKENIZER_NAME = "tokenizer.json"


def optimizer_state(optimizer, params: list[Tensor]) -> dict[str, Tensor]:
  """The optimizer's own tensors (moments, step counters, learning rate), without the model weights it points at."""
  param_ids = {id(p) for p in params}
  return {k: v for k, v in get_state_dict(optimizer).items() if id(v) not in param_ids}


def save(run_dir: str | Path, model_state: dict[str, Tensor], optim_state: dict[str, Tensor], record: dict) -> Path:
  """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
  path = Path(run_dir) / CHECKPOINT_NAME
  path.parent.mkdir(parents=True, exist_ok=True)
  tensors = {f"model.{k}": v for k, v in model_state.items()} | {f"optim.{k}": v for k, v in optim_state.items()}
  write_atomically(path, lambda tmp: safe_save({k: one_copy(v).realize() for k, v in tensors.items()}, tmp,
                                                metadata={"aurora": json.dumps(record)}))
  return path


def one_copy(t: Tensor) -> Tensor:
  """A data-parallel tensor's copy on its first device (every device holds the same); others as they are."""
  return t.to(t.device[0]) if isinstance(t.device, tuple) else t


def resolve(path: str | Path) -> Path:
  """Accept a run folder, a checkpoint file, or a Hugging Face GPT-2 folder (returned as it is)."""
  p = Path(path)
  return p / CHECKPOINT_NAME if p.is_dir() and not hf.is_hf_folder(p) else p


def run_folder(path: str | Path) -> Path:
  """The folder a checkpoint lives in, which names the runs fine-tuned from it."""
  p = resolve(path)
  return p if p.is_dir() else p.parent


def read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict]:
  """-> (tensors, left on disk; the header's metadata). tinygrad's safe_load does not notice a truncated file."""
  _, _, header = safe_load_metadata(str(path))
  if path.stat().st_size < max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0):
    raise ValueError("file is truncated")
  return safe_load(str(path)), header.get("__metadata__", {})


def load(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Tensor], dict]:
  """-> (model tensors, optimizer tensors, run record). Tensors stay on disk until copied into the model."""
  p = resolve(path)
  if not p.is_file(): raise UserError(f"no checkpoint at {path}")
  try:
    tensors, metadata = read_safetensors(p)
    record = json.loads(metadata["aurora"])
  except Exception as e:
    raise UserError(f"checkpoint {p} is corrupt or not an Aurora checkpoint ({type(e).__name__}: {e})") from None
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


def load_model(path: str | Path) -> tuple[GPT, Tokenizer, dict]:
  """A model ready for inference, with the tokenizer saved beside its checkpoint, and the run record. A Hugging Face
  GPT-2 folder comes with GPT-2's tokenizer (or the one an Aurora export left), its vocabulary grown to hold the chat tokens."""
  if hf.is_hf_folder(path):
    spec = Path(path) / hf.TOKENIZER_NAME
    tokenizer = Tokenizer.load(str(spec)) if spec.is_file() else gpt2()
    model = hf.extend_vocab(hf.load_weights(path), tokenizer.n_vocab)
    return model, tokenizer, {"stage": "gpt2", "config": model.cfg.to_dict(), "tokenizer": tokenizer.fingerprint()}
  weights, _, record = load(path)
  tokenizer = Tokenizer.load(str(resolve(path).parent / TOKENIZER_NAME))
  if tokenizer.fingerprint() != record["tokenizer"]:
    raise UserError(f"{resolve(path).parent / TOKENIZER_NAME} is not the tokenizer this checkpoint was trained with")
  if record.get("stage") == "lora":  # an adapter file: load its base, add the adapters, fold them in
    from aurora_tg import lora
    model, _, _ = load_model(record["base"])
    lora.add_adapters(model, lora.LoRAConfig(**{**record["lora"], "targets": tuple(record["lora"]["targets"])}))
    copy_into(lora.adapter_state(model), weights, "LoRA adapters")
    lora.merge_adapters(model)
    return model, tokenizer, record
  model = GPT(GPTConfig.from_dict(record["config"]))
  copy_into(get_state_dict(model), weights, "model weights")
  return model, tokenizer, record
