"""`aurora prepare SOURCE --out DIR`: tokenize a corpus into the token shards `aurora train --data DIR` trains on."""
import argparse
from pathlib import Path
from aurora_tg import UserError
from aurora_tg.cli.errors import run
from aurora_tg.data.prepare import SHARD_TOKENS, make_tokenizer, prepare
from aurora_tg.data.shards import MANIFEST, read_manifest
from aurora_tg.data.sources import open_source
from aurora_tg.data.tokenizer import Tokenizer


def parser(prog: str = "aurora prepare") -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=prog, description="Tokenize a corpus into token shards that train.py --data DIR trains on.")
  p.add_argument("source", help="a text file, a folder, .jsonl(.gz/.zst), .parquet, hf:REPO[:FILES], fineweb-edu, tinystories")
  p.add_argument("--out", required=True, help="the folder for the shards, manifest.json and tokenizer.json")
  p.add_argument("--tokenizer", default="gpt2", help="gpt2 (default), bpe (trained on a sample of the source), or a tokenizer.json")
  p.add_argument("--vocab-size", type=int, default=8192, help="bpe: its vocabulary (default 8192)")
  p.add_argument("--bpe-sample-mb", type=float, default=100, help="bpe: megabytes of text it trains on (default 100)")
  p.add_argument("--workers", type=int, default=0, help="tokenizing processes (default: one per core)")
  p.add_argument("--max-tokens", type=int, help="stop after this many tokens")
  p.add_argument("--text-field", default="text", help="the JSON or parquet field holding the text (default text)")
  p.add_argument("--shard-tokens", type=int, default=SHARD_TOKENS, help=f"tokens a shard (default {SHARD_TOKENS:,})")
  return p


def prepare_command(args) -> int:
  if args.workers < 0: raise UserError(f"--workers must be 0 (one per core) or more, got {args.workers}")
  for name in ("max_tokens", "shard_tokens"):
    if getattr(args, name) is not None and getattr(args, name) < 1: raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
  out = Path(args.out)
  source = open_source(args.source, args.text_field)
  if (out / MANIFEST).exists(): tokenizer = Tokenizer.load(str(out / "tokenizer.json"))  # a resumed one keeps its own
  else: tokenizer = make_tokenizer(args.tokenizer, source, args.vocab_size, args.bpe_sample_mb)
  prepare(source, tokenizer, out, args.workers, args.max_tokens, args.shard_tokens)
  m = read_manifest(out)
  print(f"{out}: {m['tokens']['train']:,} train and {m['tokens']['val']:,} validation tokens in "
        f"{len(m['shards']['train']) + len(m['shards']['val'])} shards; train with: python train.py --data {out}")
  return 0


def main(argv=None, prog: str = "aurora prepare") -> int:
  args = parser(prog).parse_args(argv)
  return run(lambda: prepare_command(args), interrupted="interrupted; run the same command again to resume")
