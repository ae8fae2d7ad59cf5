"""Generation speed: prefill tokens/s, decode tokens/s with the KV cache, and decode without it (every new token
recomputes the whole sequence), for one preset with random weights, measured in one run. When PyTorch and Hugging
Face transformers are importable, their GPT2LMHeadModel in the same shapes is the baseline.

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


def transformers_times(cfg, prompt: list[int], prompt_len: int, tokens: int) -> tuple[str, float, float] | None:
  """Hugging Face GPT-2 with random weights in float32 (as Aurora decodes): (name, prefill s, decode s per token) of
  a greedy decode with its KV cache, each token's argmax waited for as a sampler must; None without the packages."""
  try:
    import torch, transformers
  except ImportError: return None
  device = "cuda" if torch.cuda.is_available() else "cpu"
  torch.manual_seed(0)
  config = transformers.GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer, n_head=cfg.n_head)
  model = transformers.GPT2LMHeadModel(config).to(device).eval()
  ids = torch.tensor([prompt[:prompt_len]], device=device)

  def prefill():
    out = model(ids, use_cache=True)
    return out.past_key_values, out.logits[:, -1:].argmax(-1)

  def decode():  # the timed tokens follow the prompt, as Aurora's do
    cache, token = prefill()
    if device == "cuda": torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(tokens):
      out = model(token, past_key_values=cache, use_cache=True)
      cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
      token.item()
    return time.perf_counter() - start

  with torch.inference_mode():
    prefill_s = timed(lambda: prefill()[1].item(), 5)
    decode(); decode_s = decode() / tokens
  return f"transformers {transformers.__version__} ({device})", prefill_s, decode_s


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
    gen.choose(gen.prefill(prompt[:prompt_len]))  # the first token chosen on the device, as chat does
  prefill_s = timed(prefill, 5)

  steps = iter(range(10 ** 9))
  def decode():  # positions cycle through the second half of the context, all after the cached prompt
    position = prompt_len + next(steps) % (cfg.block_size - prompt_len)
    gen.choose(gen.decode(prompt[position], position))  # greedy on the device; only the token id comes back
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

  baseline = transformers_times(cfg, prompt, prompt_len, args.tokens)
  if baseline is None:
    print("PyTorch or transformers is not importable: no baseline (pip install torch transformers)")
    return
  name, hf_prefill_s, hf_decode_s = baseline
  print(f"\n| phase | Aurora ms | {name} ms | Aurora speed vs transformers |\n|---|---|---|---|")
  for phase, ours, theirs in (("prefill (per prompt)", prefill_s, hf_prefill_s), ("decode, KV cache (per token)", decode_s, hf_decode_s)):
    print(f"| {phase} | {ours * 1e3:.1f} | {theirs * 1e3:.1f} | {theirs / ours:.2f}x |")


if __name__ == "__main__":
  main()
