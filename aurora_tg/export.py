"""`python -m aurora_tg.export`: the `aurora export` command (aurora_tg/cli/export.py), under the name scripts used before it."""
import sys
from aurora_tg.cli.export import main

if __name__ == "__main__": sys.exit(main(prog="python -m aurora_tg.export"))
