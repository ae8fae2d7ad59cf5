"""Tokenizers: GPT-2's BPE (tiktoken r50k_base) or a BPE trained on the user's corpus; both encode with tiktoken."""
import base64, hashlib, json
from pathlib import Path
import numpy as np
import tiktoken
from aurora_tg import UserError
from aurora_tg.formats.files import write_atomically

# Reserved for the chat template; <|endoftext|> separates documents in pretraining.
SPECIAL_TOKENS = ("<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")


class Tokenizer:
  def __init__(self, enc: tiktoken.Encoding, spec: dict):
    self.enc, self.spec = enc, spec  # spec: everything needed to rebuild the tokenizer, written as tokenizer.json

  @property
  def n_vocab(self) -> int: return self.enc.n_vocab

  @property
  def eot(self) -> int: return self.enc.eot_token

  def special(self, name: str) -> int: return self.enc.encode_single_token(name)

  def encode(self, text: str) -> list[int]:
    return self.enc.encode_ordinary(text)  # special-token text in user data stays plain text

  def decode(self, ids: list[int]) -> str: return self.enc.decode(ids, errors="replace")

  def decode_bytes(self, ids: list[int]) -> bytes: return self.enc.decode_bytes(ids)

  def token_bytes(self) -> np.ndarray:
    """Each id's length in UTF-8 bytes, 0 for the special tokens (they stand for no text): bits per byte's divisor."""
    special = {self.special(t) for t in self.enc.special_tokens_set}
    return np.array([0 if i in special else len(self.enc.decode_single_token_bytes(i)) for i in range(self.n_vocab)], np.int64)

  def render_chat(self, messages: list[dict], add_generation_prompt: bool = False) -> tuple[list[int], list[bool]]:
    """The chat template, shared by chat and fine-tuning: each turn is <|role|> content <|end|>.
    Returns the ids and, per id, whether it is assistant output (its content and closing <|end|>), which is what
    fine-tuning trains on. add_generation_prompt appends <|assistant|> for the model to answer."""
    ids, is_assistant = [], []
    for message in messages:
      role, content = message["role"], message["content"]
      if role not in ("system", "user", "assistant"): raise ValueError(f"unknown chat role {role!r}")
      body = self.encode(content) + [self.special("<|end|>")]
      ids += [self.special(f"<|{role}|>")] + body
      is_assistant += [False] + [role == "assistant"] * len(body)
    if add_generation_prompt:
      ids.append(self.special("<|assistant|>"))
      is_assistant.append(False)
    return ids, is_assistant

  def fingerprint(self) -> str: return hashlib.sha256(json.dumps(self.spec, sort_keys=True).encode()).hexdigest()[:16]

  def save(self, path: str):
    write_atomically(path, lambda tmp: Path(tmp).write_text(json.dumps(self.spec)))

  @staticmethod
  def load(path: str) -> "Tokenizer":
    try:
      with open(path) as f: spec = json.load(f)
    except (OSError, ValueError) as e: raise UserError(f"cannot read tokenizer {path}: {e}") from None
    return Tokenizer.from_spec(spec)

  @staticmethod
  def from_spec(spec: dict) -> "Tokenizer":
    if spec.get("kind") == "gpt2": return gpt2()
    if spec.get("kind") == "bpe":
      ranks = {base64.b64decode(tok): rank for rank, tok in enumerate(spec["ranks"])}
      return Tokenizer(_with_specials("aurora_bpe", spec["pattern"], ranks, {}), spec)
    raise UserError(f"unknown tokenizer kind {spec.get('kind')!r}")


def _with_specials(name: str, pattern: str, ranks: dict[bytes, int], specials: dict[str, int]) -> tiktoken.Encoding:
  """Give every special token not yet present the next free id, after the BPE ranks."""
  specials = dict(specials)
  for tok in SPECIAL_TOKENS:
    if tok not in specials: specials[tok] = len(ranks) + len(specials)
  return tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)


def gpt2() -> Tokenizer:
  """GPT-2's own BPE; the chat tokens extend its vocabulary past <|endoftext|> (50256)."""
  try: base = tiktoken.get_encoding("r50k_base")
  except Exception as e:
    raise UserError(f"cannot load GPT-2's BPE (tiktoken r50k_base): {e}; offline, set TIKTOKEN_CACHE_DIR to a cache holding it") from None
  enc = _with_specials("gpt2_chat", base._pat_str, base._mergeable_ranks, base._special_tokens)
  return Tokenizer(enc, {"kind": "gpt2"})


def train_bpe(texts: list[str], vocab_size: int) -> Tokenizer:
  """Train a byte-level BPE of vocab_size tokens (specials included) on texts. rustbpe trains, tiktoken encodes."""
  import rustbpe
  n_merged = vocab_size - len(SPECIAL_TOKENS)
  if n_merged < 256: raise UserError(f"vocabulary of {vocab_size} is too small: a byte-level BPE needs at least {256 + len(SPECIAL_TOKENS)}")
  trainer = rustbpe.Tokenizer()
  trainer.train_from_iterator(iter(texts), n_merged)
  ranks = dict(trainer.get_mergeable_ranks())
  spec = {"kind": "bpe", "pattern": trainer.get_pattern(),
          "ranks": [base64.b64encode(tok).decode() for tok, _ in sorted(ranks.items(), key=lambda kv: kv[1])]}
  return Tokenizer.from_spec(spec)
