"""Chat fine-tuning data: conversations from JSONL or built from Python's documentation, rendered with the chat
template, batched with loss only on what the assistant says."""
import hashlib, json, re
import numpy as np
from aurora_tg import UserError
from aurora_tg.data.sources import records, stdlib_modules
from aurora_tg.model import IGNORE_INDEX
from aurora_tg.data.tokenizer import Tokenizer

SYSTEM_PROMPT = "You are Aurora, a small assistant that knows Python's documentation."

# Hand-written small talk, so the assistant can greet, introduce itself and say goodbye.
SMALL_TALK = [
  (("Hello!", "Hi", "hello", "Hey there", "Good morning"), "Hello! I am Aurora. Ask me about Python."),
  (("Who are you?", "What are you?", "Tell me about yourself.", "What is your name?"),
   "I am Aurora, a small language model trained on Python's documentation. I can explain Python statements and modules."),
  (("What can you do?", "How can you help me?", "What do you know?"),
   "I can explain Python's statements, such as with and for, and what the standard library's modules are for."),
  (("Thanks!", "Thank you", "thanks a lot", "Great, thanks."), "You are welcome! Ask me anything else about Python."),
  (("Bye", "Goodbye!", "See you later."), "Goodbye! Happy coding."),
  (("How are you?", "How are you doing?"), "I am fine, thank you. What would you like to know about Python?"),
  (("Who made you?", "Who trained you?"), "I was trained with Aurora, a small training stack written on tinygrad."),
  (("Are you ChatGPT?", "Are you a person?"), "No, I am Aurora, a small language model. I only know what Python's documentation taught me."),
]
TOPIC_QUESTIONS = ("What does the `{k}` statement do?", "Explain `{k}` in Python.", "How does {k} work?", "Tell me about {k}.")
MODULE_QUESTIONS = ("What is the `{k}` module for?", "What does the {k} module do?", "Tell me about the {k} module.",
                    "Which module should I read about: {k}?")


def first_sentences(text: str, limit: int = 240) -> str:
  """The opening of a text, cut at a sentence end: short answers suit a small model's context."""
  text = re.sub(r"\s+", " ", text).strip()
  cut = [m.end() for m in re.finditer(r"[.!?](?=\s|$)", text) if m.end() <= limit]
  return text[:cut[-1]] if cut else text[:limit].rsplit(" ", 1)[0] + "."


def topic_summary(text: str) -> str:
  """A pydoc topic's prose, without its title and underline."""
  lines = [l for l in text.splitlines() if l.strip() and not set(l.strip()) <= set("*=-")]
  return first_sentences(" ".join(lines[1:] if len(lines) > 1 else lines))


def default_questions() -> list[tuple[str, str, str]]:
  """(question, answer, kind) about Python, answered from its own documentation, plus small talk: kind is "small
  talk", "statement" (a pydoc topic) or "module" (a standard module's docstring)."""
  from pydoc_data.topics import topics
  qa = [(q, answer, "small talk") for questions, answer in SMALL_TALK for q in questions] * 8  # few but essential: oversampled
  for key in sorted(topics):
    if key.isidentifier() and (summary := topic_summary(topics[key])):
      qa += [(q.format(k=key), summary, "statement") for q in TOPIC_QUESTIONS]
  for name, module in stdlib_modules():
    if len(doc := (module.__doc__ or "").strip()) > 20:
      qa += [(q.format(k=name), f"The {name} module: {first_sentences(doc)}", "module") for q in MODULE_QUESTIONS]
  return qa


def default_conversations() -> list[list[dict]]:
  """default_questions() as conversations, half with the system prompt; no download needed."""
  conversations = []
  for i, (question, answer, _) in enumerate(default_questions()):
    turns = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    conversations.append(([{"role": "system", "content": SYSTEM_PROMPT}] if i % 2 else []) + turns)  # with and without
  return conversations


def read_conversations(spec: str, warn=print) -> list[list[dict]]:
  """Conversations from JSON lines or parquet (a file, a folder, hf:REPO[:FILES], smoltalk) in any of the three
  formats people have (see FORMATS), detected from the first record of each file. A bad record is reported with its
  line number and skipped; data with no good record at all is an error."""
  conversations, formats = [], {}
  for where, record in records(spec):
    file = where.rsplit(":", 1)[0]
    try:
      if record is None: raise ValueError("not a JSON object")
      name = formats.setdefault(file, detect_format(record))
      conversations.append(validate(FORMATS[name](record)))
    except (ValueError, TypeError, KeyError, AttributeError) as e: warn(f"{where}: skipped, {e}")
  if not conversations: raise UserError(f"{spec} holds no usable conversation")
  return conversations


ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant"}


def from_sharegpt(record: dict) -> dict:
  """{"conversations": [{"from": "human"|"gpt"|"system", "value": str}, ...]}"""
  return {"messages": [{"role": ROLES[turn["from"]], "content": turn["value"]} for turn in record["conversations"]]}


def from_alpaca(record: dict) -> dict:
  """{"instruction": str, "input": str (may be empty), "output": str}: one question, one answer."""
  question = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
  return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": record["output"]}]}


FORMATS = {"messages": lambda record: record, "sharegpt": from_sharegpt, "alpaca": from_alpaca}


def detect_format(record: dict) -> str:
  for name, key in (("messages", "messages"), ("sharegpt", "conversations"), ("alpaca", "instruction")):
    if key in record: return name
  raise ValueError('expected OpenAI messages ({"messages": [...]}), ShareGPT ({"conversations": [...]}) or Alpaca '
                   '({"instruction", "input", "output"})')


def validate(record) -> list[dict]:
  messages = record["messages"] if isinstance(record, dict) else None
  if not isinstance(messages, list) or not messages: raise ValueError("expected {\"messages\": [...]} with at least one message")
  for m in messages:
    if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
      raise ValueError("each message needs a role (system, user or assistant) and a string content")
  if not any(m["role"] == "assistant" for m in messages): raise ValueError("no assistant message to learn from")
  return [{"role": m["role"], "content": m["content"]} for m in messages]


class ChatData:
  """Rendered conversations, one per row, padded to the context; targets are IGNORE_INDEX except on assistant
  tokens (their content and closing <|end|>). Every 20th conversation (by content hash) is held out."""
  def __init__(self, conversations: list[list[dict]], tokenizer: Tokenizer, block_size: int):
    self.block_size, rows = block_size, {"train": [], "val": []}
    for conv in conversations:
      ids, mask = tokenizer.render_chat(conv)
      ids, targets = ids[:block_size + 1], [t if m else IGNORE_INDEX for t, m in zip(ids, mask)][:block_size + 1]
      if all(t == IGNORE_INDEX for t in targets[1:]): continue  # the answer starts past the context
      held_out = int(hashlib.sha256(json.dumps(conv).encode()).hexdigest(), 16) % 20 == 0
      rows["val" if held_out else "train"].append((ids, targets))
    if not rows["train"]: raise UserError("no conversation fits the context with room for an answer")
    self.train, self.val = rows["train"], rows["val"] or rows["train"][:1]
    self.pad = tokenizer.eot

  def batch(self, rng: np.random.Generator, batch_size: int, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    rows = self.train if split == "train" else self.val
    x = np.full((batch_size, self.block_size), self.pad, np.int32)
    y = np.full((batch_size, self.block_size), IGNORE_INDEX, np.int32)
    for b, i in enumerate(rng.integers(0, len(rows), size=batch_size)):
      ids, targets = rows[i]
      x[b, :len(ids) - 1], y[b, :len(ids) - 1] = ids[:-1], targets[1:]
    return x, y
