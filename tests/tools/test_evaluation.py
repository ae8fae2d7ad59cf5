import json, math, os, subprocess, sys
import numpy as np
import pytest
from tinygrad import Tensor
from aurora_tg.cli import eval as eval_command
from aurora_tg.tools import evaluation
from aurora_tg.tools.evaluation import Item, bits_per_byte, hellaswag
from aurora_tg.model import GPT, GPTConfig
from aurora_tg.data.prepare import prepare
from aurora_tg.data.sources import open_source
from aurora_tg.data.tokenizer import train_bpe
from conftest import ROOT, run_main, sample_text
from test_huggingface import HF_SHAPE, hf_tensors, write_hf_folder
from test_prepare import documents, hub_cache, write_jsonl

CONTEXT, ROWS = 32, 16  # every forward here has this shape (4 HellaSwag items or 16 windows), so kernels compile once


@pytest.fixture(scope="module")
def model_and_tokenizer():
  tok = train_bpe([sample_text(3000)], 300)
  Tensor.manual_seed(3)
  return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=CONTEXT, vocab_size=tok.n_vocab)), tok


def numpy_losses(model, rows: list[list[int]]) -> list[np.ndarray]:
  """Each row's next-token losses: the model's logits for all rows at once (each padded to the context, which a
  causal model's earlier positions do not see), then a float64 log-softmax in numpy."""
  padded = [ids[:-1] + [0] * (CONTEXT - len(ids) + 1) for ids in rows]
  padded += [[0] * CONTEXT] * (-len(padded) % ROWS)  # whole batches of one shape: one compiled forward
  logits = np.concatenate([model(Tensor(padded[i:i + ROWS])).numpy() for i in range(0, len(padded), ROWS)]).astype(np.float64)
  log_probs = logits - logits.max(-1, keepdims=True)
  log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
  return [-log_probs[r, np.arange(len(ids) - 1), ids[1:]] for r, ids in enumerate(rows)]


def make_items(n: int, seed: int = 0) -> list[Item]:
  rng = np.random.default_rng(seed)
  words = sample_text(400, seed=seed).split()
  phrase = lambda k: " ".join(rng.choice(words, size=k))
  return [Item(phrase(rng.integers(3, 40)), tuple(phrase(rng.integers(1, 9)) for _ in range(4)), int(rng.integers(4))) for _ in range(n)]


def test_hellaswag_picks_item_by_item_what_numpy_picks(model_and_tokenizer):
  model, tok = model_and_tokenizer
  items = make_items(11)  # 11 items in batches of 4: the last batch is partial; long contexts are cut from the left
  result = hellaswag(model, tok, items, batch_items=4, log=lambda line: None)
  rows = [(tok.encode(item.context) + tok.encode(" " + ending))[-(CONTEXT + 1):] for item in items for ending in item.endings]
  tails = [len(tok.encode(" " + ending)) for item in items for ending in item.endings]
  losses = [row_losses[-tail:] for row_losses, tail in zip(numpy_losses(model, rows), tails)]
  sums, means = np.array([l.sum() for l in losses]).reshape(-1, 4), np.array([l.mean() for l in losses]).reshape(-1, 4)
  picks, picks_norm = np.argmin(sums, 1).tolist(), np.argmin(means, 1).tolist()
  assert any(len(tok.encode(i.context)) + 8 > CONTEXT for i in items)
  assert result["picks"] == picks and result["picks_norm"] == picks_norm
  labels = np.array([i.label for i in items])
  acc, acc_norm = np.mean(np.array(picks) == labels), np.mean(np.array(picks_norm) == labels)
  assert result["acc"] == pytest.approx(acc) and result["acc_norm"] == pytest.approx(acc_norm)
  assert result["acc_stderr"] == pytest.approx(math.sqrt(acc * (1 - acc) / 10))


def test_bits_per_byte_of_a_source_matches_numpy(model_and_tokenizer, tmp_path):
  model, tok = model_and_tokenizer
  docs = documents(30)
  folder = prepare(open_source(str(write_jsonl(tmp_path / "d.jsonl", docs))), tok, tmp_path / "shards", workers=1)
  result = bits_per_byte(model, tok, folder, batch_size=ROWS, log=lambda line: None)
  bits, n_bytes = 0.0, 0
  shards = [np.fromfile(folder / e["file"], np.uint16) for split in ("train", "val") for e in json.loads((folder / "manifest.json").read_text())["shards"][split]]
  rows = [shard[start:start + CONTEXT + 1].tolist() for shard in shards for start in range(0, len(shard) - 1, CONTEXT)]
  for ids, losses in zip(rows, numpy_losses(model, rows)):
    text = [(loss, t) for loss, t in zip(losses, ids[1:]) if t != tok.eot]  # <|endoftext|> stands for no text
    bits += sum(loss for loss, _ in text) / math.log(2)
    n_bytes += sum(len(tok.decode_bytes([t])) for _, t in text)
  firsts = sum(len(tok.decode_bytes([int(shard[0])])) for shard in shards)
  assert n_bytes == sum(len(d.encode()) for d in docs) - firsts  # every byte of the source once, but a shard's first token
  assert result["bpb"] == pytest.approx(bits / n_bytes, rel=1e-5)


def test_a_hub_model_loads_by_id_from_the_cache_offline_and_bad_input_is_one_line(tmp_path):
  folder = write_hf_folder(tmp_path / "local", hf_tensors(**HF_SHAPE))
  hub_cache(tmp_path / "hf", "someone/tiny-gpt2", {n: (folder / n).read_bytes() for n in ("config.json", "model.safetensors")}, kind="models")
  (tmp_path / "hs.jsonl").write_text("".join(json.dumps({"ctx": i.context, "endings": list(i.endings), "label": i.label}) + "\n" for i in make_items(5)))
  env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
  run = lambda *args: subprocess.run([sys.executable, "-m", "aurora_tg.eval", *map(str, args)], env=env, capture_output=True, text=True, timeout=300)
  by_id, by_folder = run("someone/tiny-gpt2", "--task", "hellaswag", "--data", tmp_path / "hs.jsonl"), run(folder, "--task", "hellaswag", "--data", tmp_path / "hs.jsonl")
  assert by_id.returncode == 0, by_id.stderr
  assert "HellaSwag (5 items): acc" in by_id.stdout and by_id.stdout.splitlines()[-1] == by_folder.stdout.splitlines()[-1]
  missing = run("someone/absent", "--task", "hellaswag", "--data", tmp_path / "hs.jsonl")
  assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "hf download someone/absent config.json model.safetensors" in missing.stderr


@pytest.mark.parametrize("args, message", [
  (["--task", "mmlu"], "unknown task 'mmlu'; choose hellaswag or bpb"),
  (["--task", "hellaswag", "--data", "{bad}"], "bad.jsonl:2: not a HellaSwag item"),
  (["--task", "bpb"], "--task bpb needs --data SOURCE"),
])
def test_bad_evaluations_are_one_error_line(tmp_path, args, message):
  (tmp_path / "bad.jsonl").write_text('{"ctx": "a", "endings": ["b", "c", "d", "e"], "label": 1}\n{"ctx": "a", "endings": ["b"], "label": 0}\n')
  folder = write_hf_folder(tmp_path / "local", hf_tensors(**HF_SHAPE))
  result = run_main(eval_command.main, [folder, *[a.replace("{bad}", str(tmp_path / "bad.jsonl")) for a in args]])
  assert result.returncode == 2 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1 and message in result.stderr
