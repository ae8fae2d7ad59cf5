"""Decoding speed, in one run, on one model (random weights in a preset's shape, saved once and loaded by each):
Aurora in float32, float16 and int8; Hugging Face transformers (PyTorch, float32) on the same weights when it is
importable; llama.cpp (llama-cpp-python) on the model exported as GGUF (float32 and q8_0) when it is installed.
Each decodes greedily with a KV cache after a prompt of half the context, the engines taking turns over several
rounds. Prints each engine's median time per token and its range, tokens/s, the weight bytes read per second, each
engine against transformers, and the time a fresh process takes to its first token.

  python bench/decode.py [--size small|gpt2] [--tokens 32] [--rounds 5] [--device CL] [--no-cold] [--beam 2]
"""
import argparse, os, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_run(folder: Path, size: str) -> Path:
  """A checkpoint of the preset with random weights: GPT-2's tokenizer for GPT-2's shapes, else a BPE of the
  preset's vocabulary trained on the default corpus (GGUF export needs a real tokenizer)."""
  from tinygrad import Tensor
  from tinygrad.nn.state import get_state_dict
  from aurora_tg.formats import checkpoint
  from aurora_tg.inference import loading
  from aurora_tg.model import GPT, GPTConfig, PRESETS
  from aurora_tg.data.sources import default_corpus
  from aurora_tg.data.tokenizer import gpt2, train_bpe
  shape = PRESETS[size]
  tokenizer = train_bpe(default_corpus()[:2000], shape["vocab_size"]) if "vocab_size" in shape else gpt2()
  Tensor.manual_seed(0)
  model = GPT(GPTConfig(**{**shape, "vocab_size": tokenizer.n_vocab}))
  run = folder / size
  checkpoint.save(run, get_state_dict(model), {}, checkpoint.RunRecord("pretrain", model.cfg, tokenizer.fingerprint()))
  tokenizer.save(str(run / checkpoint.TOKENIZER_NAME))
  return run


def warmed(engine: dict) -> dict:
  """The engine after two untimed tokens from its prompt's first choice (compiling, then TinyJit's capture; with
  BEAM, the kernel search), with the token its timed rounds continue from."""
  engine["token"] = engine["step"](engine["step"](engine.pop("first")))
  return engine


def timed_rounds(engines: list[dict], tokens: int, rounds: int) -> None:
  """Each engine's seconds per token ("s", the median over rounds) and their range ("spread"). The rounds take turns,
  each engine decoding `tokens` tokens per round from where `warmed` left it. The engines take turns, rather than
  one engine timing all its tokens at once, so a slow spell of a shared machine falls on all of them and the medians
  compare."""
  for e in engines: e["times"] = []
  for done in range(1, rounds + 1):
    for e in engines:
      time.sleep(0.2)  # the previous engine's worker threads stop spinning before this one's clock starts
      token, start = e["token"], time.perf_counter()
      for _ in range(tokens): token = e["step"](token)
      e["times"].append((time.perf_counter() - start) / tokens)
      e["token"] = token
    print(f"  round {done}/{rounds}: " + ", ".join(f"{e['engine'].split(' (')[0].split(',')[0]} {e['times'][-1] * 1e3:.2f}" for e in engines) + " ms/token", flush=True)
  for e in engines: e["s"], e["spread"] = float(np.median(e["times"])), (min(e["times"]), max(e["times"]))


def aurora(run: Path, kind: str | None, prompt: list[int], beam: int) -> dict:
  from aurora_tg.formats import checkpoint
  from aurora_tg.inference import loading
  from aurora_tg.inference.generate import Generator
  from aurora_tg.inference.quantize import weight_bytes
  model, _, _ = loading.load_model(run, kind)
  model.wte.pad_rows()  # as chat.py does
  gen, n = Generator(model, beam=beam), len(prompt)
  start = time.perf_counter()
  first = gen.choose(gen.prefill(prompt))
  position = [n]

  def step(token):  # positions wrap within the second half of the context, all after the prompt
    p = position[0] = n + (position[0] + 1 - n) % (model.cfg.block_size - n)
    return gen.decode(token, p)
  # prefill and decode compiled (and, with beam, searched) by here
  engine = warmed({"step": step, "first": first, "bytes": weight_bytes(model)})
  searched = f", BEAM={beam}: {time.perf_counter() - start:.0f} s to compile and search" if beam else ""
  return {**engine, "engine": f"Aurora {kind or 'float32'}{searched}"}


def transformers_engine(folder: Path, prompt: list[int]) -> dict | None:
  try: import torch, transformers
  except ImportError: return None
  model = transformers.GPT2LMHeadModel.from_pretrained(str(folder)).eval()
  with torch.inference_mode(): out = model(torch.tensor([prompt]), use_cache=True)
  state = {"cache": out.past_key_values}

  @torch.inference_mode()
  def step(token):  # a fresh prefill when the context fills; greedy, the argmax waited for as a sampler must
    if state["cache"].get_seq_length() >= model.config.n_positions - 1: state["cache"] = model(torch.tensor([prompt]), use_cache=True).past_key_values
    out = model(torch.tensor([[token]]), past_key_values=state["cache"], use_cache=True)
    state["cache"] = out.past_key_values
    return int(out.logits[0, -1].argmax())
  return warmed({"engine": f"transformers {transformers.__version__} float32 ({torch.get_num_threads()} threads)", "step": step,
                 "first": int(out.logits[0, -1].argmax()), "bytes": sum(p.numel() * p.element_size() for p in model.parameters())})


def llama_engine(path: Path, label: str, prompt: list[int], block: int) -> dict | None:
  try: from llama_cpp import Llama
  except ImportError: return None
  llm = Llama(model_path=str(path), n_ctx=block, n_threads=os.cpu_count(), logits_all=True, verbose=False)
  llm.eval(prompt)

  def step(token):
    if llm.n_tokens >= block - 1:
      llm.reset()
      llm.eval(prompt)
    llm.eval([token])
    return int(np.argmax(llm.scores[llm.n_tokens - 1]))
  return warmed({"engine": f"llama.cpp {label} ({os.cpu_count()} threads)", "step": step, "first": int(np.argmax(llm.scores[len(prompt) - 1])),
                 "bytes": path.stat().st_size})


def shown(result: dict | None) -> dict | None:
  if result: print(f"  ready: {result['engine']}", flush=True)
  return result


def cold_start(command: list[str], env: dict | None = None) -> float:
  """Wall seconds for a fresh process to load the model and produce one token."""
  start = time.perf_counter()
  subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})})
  return time.perf_counter() - start


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--size", default="small")
  p.add_argument("--tokens", type=int, default=32, help="decode steps to time per engine and round")
  p.add_argument("--rounds", type=int, default=5, help="rounds the engines take turns in; each engine's figure is its median")
  p.add_argument("--device", help="tinygrad backend for Aurora")
  p.add_argument("--no-cold", action="store_true", help="skip the fresh-process times")
  p.add_argument("--beam", type=int, default=0, help="Aurora's kernel search (chat.py --beam), timed on its own")
  args = p.parse_args()
  from aurora_tg.backends import cpu_queue
  cpu_queue.use_for_decoding(args.device)  # as chat.py: on the CPU backend, jitted steps run from tinygrad's command queue
  from aurora_tg.backends import devices
  from aurora_tg.formats import checkpoint
  from aurora_tg.inference import loading
  from aurora_tg.formats import huggingface as hf
  from aurora_tg.cli.export import main as export
  device = devices.select_device(args.device)
  devices.tune_for_decoding()
  with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    run = make_run(tmp, args.size)
    model, tokenizer, _ = loading.load_model(run)
    cfg = model.cfg
    hf.save(model, tmp / "hf", tokenizer)
    del model
    prompt = np.random.default_rng(0).integers(0, tokenizer.eot, size=cfg.block_size // 2).tolist()
    print(f"preset {args.size}: {cfg.n_layer} layers, width {cfg.n_embd}, context {cfg.block_size}, vocabulary {cfg.vocab_size}; "
          f"Aurora on {device}; greedy decoding after a {len(prompt)}-token prompt, {args.tokens} tokens timed in each of {args.rounds} rounds", flush=True)
    results = [shown(aurora(run, kind, prompt, args.beam)) for kind in (None, "float16", "int8")]
    results.append(shown(transformers_engine(tmp / "hf", prompt)))
    for kind, label in ((None, "float32"), ("int8", "q8_0")):
      gguf = tmp / f"{label}.gguf"
      with open(os.devnull, "w") as quiet:
        stdout, stderr = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = quiet
        try: export([str(run), str(gguf)] + (["--quantize", kind] if kind else []))
        finally: sys.stdout, sys.stderr = stdout, stderr
      results.append(shown(llama_engine(gguf, label, prompt, cfg.block_size)))
    missing = [name for name, r in (("transformers", results[3]), ("llama-cpp-python", results[4])) if r is None]
    results = [r for r in results if r is not None]
    timed_rounds(results, args.tokens, args.rounds)
    base = next((r for r in results if r["engine"].startswith("transformers")), None)
    print(f"\n| engine | ms/token (median of {args.rounds}) | range | tokens/s | weights (MB) | weight GB/s | vs transformers |\n|---|---|---|---|---|---|---|")
    for r in results:
      vs = f"{base['s'] / r['s']:.2f}x" if base else "-"
      low, high = r["spread"]
      print(f"| {r['engine']} | {r['s'] * 1e3:.2f} | {low * 1e3:.2f}-{high * 1e3:.2f} | {1 / r['s']:.1f} | {r['bytes'] / 1e6:.0f} | "
            f"{r['bytes'] / r['s'] / 1e9:.2f} | {vs} |")
    q8 = next((r for r in results if "q8_0" in r["engine"]), None)
    if q8: print(f"\nAurora int8 reaches {q8['s'] / results[2]['s']:.2f}x llama.cpp q8_0's tokens/s")
    if missing: print(f"not importable here (no row): {', '.join(missing)}")
    if args.no_cold: return
    text, dev = tokenizer.decode(prompt[:16]), ["--device", args.device] if args.device else []
    chat = [sys.executable, "chat.py", "--checkpoint", str(run), "--complete", text, "--max-tokens", "1", "--temperature", "0"] + dev
    searched = ["--beam", str(args.beam)] if args.beam else []  # the search's results come from tinygrad's cache
    rows = [(f"Aurora float32, kernels cached{' (searched)' if args.beam else ''}", cold_start(chat + searched)),
            ("Aurora float32, first run ever (CACHELEVEL=0, no search)", cold_start(chat, {"CACHELEVEL": "0"})),
            (f"Aurora int8, kernels cached{' (searched)' if args.beam else ''}", cold_start(chat + ["--quantize", "int8"] + searched))]
    if base:
      code = f"import torch, transformers; m = transformers.GPT2LMHeadModel.from_pretrained({str(tmp / 'hf')!r}); m(torch.tensor([{prompt[:16]}])).logits[0, -1].argmax().item()"
      rows.append(("transformers float32", cold_start([sys.executable, "-c", code])))
    if q8:
      code = f"from llama_cpp import Llama; l = Llama({str(tmp / 'q8_0.gguf')!r}, n_ctx={cfg.block_size}, verbose=False); l.eval({prompt[:16]}); l.scores[15].argmax()"
      rows.append(("llama.cpp q8_0", cold_start([sys.executable, "-c", code])))
    print("\n| fresh process to its first token (16-token prompt) | seconds |\n|---|---|")
    for name, seconds in rows: print(f"| {name} | {seconds:.1f} |")


if __name__ == "__main__":
  main()
