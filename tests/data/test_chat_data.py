"""Chat fine-tuning data: JSONL reading, the default conversations, assistant-only targets."""
import json
import numpy as np
import pytest
from tinygrad import Tensor, dtypes
from aurora_tg import UserError
from aurora_tg.model import IGNORE_INDEX, cross_entropy
from aurora_tg.data.chat_data import ChatData, default_conversations, read_conversations
from aurora_tg.data.tokenizer import train_bpe
from conftest import sample_text


@pytest.fixture(scope="module")
def tokenizer():
  return train_bpe([sample_text()], 300)


def conversation(q: str, a: str, system: str | None = None) -> list[dict]:
  return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def test_malformed_lines_are_skipped_with_their_line_numbers(tmp_path):
  path = tmp_path / "chat.jsonl"
  lines = [json.dumps({"messages": conversation("hi", "hello")}), "{not json", json.dumps({"messages": [{"role": "user", "content": "no answer"}]}),
           json.dumps({"messages": [{"role": "wizard", "content": "x"}]}), "", json.dumps({"text": "wrong format"}),
           json.dumps({"messages": conversation("a", "b", "sys")})]
  path.write_text("\n".join(lines), encoding="utf-8")
  warnings = []
  conversations = read_conversations(path, warn=warnings.append)
  assert conversations == [conversation("hi", "hello"), conversation("a", "b", "sys")]
  assert [w.split(":")[1] for w in warnings] == ["2", "3", "4", "6"]
  path.write_text("{broken\n", encoding="utf-8")
  with pytest.raises(UserError, match="no usable conversation"): read_conversations(path, warn=lambda _: None)


def test_targets_are_the_assistant_tokens_and_their_end_only(tokenizer):
  conv = conversation("the cat?", "a mat", "be brief")
  data = ChatData([conv] * 3, tokenizer, block_size=48)
  x, y = data.batch(np.random.default_rng(0), 2)
  ids, is_assistant = tokenizer.render_chat(conv)
  n = len(ids) - 1
  assert x[0, :n].tolist() == ids[:-1] and (x[0, n:] == tokenizer.eot).all()
  expected = [t if a else IGNORE_INDEX for t, a in zip(ids[1:], is_assistant[1:])]
  assert y[0, :n].tolist() == expected and (y[0, n:] == IGNORE_INDEX).all()
  assert tokenizer.decode([t for t in expected if t != IGNORE_INDEX]) == "a mat<|end|>"


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_masked_tokens_add_exactly_nothing_to_loss_and_gradients(tokenizer, dtype):
  """The project's loss (model.cross_entropy, what GPT.loss and so SFT train on) on a chat batch: numpy's float64
  mean cross-entropy over the assistant's targets, computed in float32 even from half-precision logits, and a
  gradient that is numpy's (softmax - one-hot) / count on those targets and exactly zero everywhere else."""
  data = ChatData([conversation("the cat sat?", "on a mat", "sys"), conversation("dogs?", "ran past")], tokenizer, block_size=32)
  _, y = data.batch(np.random.default_rng(1), 4)
  logits_np = (np.random.default_rng(2).standard_normal((4, 32, tokenizer.n_vocab)) * 3).astype(dtype)
  logits = Tensor(logits_np)
  loss = cross_entropy(logits, Tensor(y))
  loss.backward()
  keep = y != IGNORE_INDEX
  shifted = logits_np.astype(np.float64) - logits_np.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  expected = -np.take_along_axis(log_probs, np.where(keep, y, 0)[..., None], -1)[..., 0][keep].mean()
  assert loss.dtype == dtypes.float32 and loss.item() == pytest.approx(expected, rel=2e-6)
  grad = logits.grad.float().numpy()
  assert (grad[~keep] == 0).all()
  expected_grad = (np.exp(log_probs) - np.eye(tokenizer.n_vocab)[np.where(keep, y, 0)]) / keep.sum()
  np.testing.assert_allclose(grad[keep], expected_grad[keep], atol=2e-3 / keep.sum() if dtype == "float16" else 1e-7)


def test_default_conversations_cover_docs_and_small_talk(tokenizer):
  conversations = default_conversations()
  questions = [c[-2]["content"] for c in conversations]
  assert "What does the `with` statement do?" in questions and "What is the `json` module for?" in questions
  assert "Who are you?" in questions and len(conversations) > 500
  assert all(c[-1]["role"] == "assistant" and c[-1]["content"].strip() for c in conversations)
  data = ChatData(conversations[:400], tokenizer, block_size=128)
  # about one in 20 is held out, and none of those is trained on (the rows are compared, not counted)
  train_rows = {tuple(ids) for ids, _ in data.train}
  assert 0.01 < len(data.val) / (len(data.train) + len(data.val)) < 0.12
  assert not any(tuple(ids) in train_rows for ids, _ in data.val)
  assert len(data.train) + len(data.val) == 400  # each fits the context and is either trained on or held out


def test_each_chat_format_renders_the_same_conversation(tmp_path, tokenizer):
  """OpenAI messages, ShareGPT and Alpaca files (JSON lines, zstandard, parquet, and a hub dataset in the cache's
  layout read offline) all become the same rendered conversations; a record of another format is skipped."""
  import os, subprocess, sys
  import pyarrow as pa, pyarrow.parquet as pq, zstandard
  from conftest import ROOT
  from test_prepare import hub_cache
  pairs = [("What is 2+2?", "", "4."), ("Translate", "chat", "Unterhaltung."), ("Say hi", "", "Hi!")]
  messages = [{"messages": [{"role": "user", "content": q + (f"\n\n{i}" if i else "")}, {"role": "assistant", "content": a}]} for q, i, a in pairs]
  sharegpt = [{"conversations": [{"from": "human", "value": q + (f"\n\n{i}" if i else "")}, {"from": "gpt", "value": a}]} for q, i, a in pairs]
  alpaca = [{"instruction": q, "input": i, "output": a} for q, i, a in pairs]
  lines = lambda records: "".join(json.dumps(r) + "\n" for r in records)
  (tmp_path / "messages.jsonl").write_text(lines(messages))
  (tmp_path / "sharegpt.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines(sharegpt + [alpaca[0]]).encode()))
  pq.write_table(pa.Table.from_pylist(alpaca), tmp_path / "alpaca.parquet")
  rendered = lambda conversations: [tokenizer.render_chat(c) for c in conversations]
  expected = rendered(read_conversations(tmp_path / "messages.jsonl"))
  assert expected == rendered([conversation(m["messages"][0]["content"], m["messages"][1]["content"]) for m in messages])
  warnings = []
  assert rendered(read_conversations(tmp_path / "sharegpt.jsonl.zst", warn=warnings.append)) == expected
  assert len(warnings) == 1 and warnings[0].startswith(f"{tmp_path / 'sharegpt.jsonl.zst'}:4: skipped")
  assert rendered(read_conversations(tmp_path / "alpaca.parquet")) == expected
  pq.write_table(pa.Table.from_pylist(messages), tmp_path / "m.parquet")  # a list of structs, as hub chat datasets hold
  hub_cache(tmp_path / "hf", "someone/chats", {"data/train-00000-of-00001.parquet": (tmp_path / "m.parquet").read_bytes()})
  code = ("import json, sys; from aurora_tg.data.chat_data import read_conversations; "
          "print(json.dumps(read_conversations('hf:someone/chats:data/train-*.parquet')))")
  result = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HOME": str(tmp_path / "hf"),
                          "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert rendered(json.loads(result.stdout)) == expected
