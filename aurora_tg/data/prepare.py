"""Preparation: a source's documents, tokenized by a pool of worker processes, written as fixed-size token shards
(train-NNNNNN.bin, val-NNNNNN.bin: raw uint16, or uint32 for vocabularies over 65,536) beside manifest.json and the
tokenizer. Memory stays flat whatever the corpus size; a preparation killed at any moment resumes where it stopped
and writes the shards an uninterrupted run writes; finished shards are the cache that later runs reuse.
`aurora prepare` (aurora_tg/cli/prepare.py) runs it on its own; `aurora train --data` on first use."""
import hashlib, itertools, json, multiprocessing, os, sys, time
from collections import deque
from pathlib import Path
from typing import Iterator
import numpy as np
from aurora_tg import UserError
from aurora_tg.data.shards import MANIFEST, FORMAT, TokenData, cache_dir, load_shards, read_manifest
from aurora_tg.formats.files import remove_stale_temporaries, write_atomically
from aurora_tg.data.sources import Source, document_hash, open_source, sample_text
from aurora_tg.data.tokenizer import Tokenizer, gpt2, train_bpe

SHARD_TOKENS = 1 << 24      # 16M tokens a shard: 32 MiB in uint16
VAL_EVERY = 20              # a document whose content hash is 0 modulo this is held out for validation...
VAL_MAX_TOKENS = 10_000_000  # ...until validation holds this many tokens (5% of a small corpus, 10M of a large one);
VAL_MIN_TOKENS = 1025       # and the first documents are, until it holds a window of GPT-2's context (small corpora)
TASK_BYTES = 1 << 20        # text per worker task
COMMIT_EVERY_S = 30.0       # a killed preparation redoes at most this much work (or one shard)


def prepare(source: Source, tokenizer: Tokenizer, out: Path, workers: int = 0, max_tokens: int | None = None,
            shard_tokens: int = SHARD_TOKENS, log=print) -> Path:
  """Prepare source into out (resuming a preparation that stopped there), or find it prepared; returns out."""
  identity = {"format": FORMAT, "source": source.identity, "tokenizer": tokenizer.fingerprint(), "max_tokens": max_tokens,
              "shard_tokens": shard_tokens}
  identity = json.loads(json.dumps(identity))  # as the manifest holds it (tuples become lists)
  manifest = read_manifest(out) if (out / MANIFEST).exists() else None
  if manifest and manifest["identity"] != identity:
    raise UserError(f"{out} holds shards of another source or tokenizer; pick another --out, or delete it")
  if manifest and manifest["complete"]: return out
  out.mkdir(parents=True, exist_ok=True)
  remove_stale_temporaries(out)
  tokenizer.save(str(out / "tokenizer.json"))
  writer = ShardWriter(out, identity, np.uint16 if tokenizer.n_vocab <= 2**16 else np.uint32, manifest)
  if manifest: log(f"resuming the preparation in {out} after {writer.documents:,} documents")
  _run(source, tokenizer, writer, workers or os.cpu_count() or 1, max_tokens, log)
  return out


class ShardWriter:
  """Routes each document's tokens to its split's shard buffer and writes a shard when one fills. commit() records
  the position (documents consumed, shards written, the unfilled buffers) in the manifest: a resumed preparation
  starts from the last commit."""
  def __init__(self, out: Path, identity: dict, dtype, manifest: dict | None):
    self.out, self.identity, self.dtype, self.capacity = out, identity, np.dtype(dtype), identity["shard_tokens"]
    m = manifest or {"documents": 0, "shards": {"train": [], "val": []}, "partial": {}}
    self.documents, self.shards = m["documents"], m["shards"]
    self.buffers, self.fill = {}, {}
    for split in ("train", "val"):
      self.buffers[split] = np.empty(self.capacity, self.dtype)
      partial = m["partial"].get(split)
      self.fill[split] = partial["tokens"] if partial else 0
      if partial: self.buffers[split][:partial["tokens"]] = _read_checked(out / partial["file"], self.dtype, partial)
    self.wrote_shard = False

  def tokens(self, split: str) -> int: return sum(s["tokens"] for s in self.shards[split]) + self.fill[split]

  def add(self, split: str, tokens: np.ndarray):
    buffer = self.buffers[split]
    while len(tokens):
      n = min(len(tokens), self.capacity - self.fill[split])
      buffer[self.fill[split]:self.fill[split] + n], tokens = tokens[:n], tokens[n:]
      self.fill[split] += n
      if self.fill[split] == self.capacity: self._write_shard(split)

  def _write_shard(self, split: str):
    data = self.buffers[split][:self.fill[split]]
    name = f"{split}-{len(self.shards[split]):06d}.bin"
    write_atomically(self.out / name, data.tofile, data.nbytes)
    self.shards[split].append({"file": name, "tokens": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    self.fill[split], self.wrote_shard = 0, True

  def commit(self, complete: bool = False):
    partial = {}
    for split in ("train", "val"):
      if complete and self.fill[split]: self._write_shard(split)
      if not self.fill[split]: continue
      data = self.buffers[split][:self.fill[split]]
      partial[split] = {"file": f"{split}-partial-{self.documents}.bin", "tokens": len(data), "sha256": hashlib.sha256(data).hexdigest()}
      write_atomically(self.out / partial[split]["file"], data.tofile, data.nbytes)
    manifest = {"identity": self.identity, "complete": complete, "dtype": self.dtype.name, "documents": self.documents,
                "tokens": {split: self.tokens(split) for split in ("train", "val")}, "shards": self.shards, "partial": partial}
    write_atomically(self.out / MANIFEST, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=1)))
    for old in self.out.glob("*-partial-*.bin"):  # the previous commit's buffers
      if old.name not in {p["file"] for p in partial.values()}: old.unlink()
    self.wrote_shard = False


def _read_checked(path: Path, dtype, entry: dict) -> np.ndarray:
  data = np.fromfile(path, dtype=dtype) if path.exists() else np.empty(0, dtype)
  if len(data) != entry["tokens"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
    raise UserError(f"{path} is damaged; delete its folder {path.parent} and prepare again")
  return data


# ----- the workers: tokenizing is the costly part, so it runs in a pool of processes -----
_worker_tokenizer: Tokenizer | None = None


def _start_worker(spec: dict):
  global _worker_tokenizer
  _worker_tokenizer = Tokenizer.from_spec(spec)


def _tokenize(pieces: list[tuple[str, bool]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """A task's pieces -> (their tokens, each followed by <|endoftext|> where a document ends; each piece's token
  count; whether its hash holds it out)."""
  tok = _worker_tokenizer
  ids = tok.enc.encode_ordinary_batch([text for text, _ in pieces], num_threads=1)
  for piece_ids, (_, ends) in zip(ids, pieces):
    if ends: piece_ids.append(tok.eot)
  lengths = np.array([len(i) for i in ids], dtype=np.int64)
  held_out = np.array([document_hash(text) % VAL_EVERY == 0 for text, _ in pieces])
  return np.concatenate([np.array(i, np.uint32) for i in ids]), lengths, held_out


def _tasks(pieces: Iterator[tuple[str, bool]]) -> Iterator[list[tuple[str, bool]]]:
  task, size = [], 0
  for piece in pieces:
    task.append(piece)
    size += len(piece[0])
    if size >= TASK_BYTES: yield task; task, size = [], 0
  if task: yield task


def _run(source: Source, tokenizer: Tokenizer, writer: ShardWriter, workers: int, max_tokens: int | None, log):
  pieces = source.pieces()
  for _ in itertools.islice(pieces, writer.documents): pass  # a resumed preparation skips what it has written
  progress, last_commit = Progress(source, writer, max_tokens, log), time.monotonic()
  total = writer.tokens("train") + writer.tokens("val")
  pool = multiprocessing.get_context("spawn").Pool(workers, _start_worker, (tokenizer.spec,)) if workers > 1 else None
  if pool is None: _start_worker(tokenizer.spec)
  try:
    for tokens, lengths, held_out in _ordered_results(pool, _tasks(pieces), workers):
      to_val, val = [], writer.tokens("val")
      for n, hold in zip(lengths.tolist(), held_out.tolist()):  # the split of each document, in stream order
        to_val.append(val < VAL_MIN_TOKENS or hold and val < VAL_MAX_TOKENS)
        val += n if to_val[-1] else 0
      ends = np.cumsum(lengths)
      if max_tokens is not None and total + int(ends[-1]) >= max_tokens:  # the last task: cut at max_tokens
        keep = int(np.searchsorted(ends, max_tokens - total)) + 1
        to_val, ends, tokens = to_val[:keep], np.minimum(ends[:keep], max_tokens - total), tokens[:max_tokens - total]
      start = 0
      for split, run in itertools.groupby(zip(to_val, ends.tolist()), key=lambda doc: doc[0]):  # runs of one split at once
        end = list(run)[-1][1]
        writer.add("val" if split else "train", tokens[start:end])
        start = end
      writer.documents, total = writer.documents + len(to_val), total + int(ends[-1])
      if max_tokens is not None and total >= max_tokens: break
      if writer.wrote_shard or time.monotonic() - last_commit > COMMIT_EVERY_S:  # between tasks: a document boundary
        writer.commit()
        last_commit = time.monotonic()
      progress.show(total)
  finally:
    if pool: pool.terminate()
  if writer.documents == 0 or total == 0: raise UserError(f"{source.name} holds no text")
  writer.commit(complete=True)
  progress.show(total, done=True)


def _ordered_results(pool, tasks, workers: int):
  """The tasks' results in order, at most two tasks a worker in flight: a bounded queue, unlike Pool.imap, whose
  feeder reads the whole stream ahead into memory."""
  if pool is None:
    yield from map(_tokenize, tasks)
    return
  pending = deque()
  for task in tasks:
    pending.append(pool.apply_async(_tokenize, (task,)))
    if len(pending) >= 2 * workers: yield pending.popleft().get()
  while pending: yield pending.popleft().get()


class Progress:
  """One line: documents, tokens, tokens/s and time left (by bytes read, or by --max-tokens); redrawn in place on a
  terminal, else printed every 10 seconds."""
  def __init__(self, source: Source, writer: ShardWriter, max_tokens: int | None, log):
    self.source, self.writer, self.max_tokens, self.log = source, writer, max_tokens, log
    self.start, self.shown, self.first_tokens = time.monotonic(), time.monotonic(), writer.tokens("train") + writer.tokens("val")
    self.tty = sys.stdout.isatty() and log is print

  def show(self, tokens: int, done: bool = False):
    now = time.monotonic()
    if not done and now - self.shown < (0.5 if self.tty else 10.0): return
    self.shown = now
    rate = (tokens - self.first_tokens) / max(now - self.start, 1e-9)
    fractions = [self.source.bytes_done / self.source.total_bytes] if self.source.total_bytes else []
    if self.max_tokens: fractions.append(tokens / self.max_tokens)
    left = f" | {_duration((now - self.start) * (1 - max(fractions)) / max(fractions))} left" if fractions and max(fractions) > 0 and not done else ""
    line = f"prepared {self.writer.documents:,} documents | {tokens:,} tokens | {rate:,.0f} tokens/s{left}"
    if self.tty: print("\r" + line, end="\n" if done else "", flush=True)
    else: self.log(line)


def _duration(seconds: float) -> str:
  m, s = divmod(int(seconds), 60)
  return f"{m}m{s:02d}s"


def prepared(spec: str | None, tokenizer: Tokenizer, workers: int = 0, max_tokens: int | None = None, text_field: str = "text",
             log=print) -> Path:
  """The shards of --data spec for this tokenizer: spec itself when it is a prepared folder, else the cache's,
  prepared first if they are not there yet."""
  if spec and (Path(spec) / MANIFEST).exists(): return Path(spec)
  source = open_source(spec, text_field)
  key = hashlib.sha256(json.dumps([source.identity, tokenizer.fingerprint(), max_tokens], sort_keys=True).encode()).hexdigest()[:20]
  return prepare(source, tokenizer, cache_dir() / "shards" / key, workers, max_tokens, log=log)


def shards_for(spec: str | None, tokenizer: Tokenizer, workers: int = 0, max_tokens: int | None = None,
               text_field: str = "text") -> tuple[list[np.ndarray], list[np.ndarray]]:
  """The train and validation shards of --data spec (None: the embedded corpus), prepared for this tokenizer."""
  folder = prepared(spec, tokenizer, workers, max_tokens, text_field)
  if read_manifest(folder)["identity"]["tokenizer"] != tokenizer.fingerprint():
    raise UserError(f"the shards in {folder} were made with another tokenizer than the model's; prepare the data for it")
  return load_shards(folder)


def token_data(cfg, tokenizer: Tokenizer, block_size: int, workers: int = 0) -> TokenData:
  """The training data of a stage that trains on text (config.TextData): its --data prepared for the tokenizer."""
  train, val = shards_for(cfg.data, tokenizer, workers, cfg.max_tokens, cfg.text_field)
  return TokenData(train, block_size, val=val, order=cfg.data_order, seed=cfg.train.seed)


def make_tokenizer(kind: str, source: Source, vocab_size: int, sample_mb: float, log=print) -> Tokenizer:
  """GPT-2's BPE, a tokenizer.json, or a BPE of vocab_size trained on the first sample_mb MB of the source."""
  if kind == "gpt2": return gpt2()
  if kind != "bpe": return Tokenizer.load(kind)
  log(f"training a {vocab_size}-token BPE on the first {sample_mb:g} MB of the data...")
  return train_bpe(sample_text(source, int(sample_mb * 1e6)), vocab_size)
