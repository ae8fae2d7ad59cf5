"""Preparing data at scale: peak resident memory and tokens/s of python -m aurora_tg.prepare on generated corpora,
with one worker and with one per core, against the in-memory path Aurora had before (every document read into a
list, every token into a Python list), measured in the same run.

  python bench/data.py [--sizes-mb 200,1000] [--baseline-sizes-mb 200] [--tmp DIR]

Each way runs in a fresh process; the peak is the largest sum of resident memory over that process and its workers,
sampled every 50 ms from /proc (Linux). The corpora are JSON lines of English-like documents with GPT-2's tokenizer;
the baseline is left out of the larger sizes by default, where it needs about 14x the corpus in memory. Last, a short
training run on each corpus's shards shows that training's memory does not grow with the corpus."""
import argparse, json, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# The path before streaming preparation (aurora_tg/data.py up to commit e35b35c): read all, tokenize into a list.
BASELINE = """
import json, sys, numpy as np
sys.path.insert(0, {root!r})
from aurora_tg.data.tokenizer import gpt2
tok = gpt2()
texts = [json.loads(line)["text"] for line in open({path!r}, encoding="utf-8")]
ids = []
for text in texts: ids.extend(tok.encode(text) + [tok.eot])
np.asarray(ids, dtype=np.uint16).tofile({out!r})
print(len(ids))
"""


def make_corpus(path: Path, megabytes: int, seed: int = 0):
  """JSON lines of documents of 50 to 2,000 words drawn from a Zipf-distributed vocabulary of made-up words."""
  rng = np.random.default_rng(seed)
  syllables = ["ta", "ne", "ri", "so", "ka", "lu", "mi", "pe", "do", "gra", "vin", "tho", "el", "an", "qu", "or"]
  vocab = np.array(["".join(rng.choice(syllables, size=rng.integers(1, 4))) for _ in range(20_000)] + [",", ".", "the", "of", "and"])
  weights = 1 / np.arange(1, len(vocab) + 1)
  weights /= weights.sum()
  written = 0
  with open(path, "w", encoding="utf-8") as f:
    while written < megabytes * 1_000_000:
      words = rng.choice(vocab, size=(200, 400), p=weights)
      for row, n in zip(words, rng.integers(50, 400, size=200)):
        line = json.dumps({"text": " ".join(row[:n]).capitalize() + "."}) + "\n"
        f.write(line)
        written += len(line)


def tree_rss_mb(pid: int) -> float:
  """Resident memory of pid and its descendants, from /proc."""
  children: dict[int, list[int]] = {}
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      try: ppid = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
      except OSError: continue
      children.setdefault(ppid, []).append(int(entry))
  total, todo = 0.0, [pid]
  while todo:
    p = todo.pop()
    todo += children.get(p, [])
    try: total += int(open(f"/proc/{p}/status").read().split("VmRSS:")[1].split()[0]) / 1024
    except (OSError, IndexError): pass
  return total


def measure(command: list[str]) -> tuple[float, float, str]:
  """(seconds, peak resident MB of the process tree, stdout)."""
  start, peak = time.perf_counter(), 0.0
  with tempfile.TemporaryFile("w+") as out:
    process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    while process.poll() is None:
      peak = max(peak, tree_rss_mb(process.pid))
      time.sleep(0.05)
    seconds = time.perf_counter() - start
    out.seek(0)
    text = out.read()
  if process.returncode: sys.exit(f"failed: {' '.join(command)}\n{text}")
  return seconds, peak, text


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--sizes-mb", default="200,1000")
  p.add_argument("--baseline-sizes-mb", default="200")
  p.add_argument("--train-steps", type=int, default=30, help="steps of the training whose memory is measured on each corpus")
  p.add_argument("--tmp", default=None, help="where the corpora and shards go (default: the system's temporary folder)")
  args = p.parse_args()
  cores = os.cpu_count() or 1
  rows, training = [], []
  with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
    for mb in map(int, args.sizes_mb.split(",")):
      corpus = Path(tmp) / f"corpus-{mb}.jsonl"
      make_corpus(corpus, mb)
      ways = [("in-memory (before)", [sys.executable, "-c", BASELINE.format(root=str(ROOT), path=str(corpus), out=str(Path(tmp) / "baseline.bin"))], None)] \
        if str(mb) in args.baseline_sizes_mb.split(",") else []
      for workers in sorted({1, cores}):
        out = Path(tmp) / f"shards-{mb}-{workers}"
        ways.append((f"prepare, {workers} worker{'s' if workers > 1 else ''}",
                     [sys.executable, "-m", "aurora_tg.prepare", str(corpus), "--out", str(out), "--workers", str(workers)], out))
      for name, command, out in ways:
        seconds, peak, text = measure(command)
        tokens = sum(json.loads((out / "manifest.json").read_text())["tokens"].values()) if out else int(text.split()[-1])
        rows.append(dict(mb=mb, way=name, seconds=seconds, peak_mb=peak, tokens=tokens))
        print(f"{mb:>5} MB | {name:<20} | {tokens:>12,} tokens | {seconds:7.1f} s | {tokens / seconds:>10,.0f} tokens/s | peak {peak:7.0f} MB", flush=True)
      # training reads the shards memory-mapped: its memory should not depend on the corpus's size
      train = [sys.executable, str(ROOT / "train.py"), "--stage", "pretrain", "--size", "tiny", "--steps", str(args.train_steps),
               "--eval-every", str(args.train_steps), "--data", str(out), "--out", str(Path(tmp) / f"run-{mb}")]
      seconds, peak, _ = measure(train)
      training.append(dict(mb=mb, seconds=seconds, peak_mb=peak))
      print(f"{mb:>5} MB | training {args.train_steps} steps of the tiny preset on its shards | peak {peak:7.0f} MB", flush=True)
      for folder in Path(tmp).glob("shards-*"): shutil.rmtree(folder)
      corpus.unlink()
  lines = [f"Preparation on {cores} cores (bench/data.py), GPT-2 tokenizer, JSON lines corpora:", "",
           "| corpus | way | tokens | seconds | tokens/s | peak resident memory | vs one worker |", "|---|---|---|---|---|---|---|"]
  for r in rows:
    one = next(o for o in rows if o["mb"] == r["mb"] and o["way"] == "prepare, 1 worker")
    lines.append(f"| {r['mb']} MB | {r['way']} | {r['tokens']:,} | {r['seconds']:.1f} | {r['tokens'] / r['seconds']:,.0f} | "
                 f"{r['peak_mb']:,.0f} MB | {(r['tokens'] / r['seconds']) / (one['tokens'] / one['seconds']):.2f}x speed |")
  lines += ["", "| corpus | training's peak resident memory (tiny preset, GPT-2 tokenizer) |", "|---|---|"]
  lines += [f"| {t['mb']} MB | {t['peak_mb']:,.0f} MB |" for t in training]
  print("\n".join(lines))
  (ROOT / "bench" / "results").mkdir(exist_ok=True)
  (ROOT / "bench" / "results" / "data.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
