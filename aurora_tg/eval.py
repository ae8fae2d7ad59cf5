"""`python -m aurora_tg.eval`: the `aurora eval` command (aurora_tg/cli/eval.py), under the name scripts used before it."""
import sys
from aurora_tg.cli.eval import main

if __name__ == "__main__": sys.exit(main(prog="python -m aurora_tg.eval"))
