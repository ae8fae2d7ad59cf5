"""What weight-only quantization costs in quality, on trained models (`python train.py` writes both):
- the validation loss of the pretrained model (its corpus's held-out shards) in float32, float16 and int8;
- the greedy answers of the chat model to its held-out questions: the share of answer tokens float16 and int8
  reproduce at the same position as float32 (over the longer of the two answers, so a shorter one counts as a miss);
  one changed token changes the rest of its answer, so this also counts every token after a near-tie flips;
- the share of float32's answer tokens each model predicts as its top token when fed float32's answer so far (as
  llama.cpp's `perplexity --kl-divergence` reports "same top"): quantization's error, without the cascade.

  python bench/quantize_quality.py [--pretrain runs/small] [--chat runs/small-sft] [--questions 40] [--device CL]
"""
import argparse, sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
KINDS = (None, "float16", "int8")


def validation_loss(model, tokenizer, folder: Path, batch_size: int = 8) -> float:
  """Mean next-token loss over the held-out shards, in windows of the model's context."""
  from aurora_tg.data import load_shards
  from aurora_tg.eval import Scorer
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
  from aurora_tg.sft import ChatData, default_conversations
  data, prompts = ChatData(default_conversations(), tokenizer, block_size), {}
  for ids, targets in data.val:
    prompt = ids[:next(i for i, t in enumerate(targets) if t != IGNORE_INDEX)]
    prompts.setdefault(tuple(prompt), prompt)
  return list(prompts.values())[:n]


def greedy_answers(model, tokenizer, prompts: list[list[int]]) -> list[list[int]]:
  from aurora_tg.chat import stop_tokens
  from aurora_tg.generate import Generator
  from aurora_tg.sampling import Sampling
  generator = Generator(model)
  return [generator.generate(p, Sampling(temperature=0, max_tokens=48), stop_tokens(tokenizer)) for p in prompts]


def same_top_token(model, prompts: list[list[int]], reference: list[list[int]]) -> float:
  """The share of reference answer tokens that are the model's top token given the prompt and the answer before them."""
  from tinygrad import Tensor
  same = total = 0
  for prompt, answer in zip(prompts, reference):
    logits = model(Tensor([prompt + answer[:-1]]))[0, len(prompt) - 1:].argmax(-1).numpy()
    same, total = same + int((logits == answer).sum()), total + len(answer)
  return same / max(1, total)


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
  from aurora_tg import checkpoint, devices, prepare
  device = devices.select_device(args.device)
  print(f"on {device}")
  losses = {}
  for kind in KINDS:
    model, tokenizer, record = checkpoint.load_model(args.pretrain, kind)
    folder = prepare.prepared(record.run.data if record.run else None, tokenizer, log=lambda *_: None)
    losses[kind] = validation_loss(model, tokenizer, folder)
  print(f"\n{args.pretrain}: validation loss over its held-out shards\n| weights | loss | vs float32 |\n|---|---|---|")
  for kind, loss in losses.items(): print(f"| {kind or 'float32'} | {loss:.4f} | {100 * (loss / losses[None] - 1):+.3f}% |")
  answers, top = {}, {}
  for kind in KINDS:
    model, tokenizer, _ = checkpoint.load_model(args.chat, kind)
    prompts = held_out_prompts(tokenizer, model.cfg.block_size, args.questions)
    answers[kind] = greedy_answers(model, tokenizer, prompts)
    top[kind] = same_top_token(model, prompts, answers[None])
  n_tokens = sum(len(a) for a in answers[None])
  print(f"\n{args.chat}: greedy answers to {len(prompts)} held-out questions ({n_tokens} float32 answer tokens)\n"
        "| weights | tokens as float32's | answers identical | same top token, fed float32's answer |\n|---|---|---|---|")
  for kind in KINDS[1:]:
    same = sum(a == b for a, b in zip(answers[None], answers[kind]))
    print(f"| {kind} | {100 * agreement(answers[None], answers[kind]):.1f}% | {same}/{len(prompts)} | {100 * top[kind]:.2f}% |")


if __name__ == "__main__":
  main()
