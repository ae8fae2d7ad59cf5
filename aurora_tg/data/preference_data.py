"""Preference data for DPO: pairs of answers to one prompt, one preferred (chosen), one not (rejected), in the formats
people have them (see read_pairs), or built from the default conversations. Batches put each pair's chosen and
rejected answers in the same row of two halves, with loss targets on the answers' tokens only."""
import hashlib, json, re
import numpy as np
from aurora_tg import UserError
from aurora_tg.data.chat_data import default_conversations, default_questions, validate
from aurora_tg.data.sources import records
from aurora_tg.data.tokenizer import Tokenizer
from aurora_tg.model import IGNORE_INDEX

# A pair: the conversation so far (ending in a user turn), then the chosen and the rejected answer.
Pair = tuple[list[dict], str, str]


def default_pairs(rejected_per_answer: int = 4, seed: int = 0) -> list[Pair]:
  """Each default conversation's answer preferred over answers of another kind (small talk, a statement's
  explanation, a module's summary) drawn at random: an assistant that answers what was asked. (Against answers of
  the same kind, one module's summary against another's, the default small model learns too little to tell them
  apart: docs/finetuning.md.)"""
  conversations, kinds = default_conversations(), [kind for _, _, kind in default_questions()]
  rng, pairs = np.random.default_rng(seed), []
  for conversation, kind in zip(conversations, kinds):
    for other in rng.integers(0, len(conversations), size=rejected_per_answer):
      while kinds[other] == kind: other = (other + 1) % len(conversations)  # the next of another kind
      pairs.append((conversation[:-1], conversation[-1]["content"], conversations[other][-1]["content"]))
  return pairs


def read_pairs(spec: str, warn=print) -> list[Pair]:
  """Pairs from JSON lines or parquet (a file, a folder, hf:REPO[:FILES]), in TRL's or Anthropic HH's format, detected
  from the first record of each file (see FORMATS). A bad record is reported with its line and skipped."""
  pairs, formats = [], {}
  for where, record in records(spec):
    file = where.rsplit(":", 1)[0]
    try:
      if record is None: raise ValueError("not a JSON object")
      pairs.append(FORMATS[formats.setdefault(file, detect_format(record))](record))
    except (ValueError, TypeError, KeyError, AttributeError) as e: warn(f"{where}: skipped, {e}")
  if not pairs: raise UserError(f"{spec} holds no usable preference pair")
  return pairs


def from_trl(record: dict) -> Pair:
  """TRL's explicit prompt: {"prompt", "chosen", "rejected"}, each a string or a list of messages (the prompt's ending
  in a user turn, the answers' a single assistant turn)."""
  prompt = record["prompt"]
  prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
  return _pair(prompt + _as_answer(record["chosen"]), prompt + _as_answer(record["rejected"]))


def from_dialogues(record: dict) -> Pair:
  """Two whole dialogues that differ in their last assistant turn: TRL's implicit prompt ({"chosen": [messages],
  "rejected": [messages]}) or Anthropic HH's ({"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": ...})."""
  return _pair(*(_hh_messages(record[k]) if isinstance(record[k], str) else record[k] for k in ("chosen", "rejected")))


FORMATS = {"trl": from_trl, "dialogues": from_dialogues}


def detect_format(record: dict) -> str:
  if "prompt" in record: return "trl"
  if "chosen" in record and "rejected" in record: return "dialogues"
  raise ValueError('expected TRL\'s {"prompt", "chosen", "rejected"} or two dialogues {"chosen", "rejected"} '
                   "(TRL's implicit prompt, Anthropic HH)")


def _as_answer(answer) -> list[dict]:
  return [{"role": "assistant", "content": answer}] if isinstance(answer, str) else answer


HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def _hh_messages(text: str) -> list[dict]:
  """Anthropic HH's "\\n\\nHuman: ... \\n\\nAssistant: ..." as messages."""
  parts = HH_TURN.split(text)
  if len(parts) < 3 or parts[0].strip(): raise ValueError('expected a dialogue of "\\n\\nHuman: " and "\\n\\nAssistant: " turns')
  return [{"role": "user" if who == "Human" else "assistant", "content": said.strip()} for who, said in zip(parts[1::2], parts[2::2])]


def _pair(chosen: list[dict], rejected: list[dict]) -> Pair:
  chosen, rejected = validate({"messages": chosen}), validate({"messages": rejected})
  if chosen[:-1] != rejected[:-1] or chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
    raise ValueError("the chosen and rejected dialogues must differ only in their last turn, an assistant's")
  if len(chosen) < 2 or chosen[-2]["role"] != "user": raise ValueError("the prompt must end in a user's turn")
  return chosen[:-1], chosen[-1]["content"], rejected[-1]["content"]


def answer_row(tokenizer: Tokenizer, prompt: list[dict], answer: str, block_size: int) -> tuple[list[int], list[int]]:
  """(ids, targets) of the prompt and answer rendered with the chat template: targets only on the answer's tokens
  (its content and closing <|end|>), not on the prompt's earlier assistant turns."""
  ids, is_assistant = tokenizer.render_chat(prompt + [{"role": "assistant", "content": answer}])
  start = len(tokenizer.render_chat(prompt)[0])
  targets = [t if m and i >= start else IGNORE_INDEX for i, (t, m) in enumerate(zip(ids, is_assistant))]
  return ids[:block_size + 1], targets[:block_size + 1]


class PreferenceData:
  """Rendered pairs. batch() gives 2n rows: the chosen answers of n pairs, then their rejected answers in the same
  order. Every 20th conversation (by a hash of the prompt, system prompt aside, and the chosen answer) is held out
  with all its pairs, so no held-out answer is learnt as a chosen one to the same question."""
  def __init__(self, pairs: list[Pair], tokenizer: Tokenizer, block_size: int):
    self.block_size, self.pad, rows = block_size, tokenizer.eot, {"train": [], "val": []}
    for prompt, chosen, rejected in pairs:
      row = tuple(answer_row(tokenizer, prompt, answer, block_size) for answer in (chosen, rejected))
      if any(all(t == IGNORE_INDEX for t in targets[1:]) for _, targets in row): continue  # an answer starts past the context
      asked = [m for m in prompt if m["role"] != "system"]  # the same question with and without a system prompt goes one way
      held_out = int(hashlib.sha256(json.dumps([asked, chosen]).encode()).hexdigest(), 16) % 20 == 0
      rows["val" if held_out else "train"].append(row)
    if not rows["train"]: raise UserError("no preference pair fits the context with room for both answers")
    self.train, self.val = rows["train"], rows["val"] or rows["train"][:1]

  def batch(self, rng: np.random.Generator, batch_size: int, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    pairs = self.train if split == "train" else self.val
    return self.rows([pairs[i] for i in rng.integers(0, len(pairs), size=batch_size)])

  def rows(self, pairs: list) -> tuple[np.ndarray, np.ndarray]:
    """x and y (2n, block_size): the chosen rows of the pairs, then the rejected."""
    x = np.full((2 * len(pairs), self.block_size), self.pad, np.int32)
    y = np.full((2 * len(pairs), self.block_size), IGNORE_INDEX, np.int32)
    for half in (0, 1):
      for b, pair in enumerate(pairs):
        ids, targets = pair[half]
        r = half * len(pairs) + b
        x[r, :len(ids) - 1], y[r, :len(ids) - 1] = ids[:-1], targets[1:]
    return x, y
