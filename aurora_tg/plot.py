"""`python -m aurora_tg.plot`: the `aurora plot` command (aurora_tg/cli/plot.py), under the name scripts used before it."""
import sys
from aurora_tg.cli.plot import main

if __name__ == "__main__": sys.exit(main(prog="python -m aurora_tg.plot"))
