"""Aurora: a compact GPT-2-style language model training stack on tinygrad."""
import os
from pathlib import Path
from typing import Callable


class UserError(Exception):
  """Bad input from the user: the command line prints the message on one line and exits non-zero."""


def write_atomically(path: str | Path, write: Callable[[str], object]):
  """write(a temporary path) then rename it to path: a crash mid-write leaves the previous file intact."""
  tmp = f"{path}.tmp"
  write(tmp)
  os.replace(tmp, path)
