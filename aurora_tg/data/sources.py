"""Where training text comes from, read as a stream of documents: a text file, a folder, JSON lines (plain, .gz or
.zst), parquet, a Hugging Face hub dataset, a named recipe, or Python's own documentation (the default corpus).

A source yields pieces: (text, ends_document). Records of JSON lines and parquet are whole documents; a text file is
cut at line breaks into pieces of a size set by the file's length, so that a single file (a book, say) still has
pieces to hold out for validation, while <|endoftext|> goes only where a document really ends."""
import contextlib, gzip, hashlib, importlib, inspect, io, json, sys, warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator
from aurora_tg import UserError

TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")
FILE_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + (".parquet",)
# Named recipes: the hub datasets nanoGPT, llm.c and nanochat train on, as hf:REPO:FILES specs.
RECIPES = {
  "fineweb-edu": "hf:HuggingFaceFW/fineweb-edu:sample/10BT/*.parquet",  # the 10B-token sample
  "tinystories": "hf:roneneldan/TinyStories:data/train-*.parquet",
  "smoltalk": "hf:HuggingFaceTB/smol-smoltalk:data/train-*.parquet",  # chat data (--stage sft or lora)
}
# stdlib modules that open windows, print on import or install things: never imported for their docstrings
_NOISY_MODULES = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "pydoc_data", "ensurepip", "venv", "lib2to3"}

Piece = tuple[str, bool]


@dataclass
class Source:
  """A stream of pieces from files (name, size), which locate() turns into local paths (downloading a hub file when
  its turn comes), or from documents() for the default corpus. identity names the content: the preparation cache's
  key. bytes_done counts the files read so far, for progress."""
  name: str
  identity: dict
  files: list[tuple[str, int]] = field(default_factory=list)
  locate: Callable[[str], Path] = Path
  text_field: str = "text"
  documents: Callable[[], Iterator[str]] | None = None
  bytes_done: int = 0

  @property
  def total_bytes(self) -> int: return sum(size for _, size in self.files)

  def pieces(self) -> Iterator[Piece]:
    self.bytes_done = 0
    if self.documents:
      yield from ((text, True) for text in self.documents())
      return
    for name, size in self.files:
      yield from read_file(self.locate(name), self.text_field)
      self.bytes_done += size


def open_source(spec: str | None, text_field: str = "text") -> Source:
  """The source a --data value names: a path, hf:REPO[:FILES] (FILES a glob such as sample/10BT/*.parquet, which
  picks the config and split; default *.parquet), a recipe name, or None for the default corpus."""
  if spec is None:
    return Source("Python's documentation", {"kind": "python-docs", "python": sys.version}, documents=default_corpus)
  if spec in RECIPES: spec = RECIPES[spec]
  if spec.startswith("hf:"):
    from aurora_tg.data import hub
    repo, _, pattern = spec[3:].partition(":")
    revision, files = hub.dataset_files(repo, pattern or "*.parquet")
    return Source(spec, {"kind": "hf", "repo": repo, "revision": revision, "files": files, "text_field": text_field}, files,
                  lambda name: hub.dataset_file(repo, name, revision), text_field)
  path = Path(spec)
  if not path.exists(): raise UserError(f"data path {spec} does not exist")
  if path.is_dir():
    paths = sorted(f for f in path.rglob("*") if f.is_file() and f.name.lower().endswith(FILE_SUFFIXES))
    if not paths: raise UserError(f"folder {spec} holds no {', '.join(FILE_SUFFIXES)} files")
  else: paths = [path]
  stats = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in paths]
  if not any(size for _, size, _ in stats): raise UserError(f"data path {spec} is empty")
  return Source(spec, {"kind": "files", "files": stats, "text_field": text_field}, [(name, size) for name, size, _ in stats],
                text_field=text_field)


def read_file(path: Path, text_field: str = "text") -> Iterator[Piece]:
  name = path.name.lower()
  if name.endswith(".parquet"): yield from _parquet(path, text_field)
  elif name.endswith(JSONL_SUFFIXES): yield from _jsonl(path, text_field)
  else: yield from _text_pieces(path)


def _check_text(path: Path, head: bytes):
  if b"\0" in head: raise UserError(f"{path} looks like a binary file, not text")


def _decode(path: Path, data: bytes, offset: int) -> str:
  try: return data.decode("utf-8")
  except UnicodeDecodeError as e: raise UserError(f"{path} is not UTF-8 text (byte {offset + e.start})") from None


def piece_bytes(size: int) -> int:
  """A text file is cut into about 256 pieces, each 256 bytes to 64 KiB."""
  return max(256, min(65536, size // 256))


def _text_pieces(path: Path) -> Iterator[Piece]:
  """The file in pieces that end after a line break (or before a space, in a file of long lines): no piece splits a
  character, and the pieces tokenize as the whole file would, up to their edges."""
  size = path.stat().st_size
  if size == 0: raise UserError(f"{path} is empty")
  step, offset, carry, pending = piece_bytes(size), 0, b"", None
  with open(path, "rb") as f:
    _check_text(path, f.read(8192))
    f.seek(0)
    while block := f.read(step):
      data = carry + block
      cut = _cut(data)
      if cut == 0:
        if len(data) > 64 * step: raise UserError(f"{path} has no line break or space in {len(data):,} bytes; is it text?")
        carry = data
        continue
      if pending is not None: yield pending, False
      pending, carry = _decode(path, data[:cut], offset), data[cut:]
      offset += cut
  yield (pending or "") + _decode(path, carry, offset), True


def _cut(data: bytes) -> int:
  """Where a piece may end: after the last line break, else before the last space; 0 for nowhere."""
  newline = data.rfind(b"\n")
  return newline + 1 if newline >= 0 else max(data.rfind(b" "), 0)


def _open_lines(path: Path) -> io.BufferedIOBase:
  """The file's bytes, decompressed: read line by line, so each line decodes (and fails) on its own."""
  name = path.name.lower()
  if name.endswith(".gz"): return gzip.open(path, "rb")
  if name.endswith(".zst"):
    try: import zstandard
    except ImportError: raise UserError(f"reading {path} needs zstandard: pip install 'aurora-tg[data]'") from None
    return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))
  return open(path, "rb")


def _jsonl(path: Path, text_field: str) -> Iterator[Piece]:
  lineno = 0
  try:
    with _open_lines(path) as f:
      for lineno, raw in enumerate(f, 1):
        if not raw.strip(): continue
        if b"\0" in raw: raise UserError(f"{path}:{lineno}: binary data, not JSON lines")
        try: record = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError: raise UserError(f"{path}:{lineno}: not UTF-8 text") from None
        except json.JSONDecodeError: raise UserError(f"{path}:{lineno}: not valid JSON") from None
        except RecursionError: raise UserError(f"{path}:{lineno}: JSON nested too deeply to read") from None
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
          raise UserError(f"{path}:{lineno}: expected an object with a string {text_field!r} field (another field: --text-field NAME)")
        if record[text_field].strip(): yield record[text_field], True
  except (OSError, EOFError, ValueError) as e:  # a damaged .gz or .zst
    raise UserError(f"{path}: cannot read it after line {lineno} ({e})") from None


def records(spec: str) -> Iterator[tuple[str, dict | None]]:
  """(where, record) for each record of JSON lines or parquet files (a path, a folder, hf:REPO[:FILES] or a recipe):
  the rows chat data is made of. A line that is not a JSON object gives record None, for the caller to report."""
  source = open_source(str(spec))
  for name, _ in source.files:
    path = source.locate(name)
    if path.name.lower().endswith(".parquet"):
      table = _parquet_file(path)
      row = 0
      for batch in table.iter_batches(batch_size=256):
        for record in batch.to_pylist():
          row += 1
          yield f"{path}:row {row}", record
    elif path.name.lower().endswith(JSONL_SUFFIXES):
      with _open_lines(path) as f:
        for lineno, raw in enumerate(f, 1):
          if not raw.strip(): continue
          try: record = json.loads(raw.decode("utf-8"))
          except (UnicodeDecodeError, json.JSONDecodeError, RecursionError): record = None  # reported by the caller
          yield f"{path}:{lineno}", record if isinstance(record, dict) else None
    else: raise UserError(f"{path}: chat data must be JSON lines (.jsonl, .jsonl.gz, .jsonl.zst) or parquet")


def _parquet_file(path: Path):
  try: import pyarrow.parquet as pq
  except ImportError: raise UserError(f"reading {path} needs pyarrow: pip install 'aurora-tg[data]'") from None
  try: return pq.ParquetFile(path)
  except Exception as e: raise UserError(f"{path} is not a readable parquet file ({e})") from None


def _parquet(path: Path, text_field: str) -> Iterator[Piece]:
  table = _parquet_file(path)
  if text_field not in table.schema_arrow.names:
    raise UserError(f"{path} has no column {text_field!r} (its columns: {', '.join(table.schema_arrow.names)}); pick one with --text-field")
  for batch in table.iter_batches(batch_size=1024, columns=[text_field]):
    for text in batch.column(0).to_pylist():
      if isinstance(text, str) and text.strip(): yield text, True


def stdlib_modules():
  """(name, module) for each importable public stdlib module, imported quietly."""
  for name in sorted(sys.stdlib_module_names):
    if name.startswith("_") or name in _NOISY_MODULES: continue
    try:
      with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        module = importlib.import_module(name)
    except BaseException: continue  # platform-specific or broken modules are simply left out
    yield name, module


def default_corpus() -> list[str]:
  """Python's own documentation, shipped with every CPython: the pydoc topics plus the stdlib's docstrings."""
  from pydoc_data.topics import topics
  docs = [topics[k] for k in sorted(topics)]
  for name, module in stdlib_modules(): docs.extend(_module_docstrings(module, name))
  return docs


def _module_docstrings(module, name: str) -> list[str]:
  objects = [module]
  for attr, obj in sorted(vars(module).items()):
    if attr.startswith("_") or getattr(obj, "__module__", None) != name: continue
    if inspect.isfunction(obj): objects.append(obj)
    if inspect.isclass(obj):
      objects.append(obj)
      objects.extend(f for m, f in sorted(vars(obj).items()) if not m.startswith("_") and inspect.isfunction(f))
  return [doc for obj in objects if (doc := inspect.getdoc(obj))]


def sample_text(source: Source, max_bytes: int) -> Iterator[str]:
  """The first max_bytes of the stream (whole pieces): what an own BPE trains on, in bounded memory."""
  taken = 0
  for text, _ in source.pieces():
    if taken >= max_bytes: return
    taken += len(text.encode())
    yield text


def document_hash(text: str) -> int:
  return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
