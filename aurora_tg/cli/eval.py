"""`aurora eval CHECKPOINT --task hellaswag|bpb`: HellaSwag accuracy, or bits per byte on a text source.

CHECKPOINT is anything chat.py takes: a run folder, a checkpoint, a Hugging Face GPT-2 folder or a hub id (gpt2)."""
import argparse, sys, time
from aurora_tg import UserError
from aurora_tg.backends import devices
from aurora_tg.cli.errors import run
from aurora_tg.data import prepare
from aurora_tg.inference.loading import load_model
from aurora_tg.tools.evaluation import bits_per_byte, hellaswag, hellaswag_path, read_hellaswag


def parser(prog: str = "aurora eval") -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=prog, description="Evaluate a checkpoint: HellaSwag accuracy or bits per byte on a text source.")
  p.add_argument("checkpoint", help="a run folder, checkpoint, Hugging Face GPT-2 folder or hub model id (gpt2)")
  p.add_argument("--task", required=True, help="hellaswag or bpb")
  p.add_argument("--data", help="hellaswag: a local hellaswag_val.jsonl (default: downloaded once into the cache); "
                                "bpb: a text source, as train.py --data takes it")
  p.add_argument("--limit", type=int, help="hellaswag: the first N items only")
  p.add_argument("--max-tokens", type=int, help="bpb: the first N tokens of the source only")
  p.add_argument("--batch-size", type=int, default=8, help="items (hellaswag) or windows (bpb) per batch (default 8)")
  p.add_argument("--device", help="tinygrad backend (default: tinygrad's pick)")
  p.add_argument("--quantize", help="float16 or int8: evaluate with quantized weights")
  return p


def eval_command(args) -> int:
  if args.task not in ("hellaswag", "bpb"): raise UserError(f"unknown task {args.task!r}; choose hellaswag or bpb")
  for name in ("limit", "max_tokens", "batch_size"):
    if getattr(args, name) is not None and getattr(args, name) < 1: raise UserError(f"--{name.replace('_', '-')} must be at least 1")
  devices.select_device(args.device)
  source = hellaswag_path(args.data) if args.task == "hellaswag" else None
  if args.task == "bpb" and not args.data: raise UserError("--task bpb needs --data SOURCE: the text to measure")
  model, tokenizer, _ = load_model(args.checkpoint, args.quantize)
  if args.task == "hellaswag":
    result = hellaswag(model, tokenizer, read_hellaswag(source, args.limit), args.batch_size, log=status)
    print(f"\nHellaSwag ({result['items']:,} items): acc {result['acc']:.4f} ± {result['acc_stderr']:.4f} | "
          f"acc_norm {result['acc_norm']:.4f} ± {result['acc_norm_stderr']:.4f}")
  else:
    folder = prepare.prepared(args.data, tokenizer, max_tokens=args.max_tokens)
    result = bits_per_byte(model, tokenizer, folder, args.batch_size, log=status)
    print(f"\nbits per byte: {result['bpb']:.4f} over {result['tokens']:,} tokens, {result['bytes']:,} bytes")
  return 0


def status(line: str):
  """A progress line: redrawn in place on a terminal, printed every 10 seconds (and at the end) otherwise."""
  if sys.stdout.isatty(): print("\r" + line, end="", flush=True)
  elif time.monotonic() - getattr(status, "last", 0.0) > 10:
    status.last = time.monotonic()
    print(line, flush=True)


def main(argv=None, prog: str = "aurora eval") -> int:
  args = parser(prog).parse_args(argv)
  return run(lambda: eval_command(args))
