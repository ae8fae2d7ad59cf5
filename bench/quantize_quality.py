"""What weight-only quantization costs in quality, on trained models (`python train.py` writes both):
- the validation loss of the pretrained model (its corpus's held-out shards) in float32, float16 and int8;
- the greedy answers of the chat model to its held-out questions: the share of answer tokens float16 and int8
  reproduce at the same position as float32 (over the longer of the two answers, so a shorter one counts as a miss);
  one changed token changes the rest of its answer, so this also counts every token after a near-tie flips;
- the share of float32's answer tokens each model predicts as its top token when fed float32's answer so far (as
  llama.cpp's `perplexity --kl-divergence` reports "same top"), and how far its logits there are from float32's
  (root mean square): quantization's error, without the cascade.
int8 comes twice: rounded to nearest (chat.py --quantize int8) and calibrated on the embedded corpus as
`python -m aurora_tg.export RUN OUT --quantize int8 --calibrate` does (GPTQ rounding, aurora_tg/inference/quantize.py).
With llama-cpp-python installed, llama.cpp answers too, from the chat model exported as GGUF in float32 and in its
8-bit q8_0: how another float32 implementation's answers (other kernels, other summation orders) and another 8-bit
format's compare with Aurora's float32 on the same questions, and q8_0's against llama.cpp's own float32.

  python bench/quantize_quality.py [--pretrain runs/small] [--chat runs/small-sft] [--questions 40] [--device CL]
"""
import argparse, os, sys, tempfile
from pathlib import Path
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
KINDS = (None, "float16", "int8", "int8, calibrated")
ANSWER_TOKENS = 48  # the most tokens of one greedy answer


def validation_loss(model, tokenizer, folder: Path, batch_size: int = 8) -> float:
  """Mean next-token loss over the held-out shards, in windows of the model's context."""
  from aurora_tg.data.shards import load_shards
  from aurora_tg.tools.evaluation import Scorer
  from aurora_tg.model import IGNORE_INDEX
  _, val = load_shards(folder)
  T = model.cfg.block_size
  windows = [shard[s:s + T + 1] for shard in val for s in range(0, len(shard) - 1, T)]
  scorer, total, count = Scorer(model, batch_size, T, tokenizer.eot), 0.0, 0
  for first in range(0, len(windows), batch_size):
    losses, targets = scorer.losses([(w[:-1].tolist(), w[1:].tolist()) for w in windows[first:first + batch_size]])
    kept = targets != IGNORE_INDEX
    total, count = total + float(losses[kept].sum()), count + int(kept.sum())
  return total / count


def held_out_prompts(tokenizer, block_size: int, n: int) -> list[list[int]]:
  """The distinct held-out questions of the default chat data, as prompts (the conversation up to the answer)."""
  from aurora_tg.model import IGNORE_INDEX
  from aurora_tg.data.chat_data import ChatData, default_conversations
  data, prompts = ChatData(default_conversations(), tokenizer, block_size), {}
  for ids, targets in data.val:
    prompt = ids[:next(i for i, t in enumerate(targets) if t != IGNORE_INDEX)]
    prompts.setdefault(tuple(prompt), prompt)
  return list(prompts.values())[:n]


def greedy_answers(model, tokenizer, prompts: list[list[int]]) -> list[list[int]]:
  from aurora_tg.inference.conversation import stop_tokens
  from aurora_tg.inference.generate import Generator
  from aurora_tg.inference.sampling import Sampling
  generator = Generator(model)
  return [generator.generate(p, Sampling(temperature=0, max_tokens=ANSWER_TOKENS), stop_tokens(tokenizer)) for p in prompts]


def load(path: str, kind: str | None):
  """The model at path, quantized as `kind` (one of KINDS) says."""
  from aurora_tg.formats import checkpoint
  from aurora_tg.inference import loading
  from aurora_tg.cli.export import CALIBRATION_TOKENS, calibration_windows
  from aurora_tg.inference.quantize import quantize
  if kind != "int8, calibrated": return loading.load_model(path, kind)
  model, tokenizer, record = loading.load_model(path)
  windows = calibration_windows(None, tokenizer, model.cfg.block_size, CALIBRATION_TOKENS)
  return quantize(model, "int8", windows, log=lambda *_: None), tokenizer, record


def fed_reference(model, prompts: list[list[int]], reference: list[list[int]]) -> tuple[float, np.ndarray]:
  """Fed each prompt and reference answer: the share of answer tokens that are the model's top token given what
  comes before them, and the logits at those positions (one row per answer token)."""
  from tinygrad import Tensor
  same, rows = 0, []
  for prompt, answer in zip(prompts, reference):
    logits = model(Tensor([prompt + answer[:-1]]))[0, len(prompt) - 1:].numpy()
    same, rows = same + int((logits.argmax(-1) == answer).sum()), rows + [logits]
  return same / max(1, sum(map(len, reference))), np.concatenate(rows)


def llama_cpp_answers(run: str, kind: str | None, block_size: int, prompts: list[list[int]], reference: list[list[int]], stops: list[int]):
  """llama.cpp's greedy answers (as greedy_answers), share of the same top token and logits (as fed_reference) for the
  model at run exported as GGUF (kind: None or "int8", q8_0); None without llama-cpp-python."""
  try: from llama_cpp import Llama
  except ImportError: return None
  from aurora_tg.cli.export import main as export
  with tempfile.TemporaryDirectory() as tmp, open(os.devnull, "w") as quiet:
    path, streams = Path(tmp) / "model.gguf", (sys.stdout, sys.stderr)
    sys.stdout = sys.stderr = quiet  # the export's progress bar and summary
    try: failed = export([run, str(path)] + (["--quantize", kind] if kind else []))
    finally: sys.stdout, sys.stderr = streams
    if failed: raise SystemExit(f"error: {run} does not export to GGUF; `python -m aurora_tg.export {run} out.gguf` says why")
    llm = Llama(model_path=str(path), n_ctx=block_size, n_threads=os.cpu_count(), logits_all=True, verbose=False)
    answers, same, rows = [], 0, []
    for prompt, answer in zip(prompts, reference):
      llm.reset()
      llm.eval(prompt)
      mine = []
      # as Generator.stream: up to ANSWER_TOKENS, a stop token or a full context
      while len(mine) < ANSWER_TOKENS and (token := int(np.argmax(llm.scores[llm.n_tokens - 1]))) not in stops:
        mine.append(token)
        if len(prompt) + len(mine) > block_size: break  # the context holds no place to feed it
        llm.eval([token])
      answers.append(mine)
      llm.reset()
      llm.eval(prompt + answer[:-1])
      logits = np.array(llm.scores[len(prompt) - 1:llm.n_tokens])
      same, rows = same + int((logits.argmax(-1) == answer).sum()), rows + [logits]
    return answers, same / max(1, sum(map(len, reference))), np.concatenate(rows)


def agreement(reference: list[list[int]], other: list[list[int]]) -> float:
  same = sum(sum(a == b for a, b in zip(r, o)) for r, o in zip(reference, other))
  return same / max(1, sum(max(len(r), len(o)) for r, o in zip(reference, other)))


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--pretrain", default="runs/small")
  p.add_argument("--chat", default="runs/small-sft")
  p.add_argument("--questions", type=int, default=40)
  p.add_argument("--device")
  args = p.parse_args()
  from aurora_tg.backends import devices
  from aurora_tg.data import prepare
  device = devices.select_device(args.device)
  print(f"on {device}")
  losses = {}
  for kind in KINDS:
    model, tokenizer, record = load(args.pretrain, kind)
    folder = prepare.prepared(record.run.data if record.run else None, tokenizer, log=lambda *_: None)
    losses[kind] = validation_loss(model, tokenizer, folder)
  print(f"\n{args.pretrain}: validation loss over its held-out shards\n| weights | loss | vs float32 |\n|---|---|---|")
  for kind, loss in losses.items(): print(f"| {kind or 'float32'} | {loss:.4f} | {100 * (loss / losses[None] - 1):+.3f}% |")
  answers, top, logits = {}, {}, {}
  for kind in KINDS:
    model, tokenizer, _ = load(args.chat, kind)
    prompts = held_out_prompts(tokenizer, model.cfg.block_size, args.questions)
    answers[kind] = greedy_answers(model, tokenizer, prompts)
    top[kind], logits[kind] = fed_reference(model, prompts, answers[None])
  from aurora_tg.inference.conversation import stop_tokens
  for kind, label in ((None, "llama.cpp float32"), ("int8", "llama.cpp q8_0")):
    measured = llama_cpp_answers(args.chat, kind, model.cfg.block_size, prompts, answers[None], stop_tokens(tokenizer))
    if measured: answers[label], top[label], logits[label] = measured
  n_tokens = sum(len(a) for a in answers[None])
  print(f"\n{args.chat}: greedy answers to {len(prompts)} held-out questions ({n_tokens} float32 answer tokens)\n"
        "| weights | tokens as float32's | answers identical | fed float32's answer: same top token | logit error (rms) |\n"
        "|---|---|---|---|---|")
  for kind in list(answers)[1:]:
    same = sum(a == b for a, b in zip(answers[None], answers[kind]))
    error = np.sqrt(np.mean(np.square(logits[kind] - logits[None])))
    print(f"| {kind} | {100 * agreement(answers[None], answers[kind]):.1f}% | {same}/{len(prompts)} | {100 * top[kind]:.2f}% | {error:.4f} |")
  if "llama.cpp q8_0" in answers:
    own = answers["llama.cpp float32"], answers["llama.cpp q8_0"]
    print(f"\nllama.cpp q8_0 against llama.cpp float32: {100 * agreement(*own):.1f}% of tokens, "
          f"{sum(a == b for a, b in zip(*own))}/{len(prompts)} answers identical")
  else: print("\n(llama.cpp's rows need llama-cpp-python)")


if __name__ == "__main__":
  main()
