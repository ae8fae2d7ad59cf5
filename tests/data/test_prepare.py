import hashlib, json, os, signal, subprocess, sys, time
from pathlib import Path
import numpy as np
import pyarrow as pa, pyarrow.parquet as pq
import pytest
from aurora_tg.data.shards import load_shards, read_manifest
from aurora_tg.cli.prepare import main
from aurora_tg.data.prepare import VAL_EVERY, VAL_MIN_TOKENS, prepare, prepared
from aurora_tg.data.sources import document_hash, open_source
from aurora_tg.data.tokenizer import gpt2
from conftest import ROOT, run_main

WORDS = "the cat sat on a mat while dogs ran past naïve café 🙂 and a bird sang".split()


def documents(n: int, seed: int = 0) -> list[str]:
  """Distinct documents of varied length."""
  rng = np.random.default_rng(seed)
  return [f"doc {i}: " + " ".join(rng.choice(WORDS, size=rng.integers(5, 80))) for i in range(n)]


def write_jsonl(path: Path, docs: list[str]) -> Path:
  path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
  return path


def split_documents(tokens: np.ndarray, tok) -> list[str]:
  """The documents a split's tokens hold: decoded, cut at <|endoftext|>."""
  cuts = np.flatnonzero(tokens == tok.eot)
  return [tok.decode(piece[:-1].tolist()) for piece in np.split(tokens, cuts + 1)[:-1]]


def test_shards_decode_to_the_documents_and_no_document_is_in_both_splits(tmp_path):
  docs, tok = documents(600), gpt2()
  out = prepare(open_source(str(write_jsonl(tmp_path / "d.jsonl", docs))), tok, tmp_path / "shards", workers=1, shard_tokens=2000)
  manifest = read_manifest(out)
  train, val = load_shards(out)
  assert len(train) > 3 and all(len(s) == 2000 for s in train[:-1]) and train[0].dtype == np.uint16
  for entry in manifest["shards"]["train"] + manifest["shards"]["val"]:
    assert hashlib.sha256((out / entry["file"]).read_bytes()).hexdigest() == entry["sha256"]
  train_docs, val_docs = split_documents(np.concatenate(train), tok), split_documents(np.concatenate(val), tok)
  held_out, val_tokens = [], 0  # the rule, computed here from the text: the first documents up to a minimum, then by hash
  for d in docs:
    if val_tokens < VAL_MIN_TOKENS or document_hash(d) % VAL_EVERY == 0: held_out, val_tokens = held_out + [d], val_tokens + len(tok.encode(d)) + 1
  assert val_docs == held_out and train_docs == [d for d in docs if d not in set(held_out)]
  assert not set(val_docs) & set(train_docs) and 30 < len(val_docs) < 100
  assert manifest["tokens"] == {"train": sum(map(len, train)), "val": sum(map(len, val))}
  assert sum(map(len, train)) + sum(map(len, val)) == sum(len(tok.encode(d)) + 1 for d in docs)


def test_workers_and_max_tokens(tmp_path):
  docs, tok = documents(300), gpt2()
  source = lambda: open_source(str(write_jsonl(tmp_path / "d.jsonl", docs)))
  one = prepare(source(), tok, tmp_path / "one", workers=1, shard_tokens=1500)
  two = prepare(source(), tok, tmp_path / "two", workers=2, shard_tokens=1500)  # a pool of processes, same shards
  assert [s.tolist() for split in load_shards(one) for s in split] == [s.tolist() for split in load_shards(two) for s in split]
  capped = prepare(source(), tok, tmp_path / "capped", workers=1, max_tokens=1234)
  first = np.concatenate([*load_shards(one)[0]])  # the first documents are all in train or val: compare the stream
  capped_all = read_manifest(capped)["tokens"]
  assert capped_all["train"] + capped_all["val"] == 1234
  stream = [t for d in docs for t in tok.encode(d) + [tok.eot]][:1234]
  train, val = load_shards(capped)
  assert sorted(np.concatenate([*train, *val]).tolist()) == sorted(stream) and len(first) > 1234


def test_prepared_shards_are_the_cache_and_a_changed_source_is_prepared_anew(tmp_path, monkeypatch):
  monkeypatch.setenv("AURORA_CACHE", str(tmp_path / "cache"))
  path, tok = write_jsonl(tmp_path / "d.jsonl", documents(200)), gpt2()
  folder = prepared(str(path), tok, workers=1)
  files = {f.name: f.stat().st_ino for f in folder.iterdir()}
  assert prepared(str(path), tok, workers=1) == folder
  assert {f.name: f.stat().st_ino for f in folder.iterdir()} == files  # nothing was written again
  write_jsonl(path, documents(201))
  assert prepared(str(path), tok, workers=1) != folder
  assert prepared(str(folder), tok) == folder  # a prepared folder is its own data


def test_a_killed_preparation_resumes_to_the_shards_of_an_uninterrupted_one(tmp_path):
  path = write_jsonl(tmp_path / "big.jsonl", documents(40_000))
  command = [sys.executable, "-m", "aurora_tg.prepare", str(path), "--shard-tokens", "4096", "--workers", "1"]
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  subprocess.run(command + ["--out", str(tmp_path / "whole")], env=env, check=True, capture_output=True, timeout=300)
  killed = tmp_path / "killed"
  process = subprocess.Popen(command + ["--out", str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    while not (killed / "manifest.json").exists() or len(json.loads((killed / "manifest.json").read_text())["shards"]["train"]) < 5:
      assert process.poll() is None, "the preparation finished before it could be killed"
      time.sleep(0.005)
  finally: process.send_signal(signal.SIGKILL), process.wait()
  manifest = read_manifest(killed)
  assert not manifest["complete"] and 0 < manifest["documents"] < 40_000
  result = run_main(main, [path, "--out", killed, "--shard-tokens", "4096", "--workers", "2"])
  assert result.returncode == 0, result.stderr
  assert f"resuming the preparation in {killed} after {manifest['documents']:,} documents" in result.stdout
  whole, resumed = read_manifest(tmp_path / "whole"), read_manifest(killed)
  assert resumed["shards"] == whole["shards"] and resumed["complete"]
  for entry in whole["shards"]["train"] + whole["shards"]["val"]:
    assert (killed / entry["file"]).read_bytes() == (tmp_path / "whole" / entry["file"]).read_bytes()
  assert not list(killed.glob("*partial*")) and not list(killed.glob("*.tmp-*"))


def hub_cache(home: Path, repo: str, files: dict[str, bytes], kind: str = "datasets") -> str:
  """A dataset (or model) in huggingface_hub's cache layout: refs/main names a commit whose snapshot links each file
  to its blob."""
  folder = home / "hub" / f"{kind}--{repo.replace('/', '--')}"
  commit = hashlib.sha1(repo.encode()).hexdigest()
  (folder / "refs").mkdir(parents=True)
  (folder / "refs" / "main").write_text(commit)
  for name, data in files.items():
    blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(exist_ok=True)
    blob.write_bytes(data)
    link = folder / "snapshots" / commit / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))
  return commit


def parquet_bytes(tmp_path: Path, texts: list[str]) -> bytes:
  pq.write_table(pa.table({"text": texts}), tmp_path / "x.parquet")
  return (tmp_path / "x.parquet").read_bytes()


def test_a_hub_dataset_is_read_from_the_hub_cache_offline(tmp_path):
  docs = documents(120)
  hub_cache(tmp_path / "hf", "someone/corpus", {"data/train-00000-of-00002.parquet": parquet_bytes(tmp_path, docs[:60]),
                                                 "data/train-00001-of-00002.parquet": parquet_bytes(tmp_path, docs[60:]),
                                                 "data/test-00000-of-00001.parquet": parquet_bytes(tmp_path, ["not this"]),
                                                 "README.md": b"# a dataset card"})
  env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
  run = lambda spec, out: subprocess.run([sys.executable, "-m", "aurora_tg.prepare", spec, "--out", str(tmp_path / out), "--workers", "1"],
                                         env=env, capture_output=True, text=True, timeout=120)
  result = run("hf:someone/corpus:data/train-*.parquet", "hub")
  assert result.returncode == 0, result.stderr
  tok = gpt2()
  train, val = load_shards(tmp_path / "hub")
  assert sorted(split_documents(np.concatenate(train), tok) + split_documents(np.concatenate(val), tok)) == sorted(docs)
  missing = run("hf:someone/elsewhere", "missing")
  assert missing.returncode == 2 and missing.stderr.count("\n") == 1
  assert missing.stderr.startswith("error: hf:someone/elsewhere is not in the Hugging Face cache") and "hf download someone/elsewhere" in missing.stderr


@pytest.mark.parametrize("make, message", [
  (lambda p: p / "missing.txt", "does not exist"),
  (lambda p: (p / "empty.jsonl").write_text("") or p / "empty.jsonl", "is empty"),
  (lambda p: (p / "blank.jsonl").write_text('{"text": " "}\n') and p / "blank.jsonl", "holds no text"),
  (lambda p: (p / "x.txt").write_bytes(b"\x7fELF\0\0\0") and p / "x.txt", "binary"),
  (lambda p: (p / "latin.txt").write_bytes("café".encode("latin-1")) and p / "latin.txt", "not UTF-8"),
  (lambda p: pq.write_table(pa.table({"body": ["a"]}), p / "t.parquet") or p / "t.parquet", "--text-field"),
])
def test_bad_sources_are_one_error_line_and_exit_2(tmp_path, make, message):
  result = run_main(main, [make(tmp_path), "--out", tmp_path / "out", "--workers", "1"])
  assert result.returncode == 2 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
  assert message in result.stderr


def test_train_prepares_its_data_on_first_use_logs_bits_per_byte_and_hellaswag_and_records_its_sequential_position(tmp_path, monkeypatch):
  import train
  from aurora_tg.formats.checkpoint import read_record
  monkeypatch.setenv("AURORA_CACHE", str(tmp_path / "cache"))
  data = write_jsonl(tmp_path / "d.jsonl", documents(400))
  hellaswag = tmp_path / "cache" / "hellaswag" / "hellaswag_val.jsonl"  # where the first use downloads it
  hellaswag.parent.mkdir(parents=True)
  hellaswag.write_text("".join(json.dumps({"ctx": d[:40], "endings": [d[40:60], "a cat", "the mat", "dogs ran"], "label": 0}) + "\n" for d in documents(6)))
  result = run_main(train.main, ["--stage", "pretrain", "--size", "tiny", "--steps", "4", "--eval-every", "2", "--batch-size", "4",
                                 "--data", data, "--data-order", "sequential", "--workers", "1", "--out", tmp_path / "run",
                                 "--eval-hellaswag-every", "4"])
  assert result.returncode == 0, result.stdout + result.stderr
  assert "prepared 400 documents" in result.stdout and "sequential" in result.stdout
  evaluations = [m for m in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) if "val_loss" in m]
  assert [m["step"] for m in evaluations] == [0, 2, 4] and all(0 < m["val_bpb"] < m["val_loss"] * 2 for m in evaluations)
  assert f"| val_bpb {evaluations[-1]['val_bpb']:.4f}" in result.stdout
  assert [m["step"] for m in evaluations if "hellaswag_acc_norm" in m] == [0, 4]  # steps that are multiples of 4
  assert all(m["hellaswag_acc"] in (0, 1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1) for m in evaluations if "hellaswag_acc" in m)
  record = read_record(tmp_path / "run" / "checkpoint.safetensors")
  assert record.data_position == {"epoch": 0, "shard": 0, "offset": 4 * 4 * 64}  # 4 steps of 4 x 64 tokens, in order
