"""Evaluation of a model: HellaSwag accuracy and bits per byte (`aurora eval`, aurora_tg/cli/eval.py, runs them)."""
import json, math, time, urllib.request
from dataclasses import dataclass
from pathlib import Path
import numpy as np
from tinygrad import Tensor, TinyJit
from aurora_tg import UserError
from aurora_tg.data.shards import cache_dir, load_shards
from aurora_tg.formats.files import write_atomically
from aurora_tg.model import GPT, IGNORE_INDEX
from aurora_tg.data.tokenizer import Tokenizer

# The validation split in its official JSON lines (10,042 items), the file nanoGPT's and llm.c's evaluations read
HELLASWAG_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
HELLASWAG_ITEMS = 10_042


@dataclass(frozen=True)
class Item:
  context: str
  endings: tuple[str, ...]
  label: int


def hellaswag_path(given: str | None) -> Path:
  """--data's file, or the validation file in Aurora's cache, downloaded once."""
  if given:
    if not Path(given).is_file(): raise UserError(f"no HellaSwag file at {given}")
    return Path(given)
  path = cache_dir() / "hellaswag" / "hellaswag_val.jsonl"
  if not path.exists():
    print(f"downloading HellaSwag's validation set into {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try: write_atomically(path, lambda tmp: urllib.request.urlretrieve(HELLASWAG_URL, tmp))
    except OSError as e:
      raise UserError(f"cannot download HellaSwag ({e}); on a connected machine fetch {HELLASWAG_URL} and pass it with --data FILE") from None
  return path


def read_hellaswag(path: Path, limit: int | None = None) -> list[Item]:
  """Items of the official format: {"ctx": str, "endings": [4 str], "label": 0-3}; a bad line is an error naming it."""
  items = []
  with open(path, encoding="utf-8", errors="strict") as f:
    for lineno, line in enumerate(f, 1):
      if limit is not None and len(items) >= limit: break
      if not line.strip(): continue
      try:
        record = json.loads(line)
        item = Item(record["ctx"], tuple(record["endings"]), int(record["label"]))
        if len(item.endings) != 4 or not all(isinstance(e, str) for e in item.endings) or not 0 <= item.label < 4 or not isinstance(item.context, str):
          raise ValueError("expected 4 string endings and a label from 0 to 3")
      except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}:{lineno}: not a HellaSwag item ({type(e).__name__}: {e})") from None
      items.append(item)
  if not items: raise UserError(f"{path} holds no HellaSwag item")
  return items


def ending_rows(item: Item, tokenizer: Tokenizer, block_size: int) -> list[tuple[list[int], list[int]]]:
  """Per ending: the context and the ending (after a space) as inputs, and targets only on the ending's tokens; the
  context is cut from the left when the two exceed the model's context."""
  context, rows = tokenizer.encode(item.context), []
  for ending in item.endings:
    tail = tokenizer.encode(" " + ending)
    tokens = (context + tail)[-(block_size + 1):]
    n_target = min(len(tail), len(tokens) - 1)
    rows.append((tokens[:-1], [IGNORE_INDEX] * (len(tokens) - 1 - n_target) + tokens[-n_target:]))
  return rows


class Scorer:
  """Per-token losses of fixed-shape batches, jitted: every batch after the first reuses its kernels."""
  def __init__(self, model: GPT, rows: int, length: int, pad: int):
    self.model, self.rows, self.length, self.pad = model, rows, length, pad
    self.step = TinyJit(lambda x, y: model(x).float().sparse_categorical_crossentropy(y, ignore_index=IGNORE_INDEX, reduction="none").realize())

  def losses(self, batch: list[tuple[list[int], list[int]]]) -> tuple[np.ndarray, np.ndarray]:
    """(per-token losses, targets) of the batch's rows, IGNORE_INDEX where a row has no target."""
    x = np.full((self.rows, self.length), self.pad, np.int32)
    y = np.full((self.rows, self.length), IGNORE_INDEX, np.int32)
    for i, (ids, targets) in enumerate(batch): x[i, :len(ids)], y[i, :len(targets)] = ids, targets
    return self.step(Tensor(x), Tensor(y)).numpy()[:len(batch)], y[:len(batch)]


def hellaswag(model: GPT, tokenizer: Tokenizer, items: list[Item], batch_items: int = 8, log=print) -> dict:
  """acc: the ending of the lowest summed loss is the label's; acc_norm: of the lowest loss per token (as nanoGPT's
  and llm.c's evaluations normalise). Each with its standard error over the items."""
  rows = [ending_rows(item, tokenizer, model.cfg.block_size) for item in items]
  longest = max(len(ids) for item_rows in rows for ids, _ in item_rows)
  scorer = Scorer(model, 4 * batch_items, min(model.cfg.block_size, 1 << (longest - 1).bit_length()), tokenizer.eot)
  picks, picks_norm, start = [], [], time.perf_counter()
  for first in range(0, len(items), batch_items):
    chunk = rows[first:first + batch_items]
    losses, targets = scorer.losses([row for item_rows in chunk for row in item_rows])
    counted = targets != IGNORE_INDEX
    total, count = (losses * counted).sum(1).reshape(-1, 4), counted.sum(1).reshape(-1, 4)
    picks += np.argmin(total, 1).tolist()
    picks_norm += np.argmin(total / count, 1).tolist()
    log(progress("items", len(picks), len(items), start, f"acc_norm {np.mean([p == i.label for p, i in zip(picks_norm, items)]):.4f}"))
  labels = [item.label for item in items]
  return {"items": len(items), "picks": picks, "picks_norm": picks_norm, **accuracy("acc", [p == l for p, l in zip(picks, labels)]),
          **accuracy("acc_norm", [p == l for p, l in zip(picks_norm, labels)])}


def accuracy(name: str, correct: list[bool]) -> dict:
  p, n = float(np.mean(correct)), len(correct)
  return {name: p, f"{name}_stderr": math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else float("nan")}


def bits_per_byte(model: GPT, tokenizer: Tokenizer, folder: Path, batch_size: int = 8, log=print) -> dict:
  """Over every token of a prepared source (train and validation shards), in windows of the model's context: the
  loss summed over the targets, in bits, over the UTF-8 bytes they decode to (special tokens left out)."""
  train, val = load_shards(folder)
  T, token_bytes = model.cfg.block_size, tokenizer.token_bytes()
  windows = [(shard, s) for shard in train + val for s in range(0, len(shard) - 1, T)]
  scorer, bits, n_bytes, n_tokens, start = Scorer(model, batch_size, T, tokenizer.eot), 0.0, 0, 0, time.perf_counter()
  for first in range(0, len(windows), batch_size):
    rows = [(shard[s:s + T + 1][:-1].tolist(), shard[s:s + T + 1][1:].tolist()) for shard, s in windows[first:first + batch_size]]
    losses, targets = scorer.losses(rows)
    weights = np.where(targets == IGNORE_INDEX, 0, token_bytes[np.maximum(targets, 0)])
    bits, n_bytes = bits + (losses * (weights > 0)).sum() / math.log(2), n_bytes + int(weights.sum())
    n_tokens += int((targets != IGNORE_INDEX).sum())
    log(progress("windows", min(first + batch_size, len(windows)), len(windows), start, f"{bits / max(n_bytes, 1):.4f} bits per byte"))
  return {"tokens": n_tokens, "bytes": n_bytes, "bpb": bits / n_bytes}


def progress(what: str, done: int, total: int, start: float, note: str) -> str:
  elapsed = time.perf_counter() - start
  left = elapsed * (total - done) / done if done else 0.0
  return f"{done:,}/{total:,} {what} | {done / max(elapsed, 1e-9):,.1f}/s | {int(left) // 60}m{int(left) % 60:02d}s left | {note}"
