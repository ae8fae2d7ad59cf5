"""Preference pairs for DPO: each format people have, bad records reported and skipped, answer-only targets."""
import json
import numpy as np
import pytest
from aurora_tg import UserError
from aurora_tg.data.preference_data import PreferenceData, answer_row, default_pairs, read_pairs
from aurora_tg.data.tokenizer import train_bpe
from aurora_tg.model import IGNORE_INDEX
from conftest import sample_text

SYSTEM = {"role": "system", "content": "be brief"}
ASK, EARLIER = {"role": "user", "content": "the cat?"}, {"role": "assistant", "content": "a mat"}
ASK_AGAIN = {"role": "user", "content": "and the dog?"}
EXPECTED = ([ASK], "sat on a mat", "ran past")
EXPECTED_MULTI_TURN = ([ASK, EARLIER, ASK_AGAIN], "ran past", "sang")


def write_jsonl(path, records):
  path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n", encoding="utf-8")
  return path


@pytest.mark.parametrize("record, expected", [
  ({"prompt": "the cat?", "chosen": "sat on a mat", "rejected": "ran past"}, EXPECTED),  # TRL, standard
  ({"prompt": [ASK], "chosen": [{"role": "assistant", "content": "sat on a mat"}],  # TRL, conversational
    "rejected": [{"role": "assistant", "content": "ran past"}]}, EXPECTED),
  ({"chosen": [ASK, EARLIER, ASK_AGAIN, {"role": "assistant", "content": "ran past"}],  # TRL's implicit prompt
    "rejected": [ASK, EARLIER, ASK_AGAIN, {"role": "assistant", "content": "sang"}]}, EXPECTED_MULTI_TURN),
  ({"chosen": "\n\nHuman: the cat?\n\nAssistant: a mat\n\nHuman: and the dog?\n\nAssistant: ran past",  # Anthropic HH
    "rejected": "\n\nHuman: the cat?\n\nAssistant: a mat\n\nHuman: and the dog?\n\nAssistant: sang"}, EXPECTED_MULTI_TURN),
])
def test_each_format_reads_as_prompt_chosen_rejected(tmp_path, record, expected):
  assert read_pairs(str(write_jsonl(tmp_path / "pairs.jsonl", [record, record]))) == [expected, expected]


def test_a_bad_record_is_reported_with_its_line_and_skipped(tmp_path):
  good = {"prompt": "the cat?", "chosen": "sat on a mat", "rejected": "ran past"}
  bad = ["{oops", {"prompt": "q", "chosen": "a"}, {"prompt": [{"role": "robot", "content": "x"}], "chosen": "a", "rejected": "b"},
         {"prompt": "q", "chosen": [ASK, EARLIER], "rejected": "b"}, {"prompt": [], "chosen": "a", "rejected": "b"}]
  path = write_jsonl(tmp_path / "pairs.jsonl", [good, *bad, good])
  warnings = []
  assert read_pairs(str(path), warn=warnings.append) == [EXPECTED, EXPECTED]
  assert [w.split(": skipped")[0] for w in warnings] == [f"{path}:{line}" for line in (2, 3, 4, 5, 6)], warnings
  assert "end in a user's turn" in warnings[-1]
  hh = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: other\n\nAssistant: c"}])
  with pytest.raises(UserError, match="no usable preference pair"): read_pairs(str(hh), warn=warnings.append)
  assert "differ only in their last turn" in warnings[-1]


def test_rows_target_only_the_answers_tokens_with_chosen_then_rejected():
  tokenizer = train_bpe([sample_text()], 300)
  prompt = [SYSTEM, ASK, EARLIER, ASK_AGAIN]
  ids, targets = answer_row(tokenizer, prompt, "ran past", 64)
  answer = tokenizer.encode("ran past") + [tokenizer.special("<|end|>")]
  assert [t for t in targets if t != IGNORE_INDEX] == answer  # not the earlier assistant turn "a mat"
  assert ids[-len(answer):] == answer and targets[:-len(answer)] == [IGNORE_INDEX] * (len(ids) - len(answer))
  data = PreferenceData([(prompt, "ran past", "sang")] * 3, tokenizer, 64)
  x, y = data.batch(np.random.default_rng(0), 2)
  rejected = tokenizer.encode("sang") + [tokenizer.special("<|end|>")]
  for row in range(4):
    assert list(y[row][y[row] != IGNORE_INDEX]) == (answer if row < 2 else rejected)
    n = len(ids) - 1 if row < 2 else len(ids) - len(answer) + len(rejected) - 1
    assert list(x[row, :n]) == (ids[:-1] if row < 2 else ids[:-len(answer)] + rejected[:-1])


def test_default_pairs_prefer_each_answer_over_answers_of_another_kind():
  from aurora_tg.data.chat_data import default_questions
  kind_of = {answer: kind for _, answer, kind in default_questions()}
  pairs = default_pairs()
  assert len(pairs) == 4 * len(default_questions())
  assert all(kind_of[chosen] != kind_of[rejected] for _, chosen, rejected in pairs)
  assert len({rejected for _, _, rejected in pairs}) > 200  # drawn across the topics, not a few fixed answers
  assert default_pairs() == pairs  # the same pairs every run
