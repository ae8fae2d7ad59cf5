"""What `python chat.py` does: a multi-turn conversation that fits the context window, answers streamed as text."""
import codecs, sys
from typing import Iterator
from aurora_tg import UserError
from aurora_tg.inference.generate import Generator
from aurora_tg.inference.sampling import Sampling
from aurora_tg.model import GPT
from aurora_tg.data.tokenizer import Tokenizer, SPECIAL_TOKENS

HELP = """commands:
  /reset          forget the conversation (the system prompt stays)
  /system TEXT    set the system prompt (empty TEXT removes it) and start over
  /help           this list
  /exit           leave (Ctrl-D works too; Ctrl-C stops an answer)"""


def stop_tokens(tokenizer: Tokenizer) -> set[int]:
  """An answer ends at the end of its turn, at the end of text, or where the model starts a new role."""
  return {tokenizer.special(t) for t in SPECIAL_TOKENS}


def fit_context(tokenizer: Tokenizer, messages: list[dict], budget: int) -> list[int]:
  """Render messages plus the assistant prompt in at most `budget` tokens by dropping the oldest turns.
  The system prompt and the newest message always stay; if they alone do not fit, that is the user's to fix."""
  kept = list(messages)
  while True:
    ids, _ = tokenizer.render_chat(kept, add_generation_prompt=True)
    if len(ids) <= budget: return ids
    first = next((i for i, m in enumerate(kept) if m["role"] != "system"), None)
    if first is None or first == len(kept) - 1:
      raise UserError(f"the message needs {len(ids)} tokens but the model's context leaves {budget} for it; write a shorter one")
    del kept[first]


class ChatSession:
  def __init__(self, model: GPT, tokenizer: Tokenizer, sampling: Sampling, system: str | None = None, beam: int = 0):
    self.tokenizer, self.sampling, self.system = tokenizer, sampling, system
    self.generator = Generator(model, beam=beam)
    if beam: self.generator.compile(sampling)  # the search's minutes before the first question, not inside its answer
    self.stop = stop_tokens(tokenizer)
    # the answer keeps at least half the context (or max_tokens, if smaller); older turns make way for it
    self.prompt_budget = model.cfg.block_size - min(sampling.max_tokens, model.cfg.block_size // 2)
    self.reset()

  def reset(self):
    self.messages = [{"role": "system", "content": self.system}] if self.system else []

  def set_system(self, text: str | None):
    self.system = text or None
    self.reset()

  def reply(self, text: str) -> Iterator[str]:
    """Stream the answer to `text` as decoded text. Whatever was produced stays in the conversation, even when the
    caller stops early (close the iterator, as a `finally` does after Ctrl-C)."""
    self.messages.append({"role": "user", "content": text})
    try: ids = fit_context(self.tokenizer, self.messages, self.prompt_budget)
    except UserError:
      self.messages.pop()
      raise
    pieces = []
    try:
      for piece in stream_text(self.generator, self.tokenizer, ids, self.sampling, self.stop):
        pieces.append(piece)
        yield piece
    finally:
      self.messages.append({"role": "assistant", "content": "".join(pieces)})


def stream_text(generator: Generator, tokenizer: Tokenizer, ids: list[int], sampling: Sampling, stop: set[int]) -> Iterator[str]:
  """Generated tokens as text. A character can span several tokens, so bytes go through an incremental decoder."""
  decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
  for token in generator.stream(ids, sampling, stop):
    if text := decoder.decode(tokenizer.decode_bytes([token])): yield text
  if tail := decoder.decode(b"", final=True): yield tail


def print_stream(pieces: Iterator[str]) -> bool:
  """Print pieces as they come; Ctrl-C stops them. Returns False when stopped."""
  try:
    for piece in pieces: print(piece, end="", flush=True)
    return True
  except KeyboardInterrupt:
    print(" [stopped]", end="")
    return False
  finally:
    pieces.close()
    print(flush=True)


def interactive(session: ChatSession, banner: str):
  try: import readline  # noqa: F401  line editing and history for input(); absent on some platforms
  except ImportError: pass
  print(banner)
  while True:
    try: line = input("you> ").strip()
    except EOFError:
      print()
      return
    except KeyboardInterrupt:  # like Python's REPL: Ctrl-C at the prompt discards the line
      print()
      continue
    if not line: continue
    if line.startswith("/"):
      if not command(session, line): return
      continue
    print("aurora> ", end="", flush=True)
    try: print_stream(session.reply(line))
    except UserError as e: print(f"\n{e}")


def command(session: ChatSession, line: str) -> bool:
  """Run a slash command; False means leave."""
  name, _, arg = line.partition(" ")
  if name in ("/exit", "/quit"): return False
  if name == "/reset":
    session.reset()
    print("(conversation cleared)")
  elif name == "/system":
    session.set_system(arg.strip())
    print(f"(system prompt {'set' if session.system else 'removed'}; conversation cleared)")
  elif name == "/help": print(HELP)
  else: print(f"unknown command {name}; /help lists the commands")
  return True


def one_shot(session: ChatSession, question: str | None) -> int:
  """-p: answer one question (from the argument, or stdin when it is '-' or absent) and exit."""
  if question in (None, "-"): question = sys.stdin.read()
  if not question.strip(): raise UserError("no question: pass -p \"TEXT\" or pipe the question into stdin")
  return 0 if print_stream(session.reply(question.strip())) else 130


def complete(model: GPT, tokenizer: Tokenizer, text: str, sampling: Sampling, beam: int = 0) -> int:
  """--complete: continue raw text, the way a base model is used."""
  ids = tokenizer.encode(text)[-(model.cfg.block_size - 1):]
  if not ids: raise UserError("--complete needs some text to continue")
  generator = Generator(model, beam=beam)
  if beam: generator.compile(sampling)
  print(text, end="", flush=True)
  return 0 if print_stream(stream_text(generator, tokenizer, ids, sampling, {tokenizer.eot})) else 130
