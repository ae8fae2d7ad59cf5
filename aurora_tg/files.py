"""Files the runs write and read back: atomic replacement, and safetensors read with a check that the data is all there."""
import os
from pathlib import Path
from typing import Callable
from tinygrad import Tensor
from tinygrad.nn.state import safe_load, safe_load_metadata


def write_atomically(path: str | Path, write: Callable[[str], object]):
  """write(a temporary path) then rename it to path: a crash mid-write leaves the previous file intact."""
  tmp = f"{path}.tmp"
  write(tmp)
  os.replace(tmp, path)


def safetensors_header(path: str | Path) -> dict:
  """The header (tensor names, dtypes, offsets and the __metadata__ strings), without touching the tensor data."""
  return safe_load_metadata(str(path))[2]


def read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict]:
  """-> (tensors, left on disk; the header's metadata). tinygrad's safe_load does not notice a truncated file."""
  header = safetensors_header(path)
  if path.stat().st_size < max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0):
    raise ValueError("file is truncated")
  return safe_load(str(path)), header.get("__metadata__", {})
