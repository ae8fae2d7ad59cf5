"""Pretrain an Aurora model: `python train.py` trains a small model on Python's own documentation."""
import argparse, sys

from aurora_tg import UserError


def parse_args(argv=None):
  p = argparse.ArgumentParser(description="Train an Aurora GPT model.")
  p.add_argument("--device", help="tinygrad backend: CPU, CL, CUDA, METAL, ... (default: tinygrad's pick)")
  p.add_argument("--data", help="a text file, a folder of .txt/.md files, or a .jsonl with a 'text' field "
                                "(default: Python's bundled documentation)")
  p.add_argument("--out", help="run folder for checkpoint, tokenizer and metrics (default: runs/<size>)")
  p.add_argument("--size", help="model preset: tiny, small (default), medium, gpt2, gpt2-medium, gpt2-large, gpt2-xl")
  p.add_argument("--steps", type=int, help="optimizer steps (default: the preset's)")
  p.add_argument("--batch-size", type=int, help="sequences per micro-batch")
  p.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step")
  p.add_argument("--lr", type=float, help="peak learning rate")
  p.add_argument("--eval-every", type=int, help="steps between validation evaluations and checkpoints")
  p.add_argument("--tokenizer", choices=("bpe", "gpt2"), help="own BPE trained on the data, or GPT-2's (default: by preset)")
  p.add_argument("--norm", choices=("layernorm", "rmsnorm"))
  p.add_argument("--pos", choices=("learned", "rope"))
  p.add_argument("--mlp", choices=("gelu", "swiglu"))
  p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
  p.add_argument("--seed", type=int, default=1337)
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  try:
    from aurora_tg import run  # imports tinygrad: after argument parsing, so --help stays instant
    return run.train(args)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:  # before training starts (tokenizing, compiling): nothing to save yet
    print("interrupted before training started; nothing was saved", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
