"""Hugging Face GPT-2 checkpoints: read the `config.json` + `model.safetensors` (or `pytorch_model.bin`) layout that
OpenAI's GPT-2 weights ship in, and write it, so Aurora starts from GPT-2 and its models load in other tools."""
import json
from pathlib import Path
from tinygrad import Tensor, Device, dtypes
from tinygrad.nn.state import get_state_dict, load_state_dict, torch_load
from aurora_tg import UserError
from aurora_tg.formats.files import read_safetensors, write_atomically, write_safetensors
from aurora_tg.model import GPT, GPTConfig
from aurora_tg.data.tokenizer import Tokenizer

CONFIG_NAME, WEIGHT_NAMES = "config.json", ("model.safetensors", "pytorch_model.bin")
TOKENIZER_NAME = "aurora_tokenizer.json"  # Aurora's own tokenizer spec, beside the weights of an exported model
# GPT-2's Conv1D layers store (in, out), the transpose of Linear's (out, in); every other name matches Aurora's
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# what GPT-2 computes and Aurora too: GELU's tanh form, LayerNorm eps 1e-5, attention scaled by 1/sqrt(head size)
GPT2_BEHAVIOUR = {"activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "scale_attn_weights": True,
                  "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False}


def is_hf_folder(path: str | Path) -> bool: return (Path(path) / CONFIG_NAME).is_file()


def read_config(folder: Path) -> GPTConfig:
  try: hf = json.loads((folder / CONFIG_NAME).read_text())
  except (OSError, ValueError) as e: raise UserError(f"cannot read {folder / CONFIG_NAME}: {e}") from None
  if not isinstance(hf, dict) or hf.get("model_type") != "gpt2":
    raise UserError(f"{folder} is not a GPT-2 checkpoint: config.json has model_type {hf.get('model_type') if isinstance(hf, dict) else None!r}, not 'gpt2'")
  for key, value in GPT2_BEHAVIOUR.items():
    if hf.get(key, value) != value: raise UserError(f"{folder}: config.json sets {key} to {hf[key]!r}; Aurora's GPT-2 computes {value!r}")
  try:
    n_embd = int(hf["n_embd"])
    return GPTConfig(vocab_size=int(hf["vocab_size"]), block_size=int(hf["n_positions"]), n_layer=int(hf["n_layer"]),
                     n_head=int(hf["n_head"]), n_embd=n_embd, mlp_ratio=(hf.get("n_inner") or 4 * n_embd) / n_embd)
  except KeyError as e: raise UserError(f"{folder}: config.json lacks {e.args[0]}") from None
  except (TypeError, ValueError) as e: raise UserError(f"{folder}: config.json describes no valid GPT-2 ({e})") from None


def read_tensors(folder: Path) -> dict[str, Tensor]:
  """The checkpoint's tensors under Aurora's names, still on disk (safetensors) or in the unpickled file."""
  path = next((folder / n for n in WEIGHT_NAMES if (folder / n).is_file()), None)
  if path is None: raise UserError(f"{folder} has a config.json but neither {' nor '.join(WEIGHT_NAMES)}")
  try: tensors = read_safetensors(path)[0] if path.suffix == ".safetensors" else torch_load(str(path))
  except Exception as e: raise UserError(f"{path} is truncated or corrupt ({type(e).__name__}: {e})") from None
  # GPT2LMHeadModel prefixes "transformer."; its lm_head is wte (tied); attn.bias and attn.masked_bias are mask buffers
  named = {k.removeprefix("transformer."): v for k, v in tensors.items()}
  return {k: v for k, v in named.items() if k != "lm_head.weight" and not k.endswith((".attn.bias", ".attn.masked_bias"))}


def load_weights(folder: str | Path) -> GPT:
  """A GPT with the folder's weights, in float32 on the default device. Each tensor is copied (and transposed) once
  and the disk-backed source dropped right after, so even GPT-2 1.5B needs one copy of its weights in memory."""
  folder = Path(folder)
  cfg = read_config(folder)
  tensors = read_tensors(folder)
  model = GPT(cfg)  # its random initialisation stays lazy: load_state_dict replaces it unrealised
  expected = get_state_dict(model)
  missing = sorted(expected.keys() - tensors.keys(), key=lambda k: (len(k), k))
  if missing: raise UserError(f"{folder} lacks {len(missing)} GPT-2 tensor(s) that config.json implies, e.g. {missing[0]}")
  for name, t in expected.items():
    shape = t.shape[::-1] if name.endswith(CONV1D) else t.shape
    if tensors[name].shape != shape: raise UserError(f"{folder}: {name} has shape {tensors[name].shape}, config.json implies {shape}")
  for name in expected:
    moved = tensors[name].to(Device.DEFAULT).cast(dtypes.float32)
    tensors[name] = moved.T.contiguous() if name.endswith(CONV1D) else moved.contiguous()
  load_state_dict(model, {k: tensors[k] for k in expected}, verbose=False, consume=True)
  return model


def extend_vocab(model: GPT, n_vocab: int) -> GPT:
  """Grow the (tied) embedding to n_vocab rows for tokens the checkpoint never saw, such as the chat tokens. New rows
  are the mean embedding: their logits start at the average token's, so they neither dominate nor vanish."""
  old = model.wte.weight
  if n_vocab <= old.shape[0]: return model
  new_rows = old.mean(0, keepdim=True).expand(n_vocab - old.shape[0], old.shape[1])
  model.wte.weight = old.cat(new_rows).contiguous().realize()
  model.cfg = GPTConfig.from_dict({**model.cfg.to_dict(), "vocab_size": n_vocab})
  return model


def hf_config(cfg: GPTConfig, eot: int) -> dict:
  return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": cfg.vocab_size,
          "n_positions": cfg.block_size, "n_ctx": cfg.block_size, "n_embd": cfg.n_embd, "n_layer": cfg.n_layer,
          "n_head": cfg.n_head, "n_inner": cfg.mlp_hidden, **GPT2_BEHAVIOUR, "initializer_range": 0.02,
          "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "bos_token_id": eot, "eos_token_id": eot,
          "tie_word_embeddings": True}


def require_gpt2_layout(cfg: GPTConfig):
  """Refuse what GPT-2's layout (and llama.cpp's gpt2 graph) cannot compute: any other kind, one added later too."""
  gpt2_kinds = {"norm": "layernorm", "pos": "learned", "mlp": "gelu"}
  used = [getattr(cfg, key) for key, value in gpt2_kinds.items() if getattr(cfg, key) != value]
  if used: raise UserError(f"GPT-2's layout cannot express {', '.join(used)}; only GPT-2 architectures (layernorm, learned positions, gelu) export")


def save(model: GPT, out: str | Path, tokenizer: Tokenizer):
  """Write the Hugging Face layout into the folder out; a model without biases gets zero ones, which GPT-2 needs."""
  cfg = model.cfg
  require_gpt2_layout(cfg)
  tensors = {}
  for name, t in get_state_dict(model).items():
    tensors[name] = (t.T if name.endswith(CONV1D) else t).float().contiguous()
    if name.endswith(".weight") and not name.startswith(("wte", "wpe")) and not cfg.bias:
      tensors[name[:-len("weight")] + "bias"] = Tensor.zeros(t.shape[0]).contiguous()
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  write_safetensors(out / WEIGHT_NAMES[0], tensors, metadata={"format": "pt"})
  write_atomically(out / CONFIG_NAME, lambda tmp: Path(tmp).write_text(json.dumps(hf_config(cfg, tokenizer.eot), indent=2)))
  tokenizer.save(str(out / TOKENIZER_NAME))
