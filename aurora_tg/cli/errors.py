"""The promise every command keeps: bad input is one `error:` line on stderr and a non-zero exit, never a traceback.
Each command's main() runs its work through run()."""
import sys
from typing import Callable
from aurora_tg import UserError

USAGE, INTERRUPTED = 2, 130  # argparse's code for bad usage, and the shell's for SIGINT


def fail(message: str, code: int = USAGE) -> int:
  print(f"error: {message}", file=sys.stderr)
  return code


def run(work: Callable[[], int], interrupted: str = "") -> int:
  """work()'s exit code; a UserError is reported as one line (code 2), Ctrl-C as `interrupted` (code 130). Input nested
  too deeply for Python's parsers (a JSON record, say) is bad input too, not a crash."""
  try: return work()
  except UserError as e: return fail(str(e))
  except RecursionError: return fail("the input is nested too deeply to read")
  except KeyboardInterrupt:
    print(interrupted, file=sys.stderr)
    return INTERRUPTED
