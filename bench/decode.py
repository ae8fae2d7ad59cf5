"""Generation speed: prefill tokens/s, decode tokens/s with the KV cache, and decode without it (every new token
recomputes the whole sequence), for one preset with random weights, measured in one run.

  python bench/decode.py --size small [--prompt-len N] [--tokens N] [--device CPU]
"""
import argparse, sys, time
from pathlib import Path
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def timed(fn, repeats: int) -> float:
  fn(); fn()  # compile, then let TinyJit capture
  start = time.perf_counter()
  for _ in range(repeats): fn()
  return (time.perf_counter() - start) / repeats


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--size", default="small")
  p.add_argument("--prompt-len", type=int, help="default: half the context")
  p.add_argument("--tokens", type=int, default=16, help="decode steps to time")
  p.add_argument("--prefill-chunk", type=int, default=32)
  p.add_argument("--device")
  args = p.parse_args()

  from tinygrad import Tensor, TinyJit
  from aurora_tg import devices
  from aurora_tg.generate import Generator
  from aurora_tg.model import GPT, GPTConfig, PRESETS
  device = devices.select_device(args.device)
  cfg = GPTConfig(**{"vocab_size": 50261, **PRESETS[args.size]})  # GPT-2 presets use GPT-2's vocabulary + chat tokens
  prompt_len = args.prompt_len or cfg.block_size // 2
  Tensor.manual_seed(0)
  model = GPT(cfg)
  prompt = np.random.default_rng(0).integers(0, cfg.vocab_size, size=cfg.block_size).tolist()
  gen = Generator(model, args.prefill_chunk)

  def prefill():
    gen.cached = []  # forget the prompt, so it is computed again
    gen.prefill(prompt[:prompt_len])
  prefill_s = timed(prefill, 5)

  steps = iter(range(10 ** 9))
  def decode():  # positions cycle through the second half of the context, all after the cached prompt
    position = prompt_len + next(steps) % (cfg.block_size - prompt_len)
    gen.decode(prompt[position], position)
  decode_s = timed(decode, args.tokens)

  # without a cache the best one can do is a jitted forward of the whole (padded) context per token
  full = TinyJit(lambda ids: model(ids)[0].realize())
  def recompute(): full(Tensor([prompt])).numpy()
  recompute_s = timed(recompute, max(3, args.tokens // 4))

  print(f"preset {args.size} ({cfg.n_layer} layers, width {cfg.n_embd}, context {cfg.block_size}, vocabulary {cfg.vocab_size}) "
        f"on {device}; prompt {prompt_len} tokens, prefill chunks of {gen.chunk}")
  print("| phase | ms | tokens/s | vs decode without cache |\n|---|---|---|---|")
  rows = [("prefill (per prompt)", prefill_s, prompt_len / prefill_s), ("decode, KV cache", decode_s, 1 / decode_s),
          ("decode, full recompute", recompute_s, 1 / recompute_s)]
  for name, seconds, rate in rows:
    print(f"| {name} | {seconds * 1e3:.1f} | {rate:,.0f} | {rate * recompute_s:.1f}x |")


if __name__ == "__main__":
  main()
