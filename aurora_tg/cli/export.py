"""`aurora export CHECKPOINT OUT`: write an Aurora model for other tools.
- OUT a folder: Hugging Face's GPT-2 layout (config.json + model.safetensors), which transformers' GPT2LMHeadModel
  and other tools load. With --quantize, an Aurora checkpoint with quantized weights instead, which chat.py and the
  evaluation load directly; with --calibrate, int8 weights there are rounded for the activations of calibration
  text (GPTQ), which keeps the model's outputs closer to float32's than rounding to nearest.
- OUT ending in .gguf: one GGUF file for llama.cpp, tokenizer included; --quantize float16 or int8 (llama.cpp's q8_0)."""
import argparse
from pathlib import Path
import numpy as np
from aurora_tg import UserError
from aurora_tg.cli.errors import run

CALIBRATION_TOKENS = 8192  # the default chat model's int8 logits gained nothing from more (README)


def calibration_windows(spec: str | None, tokenizer, block_size: int, tokens: int) -> list[list[int]]:
  """About `tokens` tokens of text in windows of the model's context, spread evenly over the training split of a
  corpus (spec as train.py's --data; None: the embedded default corpus) prepared for the model's tokenizer."""
  from aurora_tg.data import prepare
  shards = [shard for shard in prepare.shards_for(spec, tokenizer)[0] if len(shard) >= block_size]  # memory-mapped, read in place
  if not shards: raise UserError(f"the calibration text has no training window of {block_size} tokens; give a longer text")
  # windows at evenly spaced positions of the shards laid end to end, each inside its shard
  starts = np.cumsum([0] + [len(shard) - block_size + 1 for shard in shards])
  count = min(max(1, tokens // block_size), int(starts[-1]))
  windows = []
  for position in np.linspace(0, starts[-1] - 1, count).astype(int):
    i = int(np.searchsorted(starts, position, side="right")) - 1
    windows.append(shards[i][position - starts[i]:position - starts[i] + block_size].tolist())
  return windows


def check_calibration(args, gguf_out: bool):
  if (args.calibration_data or args.calibration_tokens is not None) and not args.calibrate:
    raise UserError("--calibration-data and --calibration-tokens go with --calibrate")
  if args.calibrate and (gguf_out or args.quantize != "int8"):
    raise UserError("--calibrate is for --quantize int8 into an Aurora checkpoint")
  if args.calibration_tokens is not None and args.calibration_tokens < 1:
    raise UserError(f"--calibration-tokens must be positive, got {args.calibration_tokens}")


def refuse_adapter_layers(path: str, model, layout: str):
  from aurora_tg.adapters import has_adapters
  if has_adapters(model):
    raise UserError(f"{path} has adapter layers, which {layout} has no place for (they are extra layers, not a change of "
                    "weights); export it with --quantize into an Aurora checkpoint, or fine-tune with --stage lora, whose "
                    "adapters merge into the weights")


def parser(prog: str = "aurora export") -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=prog, description="Export an Aurora model as a Hugging Face GPT-2 folder or a GGUF file.")
  p.add_argument("checkpoint", help="an Aurora run folder or checkpoint file (LoRA runs are merged into their base)")
  p.add_argument("out", help="a folder for config.json, model.safetensors and aurora_tokenizer.json, or a FILE.gguf for llama.cpp")
  p.add_argument("--device", help="tinygrad backend to load the model on (default: tinygrad's pick)")
  p.add_argument("--quantize", help="float16 or int8: an Aurora checkpoint with quantized weights into OUT, or, for a .gguf, "
                                    "float16 or q8_0 weights (default float32)")
  p.add_argument("--calibrate", action="store_true", help="with --quantize int8: round the weights for the activations of "
                                                           "calibration text (GPTQ), not to nearest (minutes for GPT-2 124M on a CPU)")
  p.add_argument("--calibration-data", metavar="DATA", help="the calibration text, as train.py's --data (default: the embedded corpus)")
  p.add_argument("--calibration-tokens", type=int, metavar="N", help=f"tokens of calibration text (default {CALIBRATION_TOKENS:,})")
  return p


def export_command(args) -> int:
  gguf_out = args.out.endswith(".gguf")
  check_calibration(args, gguf_out)
  from aurora_tg.backends import devices  # tinygrad after parsing, so --help stays instant
  from aurora_tg.formats import checkpoint, huggingface
  from aurora_tg.inference.loading import load_model
  from aurora_tg.inference.quantize import check_kind, quantize
  if args.quantize and not gguf_out: check_kind(args.quantize)  # refused before a model loads
  devices.select_device(args.device)
  if gguf_out:
    from aurora_tg.formats import gguf
    gguf.weight_types(args.quantize)  # a bad kind is refused before the model loads
    model, tokenizer, record = load_model(args.checkpoint)
    refuse_adapter_layers(args.checkpoint, model, "a GGUF file")
    if record.quantized: raise UserError(f"{args.checkpoint} holds {record.quantized} weights; export a GGUF from the float checkpoint it came from")
    counts = gguf.save(model, tokenizer, args.out, args.quantize, name=Path(args.checkpoint).name)
    layout = "GGUF for llama.cpp, " + ", ".join(f"{n} {kind}" for kind, n in counts.items()) + " tensors"
  else:
    model, tokenizer, record = load_model(args.checkpoint)
    if args.quantize:
      if record.quantized: raise UserError(f"{args.checkpoint} is already quantized to {record.quantized}")
      windows = calibration_windows(args.calibration_data, tokenizer, model.cfg.block_size,
                                    args.calibration_tokens or CALIBRATION_TOKENS) if args.calibrate else None
      quantize(model, args.quantize, windows)
      checkpoint.save_quantized(args.out, model, tokenizer, record, args.quantize)
      layout = f"Aurora checkpoint, {args.quantize} weights"
    else:
      refuse_adapter_layers(args.checkpoint, model, "GPT-2's layout")
      huggingface.save(model, args.out, tokenizer)
      layout = "GPT-2 layout"
  cfg = model.cfg
  print(f"wrote {args.out}: {layout}, {cfg.n_layer} layers x {cfg.n_embd} wide, context {cfg.block_size}, vocabulary {cfg.vocab_size}")
  return 0


def main(argv=None, prog: str = "aurora export") -> int:
  args = parser(prog).parse_args(argv)
  return run(lambda: export_command(args))
