"""`python -m aurora_tg.export CHECKPOINT OUT`: write an Aurora model for other tools.
- OUT a folder: Hugging Face's GPT-2 layout (config.json + model.safetensors), which transformers' GPT2LMHeadModel
  and other tools load. With --quantize, an Aurora checkpoint with quantized weights instead, which chat.py and the
  evaluation load directly.
- OUT ending in .gguf: one GGUF file for llama.cpp, tokenizer included; --quantize float16 or int8 (llama.cpp's q8_0)."""
import argparse, sys
from pathlib import Path
from aurora_tg import UserError


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m aurora_tg.export", description="Export an Aurora model as a Hugging Face GPT-2 folder or a GGUF file.")
  p.add_argument("checkpoint", help="an Aurora run folder or checkpoint file (LoRA runs are merged into their base)")
  p.add_argument("out", help="a folder for config.json, model.safetensors and aurora_tokenizer.json, or a FILE.gguf for llama.cpp")
  p.add_argument("--device", help="tinygrad backend to load the model on (default: tinygrad's pick)")
  p.add_argument("--quantize", help="float16 or int8: an Aurora checkpoint with quantized weights into OUT, or, for a .gguf, "
                                    "float16 or q8_0 weights (default float32)")
  args = p.parse_args(argv)
  gguf_out = args.out.endswith(".gguf")
  try:
    from aurora_tg import checkpoint, devices, hf
    devices.select_device(args.device)
    if gguf_out:
      from aurora_tg import gguf_export
      gguf_export.weight_types(args.quantize)  # a bad kind is refused before the model loads
      model, tokenizer, record = checkpoint.load_model(args.checkpoint)
      if record.quantized: raise UserError(f"{args.checkpoint} holds {record.quantized} weights; export a GGUF from the float checkpoint it came from")
      counts = gguf_export.save(model, tokenizer, args.out, args.quantize, name=Path(args.checkpoint).name)
    else:
      model, tokenizer, record = checkpoint.load_model(args.checkpoint, args.quantize)
      if args.quantize: checkpoint.save_quantized(args.out, model, tokenizer, record, args.quantize)
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
