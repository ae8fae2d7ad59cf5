import json
import numpy as np
import pytest
from aurora_tg import UserError
from aurora_tg.data import read_texts, tokenize_cached, TokenData, default_corpus
from aurora_tg.tokenizer import train_bpe
from conftest import sample_text


def test_default_corpus_is_python_documentation():
  docs = default_corpus()
  text = "".join(docs)
  assert len(text) > 1_000_000
  assert "with" in text and "json" in text.lower()
  assert docs == default_corpus()  # deterministic, so its token cache is reused


def test_sources_file_folder_jsonl(tmp_path):
  (tmp_path / "a.txt").write_text("first file")
  (tmp_path / "sub").mkdir()
  (tmp_path / "sub" / "b.md").write_text("# second")
  (tmp_path / "ignored.bin").write_bytes(b"\0\1")
  assert read_texts(str(tmp_path)) == ["first file", "# second"]
  assert read_texts(str(tmp_path / "a.txt")) == ["first file"]
  (tmp_path / "d.jsonl").write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two", "id": 3}) + "\n")
  assert read_texts(str(tmp_path / "d.jsonl")) == ["one", "two"]


@pytest.mark.parametrize("make, message", [
  (lambda p: p / "missing.txt", "does not exist"),
  (lambda p: (p / "empty.txt").write_text("  \n") and p / "empty.txt", "holds no text"),
  (lambda p: (p / "x.bin").write_bytes(b"ab\0\0cd") and p / "x.bin", "binary"),
  (lambda p: (p / "latin.txt").write_bytes("café".encode("latin-1")) and p / "latin.txt", "not UTF-8"),
  (lambda p: (p / "d.jsonl").write_text('{"text": "ok"}\n{"body": 1}\n') and p / "d.jsonl", r"d.jsonl:2"),
  (lambda p: (p / "emptydir").mkdir() or p / "emptydir", "no .txt or .md"),
])
def test_bad_sources_raise_one_clear_error(tmp_path, make, message):
  with pytest.raises(UserError, match=message):
    read_texts(str(make(tmp_path)))


def test_tokens_are_cached_by_content(tmp_path, monkeypatch):
  monkeypatch.setenv("AURORA_CACHE", str(tmp_path))
  tok = train_bpe([sample_text(2000)], 300)
  texts = [sample_text(500, seed=1), sample_text(500, seed=2)]
  tokens = tokenize_cached(texts, tok)
  expected = tok.encode(texts[0]) + [tok.eot] + tok.encode(texts[1]) + [tok.eot]
  assert tokens.tolist() == expected and tokens.dtype == np.uint16
  assert len(list(tmp_path.iterdir())) == 1
  tokenize_cached(texts, tok)
  assert len(list(tmp_path.iterdir())) == 1  # same content: the file is reused
  tokenize_cached(texts[:1], tok)
  assert len(list(tmp_path.iterdir())) == 2


def test_batches_are_seeded_shifted_windows_from_their_split():
  tokens = np.arange(1000, dtype=np.uint16)
  data = TokenData(tokens, block_size=8)
  assert len(data.val) == 50 and data.train[-1] + 1 == data.val[0]
  x, y = data.batch(np.random.default_rng(3), 4)
  x2, _ = data.batch(np.random.default_rng(3), 4)
  assert np.array_equal(x, x2) and x.shape == (4, 8) and x.dtype == np.int32
  assert np.array_equal(y[:, :-1], x[:, 1:]) and np.all(y[:, -1] == x[:, -1] + 1)
  assert x.max() < 950
  xv, _ = data.batch(np.random.default_rng(3), 4, "val")
  assert xv.min() >= 950


def test_too_little_data_for_the_context():
  with pytest.raises(UserError, match="needs at least"):
    TokenData(np.arange(20, dtype=np.uint16), block_size=16)
