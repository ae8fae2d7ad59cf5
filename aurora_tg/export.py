"""`python -m aurora_tg.export CHECKPOINT OUT`: write an Aurora model for other tools.
- OUT a folder: Hugging Face's GPT-2 layout (config.json + model.safetensors), which transformers' GPT2LMHeadModel
  and other tools load. With --quantize, an Aurora checkpoint with quantized weights instead, which chat.py and the
  evaluation load directly; with --calibration, int8 weights there are rounded for the activations of calibration
  text (GPTQ), which keeps the model's outputs closer to float32's than rounding to nearest.
- OUT ending in .gguf: one GGUF file for llama.cpp, tokenizer included; --quantize float16 or int8 (llama.cpp's q8_0)."""
import argparse, sys
from pathlib import Path
import numpy as np
from aurora_tg import UserError

CALIBRATION_TOKENS = 8192  # the default chat model's int8 logits gained nothing from more (README)


def calibration_windows(spec: str | None, tokenizer, block_size: int, tokens: int) -> list[list[int]]:
  """About `tokens` tokens of text in windows of the model's context, spread evenly over the training split of a
  corpus (spec as train.py's --data; None: the embedded default corpus) prepared for the model's tokenizer."""
  from aurora_tg import data, prepare
  folder = prepare.prepared(spec, tokenizer)
  if data.read_manifest(folder)["identity"]["tokenizer"] != tokenizer.fingerprint():
    raise UserError(f"the shards in {folder} were made with another tokenizer than the model's; give --calibration text")
  text = np.concatenate(data.load_shards(folder)[0])
  count = min(max(1, tokens // block_size), len(text) // block_size)
  if count == 0: raise UserError(f"the calibration text has {len(text)} tokens, fewer than one window of {block_size}")
  return [text[start:start + block_size].tolist() for start in np.linspace(0, len(text) - block_size, count).astype(int)]


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m aurora_tg.export", description="Export an Aurora model as a Hugging Face GPT-2 folder or a GGUF file.")
  p.add_argument("checkpoint", help="an Aurora run folder or checkpoint file (LoRA runs are merged into their base)")
  p.add_argument("out", help="a folder for config.json, model.safetensors and aurora_tokenizer.json, or a FILE.gguf for llama.cpp")
  p.add_argument("--device", help="tinygrad backend to load the model on (default: tinygrad's pick)")
  p.add_argument("--quantize", help="float16 or int8: an Aurora checkpoint with quantized weights into OUT, or, for a .gguf, "
                                    "float16 or q8_0 weights (default float32)")
  p.add_argument("--calibration", nargs="?", const="", metavar="DATA",
                 help="round int8 weights for the activations of text (GPTQ) rather than to nearest: DATA as train.py's "
                      "--data, or no value for the embedded corpus (minutes for GPT-2 124M on a CPU)")
  p.add_argument("--calibration-tokens", type=int, default=CALIBRATION_TOKENS, metavar="N",
                 help=f"tokens of calibration text (default {CALIBRATION_TOKENS:,})")
  args = p.parse_args(argv)
  gguf_out = args.out.endswith(".gguf")
  try:
    if args.calibration is not None and (gguf_out or args.quantize != "int8"):
      raise UserError("--calibration is for --quantize int8 into an Aurora checkpoint")
    if args.calibration_tokens < 1: raise UserError(f"--calibration-tokens must be positive, got {args.calibration_tokens}")
    from aurora_tg import checkpoint, devices, hf
    from aurora_tg.quantize import quantize
    devices.select_device(args.device)
    if gguf_out:
      from aurora_tg import gguf_export
      gguf_export.weight_types(args.quantize)  # a bad kind is refused before the model loads
      model, tokenizer, record = checkpoint.load_model(args.checkpoint)
      if record.quantized: raise UserError(f"{args.checkpoint} holds {record.quantized} weights; export a GGUF from the float checkpoint it came from")
      counts = gguf_export.save(model, tokenizer, args.out, args.quantize, name=Path(args.checkpoint).name)
    else:
      model, tokenizer, record = checkpoint.load_model(args.checkpoint)
      if args.quantize:
        if record.quantized: raise UserError(f"{args.checkpoint} is already quantized to {record.quantized}")
        windows = None if args.calibration is None else \
          calibration_windows(args.calibration or None, tokenizer, model.cfg.block_size, args.calibration_tokens)
        quantize(model, args.quantize, windows)
        checkpoint.save_quantized(args.out, model, tokenizer, record, args.quantize)
      else: hf.save(model, args.out, tokenizer)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  cfg = model.cfg
  if gguf_out: layout = "GGUF for llama.cpp, " + ", ".join(f"{n} {kind}" for kind, n in counts.items()) + " tensors"
  elif args.quantize: layout = f"Aurora checkpoint, {args.quantize} weights"
  else: layout = "GPT-2 layout"
  print(f"wrote {args.out}: {layout}, {cfg.n_layer} layers x {cfg.n_embd} wide, context {cfg.block_size}, vocabulary {cfg.vocab_size}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
