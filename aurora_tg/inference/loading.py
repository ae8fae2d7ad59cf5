"""A model loaded for inference: any checkpoint formats/checkpoint.py reads, and quantized exports, with the weights
quantized as they load when asked."""
from pathlib import Path
from tinygrad.nn.state import get_state_dict
from aurora_tg import UserError, adapters
from aurora_tg.data.tokenizer import Tokenizer
from aurora_tg.formats import checkpoint, huggingface
from aurora_tg.formats.checkpoint import RunRecord
from aurora_tg.inference.quantize import check_kind, quantize
from aurora_tg.model import GPT


def load_model(path: str | Path, quantized: str | None = None) -> tuple[GPT, Tokenizer, RunRecord]:
  """The model at path (a run folder or checkpoint, a Hugging Face folder or hub id), its tokenizer and record.
  quantized (float16 or int8): quantize the weights as they load. A checkpoint exported quantized loads as saved."""
  if quantized is not None: check_kind(quantized)
  path = checkpoint.locate(path)
  saved = None if huggingface.is_hf_folder(path) else checkpoint.read_record(path)
  if saved is None or not saved.quantized:
    model, tokenizer, record = checkpoint.load_model(path)
    return (quantize(model, quantized) if quantized else model), tokenizer, record
  if quantized not in (None, saved.quantized): raise UserError(f"{path} is already quantized to {saved.quantized}; it cannot become {quantized}")
  weights, _, record = checkpoint.load(path)
  model = quantize(GPT(record.model), record.quantized)  # LoRA's adapters were folded in before the export
  adapters.add_saved_adapters(model, weights)  # adapter layers stay float32
  checkpoint.copy_into(get_state_dict(model), weights, "quantized model weights")
  return model, checkpoint.saved_tokenizer(path, record), record
