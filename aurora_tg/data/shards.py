"""Training tokens: prepared shards (aurora_tg/data/prepare.py writes them) read memory-mapped, in seeded random windows
or in a sequential pass whose position a checkpoint saves."""
import json, os
from pathlib import Path
import numpy as np
from aurora_tg import UserError

MANIFEST = "manifest.json"
FORMAT = 1  # of the shards and manifest.json


def cache_dir() -> Path:
  return Path(os.environ.get("AURORA_CACHE", Path.home() / ".cache" / "aurora_tg"))


def read_manifest(folder: Path) -> dict:
  try: manifest = json.loads((folder / MANIFEST).read_text())
  except (OSError, ValueError) as e: raise UserError(f"cannot read {folder / MANIFEST}: {e}") from None
  if manifest.get("identity", {}).get("format") != FORMAT: raise UserError(f"{folder} was prepared by another Aurora version; prepare it again")
  return manifest


def load_shards(folder: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """A prepared folder's train and validation shards, memory-mapped: resident memory does not grow with the corpus."""
  m = read_manifest(folder)
  if not m["complete"]: raise UserError(f"the preparation of {folder} did not finish; run it again to complete it")
  def mapped(entry):
    path = folder / entry["file"]
    if not path.exists() or path.stat().st_size != entry["tokens"] * np.dtype(m["dtype"]).itemsize:
      raise UserError(f"shard {path} is missing or damaged; delete {folder} and prepare it again")
    return np.memmap(path, dtype=m["dtype"], mode="r")
  return [mapped(e) for e in m["shards"]["train"]], [mapped(e) for e in m["shards"]["val"]]


class TokenData:
  """Train and validation tokens as lists of shards; given one array, its tail (val_fraction) is held out.
  order: "random" (windows drawn with the trainer's generator) or "sequential" (every token once an epoch, shards
  in a seeded order; state() is the position a checkpoint saves)."""
  def __init__(self, train, block_size: int, val: list[np.ndarray] | None = None, val_fraction: float = 0.05,
               order: str = "random", seed: int = 0):
    if val is None:
      n_val = max(block_size + 1, int(len(train) * val_fraction))
      train, val = [train[:-n_val]], [train[-n_val:]]
    self.block_size, self.order, self.seed = block_size, order, seed
    self.train, self.val = [s for s in train if len(s) > block_size], [s for s in val if len(s) > block_size]
    self.train_tokens, self.val_tokens = sum(map(len, train)), sum(map(len, val))
    if not self.train or not self.val:
      split = "training" if not self.train else "validation"
      raise UserError(f"the data's {split} part has {self.train_tokens if not self.train else self.val_tokens} tokens in pieces "
                      f"too short for a context of {block_size}; give more text")
    self.position = {"epoch": 0, "shard": 0, "offset": 0}

  def batch(self, rng: np.random.Generator, batch_size: int, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Inputs (B, T) and next-token targets (B, T), as int32."""
    if split == "train" and self.order == "sequential":
      window = self._next_sequential(batch_size * self.block_size + 1).astype(np.int32)
      return window[:-1].reshape(batch_size, -1), window[1:].reshape(batch_size, -1)
    shards = self.train if split == "train" else self.val
    windows = np.array([len(s) - self.block_size for s in shards])  # the window starts each shard has
    starts = rng.integers(0, windows.sum(), size=batch_size)
    which = np.searchsorted(np.cumsum(windows), starts, side="right")
    starts = starts - (np.cumsum(windows) - windows)[which]
    window = np.stack([shards[i][s:s + self.block_size + 1] for i, s in zip(which, starts)]).astype(np.int32)
    return window[:, :-1], window[:, 1:]

  def shard_order(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, epoch]).permutation(len(self.train))

  def _next_sequential(self, n: int) -> np.ndarray:
    """The next n tokens of the pass (consecutive rows share their edge token, as next-token targets need); a shard's
    tail shorter than n is skipped."""
    if not any(len(s) >= n for s in self.train):
      raise UserError(f"--data-order sequential needs a shard of at least {n:,} tokens (batch x context + 1); give more text")
    p = self.position
    while True:
      shard = self.train[self.shard_order(p["epoch"])[p["shard"]]]
      if p["offset"] + n <= len(shard):
        out = shard[p["offset"]:p["offset"] + n]
        p["offset"] += n - 1
        return out
      p["shard"], p["offset"] = p["shard"] + 1, 0
      if p["shard"] == len(self.train): p["epoch"], p["shard"] = p["epoch"] + 1, 0

  def state(self) -> dict: return dict(self.position)

  def restore(self, state: dict | None):
    if state: self.position = dict(state)
