import gzip, json
import numpy as np
import pyarrow as pa, pyarrow.parquet as pq
import pytest
import zstandard
from aurora_tg import UserError
from aurora_tg.data.sources import default_corpus, open_source, piece_bytes, sample_text
from conftest import sample_text as english


def texts(spec, **kw) -> list:
  return list(open_source(str(spec), **kw).pieces())


def test_default_corpus_is_python_documentation():
  docs = default_corpus()
  text = "".join(docs)
  assert len(text) > 1_000_000
  assert "with" in text and "json" in text.lower()
  assert docs == default_corpus()  # deterministic, so its prepared shards are reused
  assert list(open_source(None).pieces())[:3] == [(d, True) for d in docs[:3]]


def test_a_text_file_comes_in_pieces_cut_at_line_breaks_that_end_the_document_once(tmp_path):
  lines = [f"line {i} with naïve café 🙂 words" for i in range(3000)]
  path = tmp_path / "book.txt"
  path.write_text("\n".join(lines) + "\n")
  pieces = texts(path)
  assert "".join(t for t, _ in pieces) == path.read_text()
  assert [ends for _, ends in pieces] == [False] * (len(pieces) - 1) + [True]
  assert len(pieces) > 100 and all(t.endswith("\n") for t, _ in pieces)
  assert max(len(t.encode()) for t, _ in pieces) < 2 * piece_bytes(path.stat().st_size)
  one_line = tmp_path / "one.txt"
  one_line.write_text(english(5000))  # no line breaks: cut before spaces
  pieces = texts(one_line)
  assert "".join(t for t, _ in pieces) == one_line.read_text() and len(pieces) > 50
  assert all(t.startswith(" ") for t, _ in pieces[1:])


def test_json_lines_plain_gzip_and_zstandard(tmp_path):
  records = [{"text": f"document {i} ✓", "id": i} for i in range(50)] + [{"text": "   "}]
  body = "\n".join(json.dumps(r) for r in records) + "\n\n"
  (tmp_path / "a.jsonl").write_text(body)
  with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f: f.write(body)
  (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(body.encode()))
  expected = [(f"document {i} ✓", True) for i in range(50)]  # the blank one left out
  for name in ("a.jsonl", "b.jsonl.gz", "c.jsonl.zst"): assert texts(tmp_path / name) == expected
  assert texts(tmp_path) == expected * 3  # a folder: its files in name order


def test_parquet_with_the_text_column_or_another(tmp_path):
  table = pa.table({"content": [f"row {i}" for i in range(3000)], "n": np.arange(3000)})
  pq.write_table(table, tmp_path / "part-0.parquet", row_group_size=700)
  assert texts(tmp_path / "part-0.parquet", text_field="content") == [(f"row {i}", True) for i in range(3000)]
  with pytest.raises(UserError, match=r"has no column 'text' \(its columns: content, n\); pick one with --text-field"):
    texts(tmp_path / "part-0.parquet")


def test_an_own_bpe_samples_a_bounded_prefix(tmp_path):
  (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": "x" * 100}) + "\n" for _ in range(1000)))
  sample = list(sample_text(open_source(str(tmp_path / "d.jsonl")), 1000))
  assert len(sample) == 10


@pytest.mark.parametrize("make, message", [
  (lambda p: p / "missing.txt", "does not exist"),
  (lambda p: (p / "empty.txt").write_text("") or p / "empty.txt", "is empty"),
  (lambda p: (p / "x.txt").write_bytes(b"ab\0\0cd") and p / "x.txt", "binary"),
  (lambda p: (p / "latin.txt").write_bytes("café".encode("latin-1")) and p / "latin.txt", r"not UTF-8 text \(byte 3\)"),
  (lambda p: (p / "d.jsonl").write_text('{"text": "ok"}\n{"body": 1}\n') and p / "d.jsonl", r"d.jsonl:2: expected an object with a string 'text'"),
  (lambda p: (p / "d.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n') and p / "d.jsonl", r"d.jsonl:2: not UTF-8"),
  (lambda p: (p / "d.parquet").write_bytes(b"PAR1 nonsense") and p / "d.parquet", "not a readable parquet file"),
  (lambda p: (p / "emptydir").mkdir() or p / "emptydir", "holds no .txt"),
])
def test_bad_sources_raise_one_clear_error(tmp_path, make, message):
  with pytest.raises(UserError, match=message):
    texts(make(tmp_path))
