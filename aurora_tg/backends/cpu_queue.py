"""Decoding on tinygrad's CPU backend through its command queue (tinygrad's HCQ2 runtime).

A jitted step on the CPU backend normally launches its kernels from Python, one call each: for a small model that
costs more than the kernels (the `small` preset's 70 kernels per token took about 3 ms, 2 of them in Python). With
HCQ2, TinyJit writes the whole step into a command buffer once and a worker thread runs it: each jitted step (a
prefill chunk, a decoded token with the choice of the next) is one submission. tinygrad reads the setting once,
when it is imported, so this module imports nothing of tinygrad and runs first.

It is for decoding only (chat.py, the server, bench/decode.py): in tinygrad 0.14 the runtime is still new, and
training with data parallelism over CPU devices computed different losses under it."""
import os, sys
from aurora_tg.backends import fence  # imports nothing of tinygrad


def use_for_decoding(device: str | None) -> bool:
  """Turn HCQ2 on when decoding will run on the CPU backend (`device`, else the DEV variable, names CPU), unless the
  user set HCQ2 or tinygrad is imported already (then its choice is made: a late switch would half-apply). Only
  tinygrad's default CPU renderer (clang): the queue builds its own programs with clang, and DEV=CPU:LLVM beside
  it is untried."""
  name = (device or os.environ.get("DEV", "")).strip().upper()
  if name != "CPU" or "HCQ2" in os.environ or "tinygrad" in sys.modules: return False
  if not fence.allows("decoding through the CPU command queue"): return False
  os.environ["HCQ2"] = "1"
  return True
