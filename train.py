"""Pretrain an Aurora model: `python train.py` trains a small model on Python's own documentation, then fine-tunes it
for chat (the same command as `aurora train`, aurora_tg/cli/train.py)."""
import sys
from aurora_tg.cli.train import main

if __name__ == "__main__": sys.exit(main(prog="train.py"))
