"""Training text: sources, the embedded default corpus, a cached memory-mapped token file, seeded batches."""
import contextlib, hashlib, importlib, inspect, io, json, os, sys, warnings
from pathlib import Path
import numpy as np
from aurora_tg import UserError
from aurora_tg.files import write_atomically

TEXT_SUFFIXES = (".txt", ".md")
# stdlib modules that open windows, print on import or install things: never imported for their docstrings
_NOISY_MODULES = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "pydoc_data", "ensurepip", "venv", "lib2to3"}


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


def _read_text_file(path: Path) -> str:
  data = path.read_bytes()
  if b"\0" in data[:8192]: raise UserError(f"{path} looks like a binary file, not text")
  try: return data.decode("utf-8")
  except UnicodeDecodeError as e: raise UserError(f"{path} is not UTF-8 text (byte {e.start})") from None


def _read_jsonl(path: Path) -> list[str]:
  texts = []
  for lineno, line in enumerate(_read_text_file(path).splitlines(), 1):
    if not line.strip(): continue
    try: record = json.loads(line)
    except json.JSONDecodeError: raise UserError(f"{path}:{lineno}: not valid JSON") from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
      raise UserError(f"{path}:{lineno}: expected an object with a string 'text' field")
    texts.append(record["text"])
  return texts


def read_texts(path: str | None) -> list[str]:
  """Documents from a text file, a folder of .txt/.md files, or a .jsonl with a 'text' field; None means the default."""
  if path is None: return default_corpus()
  p = Path(path)
  if not p.exists(): raise UserError(f"data path {path} does not exist")
  if p.is_dir():
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES)
    if not files: raise UserError(f"folder {path} holds no .txt or .md files")
    texts = [_read_text_file(f) for f in files]
  elif p.suffix.lower() == ".jsonl": texts = _read_jsonl(p)
  else: texts = [_read_text_file(p)]
  texts = [t for t in texts if t.strip()]
  if not texts: raise UserError(f"data path {path} holds no text")
  return texts


def cache_dir() -> Path:
  return Path(os.environ.get("AURORA_CACHE", Path.home() / ".cache" / "aurora_tg"))


def tokenize_cached(texts: list[str], tokenizer) -> np.ndarray:
  """All documents as one token stream, each followed by <|endoftext|>, memory-mapped from a file keyed by content hash."""
  h = hashlib.sha256(tokenizer.fingerprint().encode())
  for t in texts: h.update(hashlib.sha256(t.encode()).digest())
  dtype = np.uint16 if tokenizer.n_vocab <= 2**16 else np.uint32
  path = cache_dir() / f"tokens-{h.hexdigest()[:20]}.{np.dtype(dtype).name}"
  if not path.exists():
    ids = []
    for text in texts: ids.extend(tokenizer.encode(text) + [tokenizer.eot])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, np.asarray(ids, dtype=dtype).tofile)
  return np.memmap(path, dtype=dtype, mode="r")


class TokenData:
  """A token stream split into train and validation parts (the last val_fraction is held out)."""
  def __init__(self, tokens: np.ndarray, block_size: int, val_fraction: float = 0.05):
    n_val = max(block_size + 1, int(len(tokens) * val_fraction))
    if len(tokens) < n_val + block_size + 1:
      raise UserError(f"data has {len(tokens)} tokens; a context of {block_size} needs at least {n_val + block_size + 1}")
    self.train, self.val, self.block_size = tokens[:-n_val], tokens[-n_val:], block_size

  def batch(self, rng: np.random.Generator, batch_size: int, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Random windows: inputs (B, T) and next-token targets (B, T), as int32."""
    data = self.train if split == "train" else self.val
    starts = rng.integers(0, len(data) - self.block_size - 1, size=batch_size)
    window = np.stack([data[s:s + self.block_size + 1] for s in starts]).astype(np.int32)
    return window[:, :-1], window[:, 1:]
