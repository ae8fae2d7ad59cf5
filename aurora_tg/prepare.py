"""`python -m aurora_tg.prepare`: the `aurora prepare` command (aurora_tg/cli/prepare.py), under the name scripts used before it."""
import sys
from aurora_tg.cli.prepare import main

if __name__ == "__main__": sys.exit(main(prog="python -m aurora_tg.prepare"))
