"""`python -m aurora_tg.export CHECKPOINT OUTDIR`: write an Aurora model in Hugging Face's GPT-2 layout
(config.json + model.safetensors), which transformers' GPT2LMHeadModel and other tools load. With --quantize, an
Aurora checkpoint with quantized weights instead, which chat.py and the evaluation load directly."""
import argparse, sys
from aurora_tg import UserError


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m aurora_tg.export", description="Export an Aurora model as a Hugging Face GPT-2 folder.")
  p.add_argument("checkpoint", help="an Aurora run folder or checkpoint file (LoRA runs are merged into their base)")
  p.add_argument("outdir", help="the folder to write config.json, model.safetensors and aurora_tokenizer.json into")
  p.add_argument("--device", help="tinygrad backend to load the model on (default: tinygrad's pick)")
  p.add_argument("--quantize", help="float16 or int8: write an Aurora checkpoint with quantized weights into OUTDIR")
  args = p.parse_args(argv)
  try:
    from aurora_tg import checkpoint, devices, hf
    devices.select_device(args.device)
    model, tokenizer, record = checkpoint.load_model(args.checkpoint, args.quantize)
    if args.quantize: checkpoint.save_quantized(args.outdir, model, tokenizer, record, args.quantize)
    else: hf.save(model, args.outdir, tokenizer)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  cfg = model.cfg
  layout = f"Aurora checkpoint, {args.quantize} weights" if args.quantize else "GPT-2 layout"
  print(f"wrote {args.outdir}: {layout}, {cfg.n_layer} layers x {cfg.n_embd} wide, context {cfg.block_size}, vocabulary {cfg.vocab_size}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
