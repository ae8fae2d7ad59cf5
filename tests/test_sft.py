"""Chat fine-tuning data: JSONL reading, the default conversations, assistant-only targets."""
import json
import numpy as np
import pytest
from tinygrad import Tensor
from aurora_tg import UserError
from aurora_tg.model import IGNORE_INDEX
from aurora_tg.sft import ChatData, default_conversations, read_conversations
from aurora_tg.tokenizer import train_bpe
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


def test_masked_tokens_add_exactly_nothing_to_loss_and_gradients(tokenizer):
  data = ChatData([conversation("the cat sat?", "on a mat", "sys"), conversation("dogs?", "ran past")], tokenizer, block_size=32)
  _, y = data.batch(np.random.default_rng(1), 4)
  logits_np = np.random.default_rng(2).standard_normal((4, 32, tokenizer.n_vocab)).astype(np.float32) * 3
  logits = Tensor(logits_np)
  loss = logits.sparse_categorical_crossentropy(Tensor(y), ignore_index=IGNORE_INDEX)
  loss.backward()
  keep = y != IGNORE_INDEX
  shifted = logits_np - logits_np.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  expected = -np.take_along_axis(log_probs, np.where(keep, y, 0)[..., None], -1)[..., 0][keep].mean()
  assert loss.item() == pytest.approx(expected, rel=1e-5)
  grad = logits.grad.numpy()
  assert (grad[~keep] == 0).all() and (np.abs(grad[keep]).sum(-1) > 0).all()


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
