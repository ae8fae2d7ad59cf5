"""Distillation's loss, SFT teaching answers, and the fine-tuning stages through train.py and chat.py."""
import json
import numpy as np
import pytest
from tinygrad import Tensor, nn
from tinygrad.nn.state import get_state_dict
from aurora_tg import UserError
from aurora_tg.formats import checkpoint
from aurora_tg.finetune import distillation_loss, dpo_loss, prepare_distill
from aurora_tg.cli.train import sample_answers
from aurora_tg.optim import adamw
from aurora_tg.model import GPT, GPTConfig, IGNORE_INDEX
from aurora_tg.data.chat_data import ChatData
from aurora_tg.data.tokenizer import train_bpe
from aurora_tg.config import DistillConfig, TrainSettings
from aurora_tg.trainer import Trainer
from conftest import TEST_SHAPE, run_main, sample_text
from test_chat import chat, greedy_answer
from test_huggingface import CONV1D as HF_CONV1D, numpy_gpt2, read_safetensors_numpy
from test_train import train


def np_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_distillation_loss_matches_numpy_and_is_zero_kl_for_the_teacher_itself():
  rng = np.random.default_rng(0)
  s, t = rng.standard_normal((2, 5, 11)).astype(np.float32) * 3, rng.standard_normal((2, 5, 11)).astype(np.float32) * 3
  y = rng.integers(0, 11, size=(2, 5)); y[0, :2] = IGNORE_INDEX
  got = distillation_loss(Tensor(s), Tensor(t), Tensor(y), alpha=0.7, temperature=2.0).item()
  log_s, log_t = np_log_softmax(s / 2), np_log_softmax(t / 2)
  kl = (np.exp(log_t) * (log_t - log_s)).sum(-1).mean()
  keep = y != IGNORE_INDEX
  ce = -np.take_along_axis(np_log_softmax(s), np.where(keep, y, 0)[..., None], -1)[..., 0][keep].mean()
  assert got == pytest.approx(0.7 * 4 * kl + 0.3 * ce, rel=1e-5)
  assert distillation_loss(Tensor(s), Tensor(s), Tensor(y), alpha=1.0, temperature=2.0).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("rpo_alpha", [0.0, 0.5])
def test_dpo_loss_and_its_gradient_match_numpy_with_prompt_tokens_masked_out(rpo_alpha):
  """On a bigram model (logits = W[token]): the loss and dL/dW in numpy, from the closed form of log-softmax's
  gradient, with the prompt's targets IGNORE_INDEX: they must add nothing to either. With rpo_alpha, plus that
  weight of the chosen answers' mean token loss."""
  rng, V, beta = np.random.default_rng(0), 11, 0.3
  W, ref_W = (rng.standard_normal((V, V)).astype(np.float32) for _ in range(2))
  x, y = rng.integers(0, V, size=(4, 6)), rng.integers(0, V, size=(4, 6))
  y[:, :3] = IGNORE_INDEX  # the prompt: no target
  y[1, 5] = IGNORE_INDEX   # padding past an answer
  weights = Tensor(W)
  weights.requires_grad = True
  loss = dpo_loss(weights[Tensor(x)], Tensor(ref_W)[Tensor(x)], Tensor(y), beta, rpo_alpha)
  loss.backward()
  keep = y != IGNORE_INDEX
  def logprobs(table):
    log_p = np_log_softmax(table[x].astype(np.float64))
    return (np.take_along_axis(log_p, np.where(keep, y, 0)[..., None], -1)[..., 0] * keep).sum(-1), log_p
  (policy, log_p), (reference, _) = logprobs(W), logprobs(ref_W)
  margin = beta * ((policy[:2] - reference[:2]) - (policy[2:] - reference[2:]))
  chosen_tokens = keep[:2].sum()
  assert loss.item() == pytest.approx(np.logaddexp(0, -margin).mean() - rpo_alpha * policy[:2].sum() / chosen_tokens, rel=1e-5)
  # dL/dlogp of each row, then through log-softmax: keep * (onehot(y) - softmax), summed into W's rows by token
  d_row = np.concatenate([[-1, 1][half] * beta * (1 - 1 / (1 + np.exp(-margin))) / 2 for half in (0, 1)])
  d_row[:2] -= rpo_alpha / chosen_tokens
  d_logits = d_row[:, None, None] * keep[..., None] * (np.eye(V)[np.where(keep, y, 0)] - np.exp(log_p))
  expected = np.zeros((V, V))
  np.add.at(expected, x, d_logits)
  np.testing.assert_allclose(weights.grad.numpy(), expected, atol=1e-5)
  assert np.abs(d_logits[:, :3]).max() == 0 and np.abs(expected).max() > 1e-3


def test_sft_on_a_few_conversations_teaches_their_answers():
  tokenizer = train_bpe([sample_text()], 300)
  qa = [("the cat?", "sat on a mat"), ("the dog?", "ran past"), ("a bird?", "sang"), ("café?", "naïve 🙂")]
  conversations = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in qa]
  Tensor.manual_seed(0)
  model = GPT(GPTConfig(**{**TEST_SHAPE, "vocab_size": tokenizer.n_vocab, "block_size": 32}))
  data = ChatData(conversations, tokenizer, 32)
  data.val = data.train  # ask the trained questions back
  settings = TrainSettings(steps=150, batch_size=8, lr=1e-2, warmup=10, eval_every=1000, seed=0)
  trainer = Trainer(model, data, settings, adamw(nn.state.get_parameters(model), 1e-2, 0.0))
  for _ in range(settings.steps): trainer.train_step()
  answers = dict(sample_answers(model, tokenizer, data.val, n=len(qa)))
  assert sorted(answers.values()) == sorted(a for _, a in qa), answers


def test_distillation_needs_a_shared_tokenizer(tmp_path):
  for name, vocab in (("teacher", 300), ("student", 320)):
    tok = train_bpe([sample_text()], vocab)
    model = GPT(GPTConfig(**{**TEST_SHAPE, "vocab_size": tok.n_vocab}))
    checkpoint.save(tmp_path / name, get_state_dict(model), {}, checkpoint.RunRecord("pretrain", model.cfg, tok.fingerprint()))
    tok.save(str(tmp_path / name / checkpoint.TOKENIZER_NAME))
  cfg = DistillConfig(out=str(tmp_path / "out"), train=TrainSettings(), size="tiny", teacher=str(tmp_path / "teacher"), init=str(tmp_path / "student"))
  with pytest.raises(UserError, match="must share one"): prepare_distill(cfg, workers=1)


def export_main(args):
  from aurora_tg.cli.export import main
  return run_main(main, args)


def test_sft_lora_and_distill_stages_end_to_end(finished_run, tmp_path):
  base = finished_run[0]
  chats = tmp_path / "chat.jsonl"
  good = [json.dumps({"messages": [{"role": "user", "content": f"the cat {i}?"}, {"role": "assistant", "content": "sat on a mat"}]}) for i in range(30)]
  chats.write_text("\n".join(good[:3] + ["{oops"] + good[3:]), encoding="utf-8")
  short = ["--steps", "3", "--eval-every", "3", "--batch-size", "4"]
  sft = train("--stage", "sft", "--init", base, "--data", chats, "--freeze", "1", "--out", tmp_path / "sft", *short, check_code=0)
  assert "chat.jsonl:4: skipped" in sft.stdout and "held-out assistant-token loss" in sft.stdout
  # --freeze 1: the embeddings (and so the tied LM head) and block 0 are bit for bit the base's; all else trained
  before, after = (read_safetensors_numpy(run / checkpoint.CHECKPOINT_NAME) for run in (base, tmp_path / "sft"))
  frozen = {k for k in before if k.startswith(("model.wte.", "model.wpe.", "model.h.0."))}
  assert frozen and all(np.array_equal(after[k], before[k]) for k in frozen), [k for k in frozen if not np.array_equal(after[k], before[k])]
  trained = {k for k in before if k.startswith("model.")} - frozen
  assert trained and not any(np.array_equal(after[k], before[k]) for k in trained)
  lora_run = train("--stage", "lora", "--init", base, "--data", chats, "--out", tmp_path / "lora", *short, check_code=0)
  assert "Q: " in lora_run.stdout
  adapter_size = (tmp_path / "lora" / "checkpoint.safetensors").stat().st_size
  assert adapter_size < (base / "checkpoint.safetensors").stat().st_size / 3
  for run in ("sft", "lora"):
    answer = chat("--checkpoint", tmp_path / run, "--temperature", "0", "--max-tokens", "5", "-p", "the cat?")
    assert answer.returncode == 0 and answer.stdout.strip(), answer.stderr
  assert_lora_run_is_its_base_plus_its_adapters(base, tmp_path / "lora")
  train("--stage", "distill", "--teacher", base, "--size", "tiny", "--out", tmp_path / "student", *short,
        "--data", finished_run[1], check_code=0)
  val = [m["val_loss"] for m in map(json.loads, (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()) if "val_loss" in m]
  assert len(val) == 2 and val[1] < val[0] - 0.1, val  # distillation lowered the student's loss (steps 0 and 3)
  missing = train("--stage", "sft", "--out", tmp_path / "x")
  assert missing.returncode == 2 and "needs --init" in missing.stderr


def write_pairs(path, n=30):
  """TRL-format preference pairs on the fixture corpus's words, one answer preferred."""
  pairs = [{"prompt": f"the cat {i}?", "chosen": "sat on a mat", "rejected": "ran past a bird"} for i in range(n)]
  path.write_text("\n".join(json.dumps(p) for p in pairs), encoding="utf-8")
  return path


def test_qlora_adapter_and_dpo_runs_train_save_and_chat(finished_run, tmp_path):
  base = finished_run[0]
  short = ["--steps", "3", "--eval-every", "3", "--batch-size", "4", "--lr", "0.01"]
  qlora_run = train("--stage", "lora", "--init", base, "--base-quantize", "nf4", "--out", tmp_path / "qlora", *short, check_code=0)
  assert "Q: " in qlora_run.stdout
  assert checkpoint.read_record(tmp_path / "qlora").run.base_quantize == "nf4"
  assert_lora_run_is_its_base_plus_its_adapters(base, tmp_path / "qlora")  # merged into the float base, and chats
  adapter_run = train("--stage", "adapter", "--init", base, "--adapter-size", "16", "--out", tmp_path / "adapter", *short, check_code=0)
  assert "Q: " in adapter_run.stdout
  saved = read_safetensors_numpy(tmp_path / "adapter" / checkpoint.CHECKPOINT_NAME)
  assert {k for k in saved if k.startswith("model.")} == {f"model.h.{i}.adapter_{where}.{layer}.{kind}" for i in range(2)
                                                        for where in ("attn", "mlp") for layer in ("down", "up") for kind in ("weight", "bias")}
  model, tokenizer, _ = checkpoint.load_model(tmp_path / "adapter")
  question = [{"role": "user", "content": "the cat?"}]
  answer = chat("--checkpoint", tmp_path / "adapter", "--temperature", "0", "--repetition-penalty", "1", "--max-tokens", "8", "-p", "the cat?")
  assert answer.returncode == 0 and answer.stdout == greedy_answer(model, tokenizer, question, max_tokens=8) + "\n", answer.stderr
  refused = export_main([str(tmp_path / "adapter"), str(tmp_path / "hf")])
  assert refused.returncode == 2 and refused.stderr.count("error:") == 1 and "adapter layers" in refused.stderr, refused.stderr
  exported = export_main([str(tmp_path / "adapter"), str(tmp_path / "int8"), "--quantize", "int8"])
  assert exported.returncode == 0, exported.stderr
  int8_answer = chat("--checkpoint", tmp_path / "int8", "--temperature", "0", "--max-tokens", "8", "-p", "the cat?")
  assert int8_answer.returncode == 0 and int8_answer.stdout.strip(), int8_answer.stderr
  # a run fine-tuned from the adapter run keeps (and trains) its adapter layers: it loads, chats, and is refused GPT-2's layout
  train("--stage", "sft", "--init", tmp_path / "adapter", "--out", tmp_path / "adapter-sft", *short, check_code=0)
  tuned, _, _ = checkpoint.load_model(tmp_path / "adapter-sft")
  assert sum(".adapter_" in k for k in get_state_dict(tuned)) == len([k for k in saved if k.startswith("model.")])
  assert export_main([str(tmp_path / "adapter-sft"), str(tmp_path / "hf2")]).returncode == 2
  pairs = write_pairs(tmp_path / "pairs.jsonl")
  # DPO over LoRA adapters (DPO of all weights: tests/cli/test_train.py's resume test)
  dpo_lora = train("--stage", "dpo", "--init", base, "--data", pairs, "--lora-rank", "4", "--out", tmp_path / "dpo-lora", *short, check_code=0)
  assert "held-out pairs: reward accuracy" in dpo_lora.stdout and "Q: " in dpo_lora.stdout
  saved = read_safetensors_numpy(tmp_path / "dpo-lora" / checkpoint.CHECKPOINT_NAME)
  assert saved and all(".lora_" in k for k in saved if k.startswith("model."))
  answer = chat("--checkpoint", tmp_path / "dpo-lora", "--temperature", "0", "--max-tokens", "5", "-p", "the cat?")
  assert answer.returncode == 0 and answer.stdout.strip(), answer.stderr


def assert_lora_run_is_its_base_plus_its_adapters(base, lora_run):
  """What chat.py loads from a LoRA run gives the logits of GPT-2's forward pass in numpy on the base's weights with
  each adapter's (alpha / rank) B A added, far from the base's own; and chat.py's greedy text is that model's."""
  weights = {k.removeprefix("model."): v for k, v in read_safetensors_numpy(base / checkpoint.CHECKPOINT_NAME).items() if k.startswith("model.")}
  adapters = {k.removeprefix("model."): v for k, v in read_safetensors_numpy(lora_run / checkpoint.CHECKPOINT_NAME).items() if k.startswith("model.")}
  lora_cfg = checkpoint.read_record(lora_run).run.lora
  merged = dict(weights)
  for name in {k.rsplit(".", 1)[0] for k in adapters}:  # h.0.attn.c_attn, ...
    merged[f"{name}.weight"] = weights[f"{name}.weight"] + lora_cfg.alpha / lora_cfg.rank * adapters[f"{name}.lora_b"] @ adapters[f"{name}.lora_a"]
  assert len(adapters) == 2 * 4 * 2  # A and B for c_attn, attn.c_proj, c_fc and mlp.c_proj, in both blocks
  as_gpt2 = lambda w: {k: v.T if k.endswith(HF_CONV1D) else v for k, v in w.items()}  # Aurora's Linear is (out, in)
  cfg = checkpoint.read_record(base).model
  ids = np.random.default_rng(0).integers(0, cfg.vocab_size, 40)
  expected, base_logits = (numpy_gpt2(as_gpt2(w), ids, cfg.n_layer, cfg.n_head) for w in (merged, weights))
  model, tokenizer, _ = checkpoint.load_model(lora_run)  # as chat.py loads it
  np.testing.assert_allclose(model(Tensor(ids[None].tolist())).numpy()[0], expected, atol=1e-5, rtol=1e-5)
  assert np.abs(expected - base_logits).max() > 0.05  # the adapters matter, far beyond that tolerance
  proc = chat("--checkpoint", lora_run, "--complete", "the cat", "--temperature", "0", "--repetition-penalty", "1", "--max-tokens", "5")
  ids = tokenizer.encode("the cat")
  while len(ids) < len(tokenizer.encode("the cat")) + 5:  # greedy, up to <|endoftext|> as --complete stops
    token = int(numpy_gpt2(as_gpt2(merged), np.array(ids), cfg.n_layer, cfg.n_head)[-1].argmax())
    if token == tokenizer.eot: break
    ids.append(token)
  assert proc.stdout == tokenizer.decode(ids) + "\n", proc.stdout + proc.stderr


def test_a_moved_runs_folder_with_a_lora_run_still_chats(finished_run, tmp_path):
  """The LoRA run names its base relative to itself, so the pair moves together."""
  runs = tmp_path / "runs"
  runs.mkdir()
  for f in finished_run[0].iterdir():
    if f.is_file(): (runs / "base").mkdir(exist_ok=True); (runs / "base" / f.name).write_bytes(f.read_bytes())
  train("--stage", "lora", "--init", runs / "base", "--steps", "2", "--batch-size", "2", check_code=0)
  assert (runs / "base-lora" / "checkpoint.safetensors").is_file()
  before = chat("--checkpoint", runs / "base-lora", "--complete", "the cat", "--temperature", "0", "--max-tokens", "6")
  moved = tmp_path / "elsewhere" / "runs"
  moved.parent.mkdir()
  runs.rename(moved)
  after = chat("--checkpoint", moved / "base-lora", "--complete", "the cat", "--temperature", "0", "--max-tokens", "6")
  assert after.returncode == 0 and after.stdout == before.stdout, after.stderr


def test_samples_are_distinct_held_out_questions():
  """The default conversations hold small talk 8 times over; the held-out set repeats it, the samples must not."""
  from aurora_tg.data.chat_data import default_conversations
  tokenizer = train_bpe([sample_text()], 300)
  Tensor.manual_seed(0)
  model = GPT(GPTConfig(**{**TEST_SHAPE, "vocab_size": tokenizer.n_vocab, "block_size": 64}))
  data = ChatData(default_conversations(), tokenizer, 64)
  held_out = [tokenizer.decode([t for t, m in zip(ids, targets) if m == IGNORE_INDEX and t < tokenizer.eot]) for ids, targets in data.val]
  questions = [q for q, _ in sample_answers(model, tokenizer, data.val, n=3)]
  assert len(set(q.lower() for q in questions)) == 3
  assert all(any(q in h for h in held_out) for q in questions)
