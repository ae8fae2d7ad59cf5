"""Files the runs write and read back, safe against crashes, full disks and a second process: atomic replacement
with fsync, safetensors written with plain writes and checksums, verified reads, and the run folder's lock."""
import errno, fcntl, json, os, secrets, shutil, sys, zlib
from pathlib import Path
from typing import Callable
from tinygrad import Tensor, dtypes
from tinygrad.nn.state import inverse_safe_dtypes, safe_load, safe_load_metadata
from aurora_tg import UserError

LOCK_NAME = ".lock"
CHECKSUMS = "crc32"  # the __metadata__ key: {tensor name: CRC-32 of its bytes, 8 hex digits}
# what a disk, a quota or the folder's permissions can refuse; anything else is a bug to see in full
REFUSALS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def fsync_dir(folder: str | Path):
  """Make a rename in folder durable: without it a power loss can forget the new name."""
  fd = os.open(folder, os.O_RDONLY)
  try: os.fsync(fd)
  finally: os.close(fd)


def refused(path: str | Path, e: OSError, needed: int | None = None) -> UserError:
  """The one line for a write the system refused; for a full disk, with how much was needed and is free."""
  if e.errno not in (errno.ENOSPC, errno.EDQUOT): return UserError(f"cannot write {path}: {e.strerror}")
  free = shutil.disk_usage(next(p for p in Path(path).absolute().parents if p.exists())).free
  needed_text = f"needed {needed / 1e6:,.1f} MB, " if needed else ""
  return UserError(f"cannot write {path}: {e.strerror} ({needed_text}{free / 1e6:,.1f} MB free)")


def write_atomically(path: str | Path, write: Callable[[str], object], size: int | None = None):
  """write(a temporary path), fsync it, rename it to path and fsync the folder: a crash or power loss leaves the old
  file or the new one, never neither. The temporary name is unique, so concurrent writers never share one; a full
  disk or a read-only folder is one UserError (size: the bytes needed, for its message) and no file is left behind."""
  tmp = f"{path}.tmp-{os.getpid()}-{secrets.token_hex(3)}"
  try:
    write(tmp)
    with open(tmp, "rb+") as f: os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)
  except OSError as e:
    Path(tmp).unlink(missing_ok=True)
    if e.errno in REFUSALS: raise refused(path, e, size) from None
    raise
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise


def remove_stale_temporaries(folder: Path):
  """Temporary files of writers that died mid-write (call it only while holding the folder's lock)."""
  for f in [*folder.glob("*.tmp-*"), *folder.glob("*.tmp")]: f.unlink(missing_ok=True)


def _write_all(fd: int, data) -> None:
  """os.write until all of data is written (it may write less at once); the seam where tests fill the disk."""
  view = memoryview(data).cast("B")
  while view: view = view[os.write(fd, view):]


def tensor_bytes(t: Tensor) -> memoryview:
  """The raw bytes, read as unsigned integers of the same width: Python 3.11's memoryview has no float16 or bfloat16."""
  as_int = {1: dtypes.uint8, 2: dtypes.uint16, 4: dtypes.uint32, 8: dtypes.uint64}[t.dtype.itemsize]
  return t.contiguous().bitcast(as_int).realize().data().cast("B")


def write_safetensors(path: str | Path, tensors: dict[str, Tensor], metadata: dict[str, str]):
  """The safetensors format written with plain writes, a tensor at a time. tinygrad's safe_save writes through a
  memory map, where a full disk is a SIGBUS that kills the process; here it is an OSError. Each tensor's CRC-32
  goes into the header, which is written with placeholders first and rewritten (same length) at the end."""
  header, offset = {}, 0
  for name, t in tensors.items():
    header[name] = {"dtype": inverse_safe_dtypes[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes()]}
    offset += t.nbytes()
  def encoded(checksums: dict[str, str]) -> bytes:
    text = json.dumps({"__metadata__": {**metadata, CHECKSUMS: json.dumps(checksums)}, **header}, separators=(",", ":"))
    return (text + " " * (-len(text) % 8)).encode()
  placeholder = encoded({name: "0" * 8 for name in tensors})
  def write(tmp: str):
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
      _write_all(fd, len(placeholder).to_bytes(8, "little") + placeholder)
      checksums = {}
      for name, t in tensors.items():
        data = tensor_bytes(t)
        checksums[name] = f"{zlib.crc32(data):08x}"
        _write_all(fd, data)
      os.lseek(fd, 8, os.SEEK_SET)
      _write_all(fd, encoded(checksums))
    finally: os.close(fd)
  write_atomically(path, write, size=8 + len(placeholder) + offset)


def safetensors_header(path: str | Path) -> dict:
  """The header (tensor names, dtypes, offsets and the __metadata__ strings), without touching the tensor data. Read
  with plain file reads: tinygrad's disk device keeps a file it mapped open under its name while tensors loaded from
  it live, so after a save replaced the file it would read the old file's bytes (or refuse a larger new file)."""
  with open(path, "rb") as f:
    size = int.from_bytes(f.read(8), "little")
    return json.loads(f.read(size))


def read_safetensors(path: Path, verify: bool = True) -> tuple[dict[str, Tensor], dict]:
  """-> (tensors, left on disk; the header's metadata). tinygrad's safe_load notices neither a truncated file nor
  changed bytes: the length is checked against the header, and each tensor against its CRC-32 where the file has
  them (files written elsewhere, or by Aurora 0.1, do not)."""
  _, data_start, header = safe_load_metadata(str(path))
  if path.stat().st_size < data_start + max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0):
    raise ValueError("file is truncated")
  metadata = header.get("__metadata__", {})
  if verify and CHECKSUMS in metadata:
    with open(path, "rb") as f:
      for name, expected in json.loads(metadata[CHECKSUMS]).items():
        start, end = header[name]["data_offsets"]
        f.seek(data_start + start)
        if f"{zlib.crc32(f.read(end - start)):08x}" != expected:
          raise UserError(f"{path} is corrupt: the bytes of tensor {name} do not match their checksum")
  return safe_load(str(path)), metadata


class RunLock:
  """A run folder is written by one process at a time: an OS lock on its .lock file, held while the run lives and
  released by the OS however the process ends (no stale lock after kill -9). The file names the holder."""
  def __init__(self, folder: Path):
    try:
      folder.mkdir(parents=True, exist_ok=True)
      self.fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      if e.errno in REFUSALS: raise refused(folder / LOCK_NAME, e) from None
      raise
    try: fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(self.fd, 4096, 0).decode(errors="replace").strip() or "another process"
      os.close(self.fd)
      raise UserError(f"{folder} is in use by {holder}; wait for it to end, or pass another --out") from None
    os.ftruncate(self.fd, 0)
    os.pwrite(self.fd, f"process {os.getpid()} ({' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])})".encode(), 0)

  def __enter__(self): return self

  def __exit__(self, *exc): os.close(self.fd)
