"""The chat session (context fitting, turns) and chat.py end to end through stdin."""
import os, shutil, subprocess, sys
import numpy as np
import pytest
from tinygrad import Tensor
from tinygrad.nn.state import get_state_dict
from aurora_tg import UserError, checkpoint
from aurora_tg.chat import ChatSession, fit_context, print_stream
from aurora_tg.generate import Sampling
from aurora_tg.model import GPT, GPTConfig
from aurora_tg.tokenizer import train_bpe
import chat as chat_script
from conftest import ROOT, TEST_SHAPE, run_main, sample_text

GREEDY = ["--temperature", "0", "--max-tokens", "12"]


@pytest.fixture(scope="module")
def tokenizer():
  return train_bpe([sample_text()], 300)


def make_model(tokenizer) -> GPT:
  Tensor.manual_seed(0)
  return GPT(GPTConfig(**{**TEST_SHAPE, "vocab_size": tokenizer.n_vocab, "block_size": 64}))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tokenizer):
  """A checkpoint with random weights, written the way train.py writes one."""
  out = tmp_path_factory.mktemp("chat") / "runs" / "model"
  model = make_model(tokenizer)
  checkpoint.save(out, get_state_dict(model), {}, checkpoint.RunRecord("sft", model.cfg, tokenizer.fingerprint()))
  tokenizer.save(str(out / checkpoint.TOKENIZER_NAME))
  return out


def chat(*args, stdin="", cwd=ROOT):
  """`python chat.py ARGS < stdin` in cwd, run in this process (see conftest.run_main)."""
  return run_main(chat_script.main, args, stdin, cwd)


def answers(stdout: str) -> list[str]:
  return [line.split("aurora> ", 1)[1] for line in stdout.splitlines() if "aurora> " in line]


def test_context_overflow_drops_the_oldest_turns_but_keeps_the_system_prompt(tokenizer):
  turns = [{"role": "system", "content": "be brief"}]
  for i in range(6): turns += [{"role": "user", "content": f"question {i} about the cat"}, {"role": "assistant", "content": f"answer {i} the mat"}]
  turns.append({"role": "user", "content": "the last question"})
  full, _ = tokenizer.render_chat(turns, add_generation_prompt=True)
  ids = fit_context(tokenizer, turns, len(full) // 2)
  assert len(ids) <= len(full) // 2
  system, _ = tokenizer.render_chat(turns[:1])
  newest, _ = tokenizer.render_chat(turns[-3:], add_generation_prompt=True)
  assert ids[:len(system)] == system and ids[-len(newest):] == newest
  assert "question 0" not in tokenizer.decode(ids)
  with pytest.raises(UserError, match="shorter"): fit_context(tokenizer, turns, len(system) + 3)


def test_a_second_turn_extends_the_first_and_reuses_its_cache(tokenizer):
  session = ChatSession(make_model(tokenizer), tokenizer, Sampling(temperature=0, max_tokens=5))
  first = "".join(session.reply("hello cat"))
  first_prompt = fit_context(tokenizer, session.messages[:1], 64)
  starts, prefill = [], session.generator._prefill
  session.generator._prefill = lambda tokens, start: starts.append(start.unbind()[1]) or prefill(tokens, start)
  "".join(session.reply("and the dog?"))
  assert [m["role"] for m in session.messages] == ["user", "assistant", "user", "assistant"]
  assert session.messages[1]["content"] == first
  assert session.generator.cached[:len(first_prompt)] == first_prompt
  assert min(starts) >= len(first_prompt)  # the first turn's prompt was not computed again


def test_an_answer_stops_at_the_end_of_turn_token(tokenizer):
  model = make_model(tokenizer)
  end = tokenizer.special("<|end|>")
  direction = np.zeros(model.cfg.n_embd, np.float32); direction[0] = 1
  model.ln_f.weight.assign(Tensor.zeros(model.cfg.n_embd)).realize()  # every position's final hidden state = direction
  model.ln_f.bias.assign(Tensor(direction)).realize()
  wte = model.wte.weight.numpy()
  wte[end] = direction * 50  # so <|end|> always wins by far
  model.wte.weight.assign(Tensor(wte)).realize()
  session = ChatSession(model, tokenizer, Sampling(temperature=1.0, max_tokens=20))
  assert "".join(session.reply("hello")) == ""


def test_ctrl_c_stops_the_answer_keeps_its_start_and_the_chat_goes_on(tokenizer, capsys):
  session = ChatSession(make_model(tokenizer), tokenizer, Sampling(temperature=0, max_tokens=8))
  full_answer = "".join(session.reply("the cat"))
  session.reset()
  calls, decode = [], session.generator.decode
  def interrupted_decode(token, position):  # Ctrl-C arrives while the third token is being computed
    calls.append(position)
    if len(calls) == 3: raise KeyboardInterrupt
    return decode(token, position)
  session.generator.decode = interrupted_decode
  assert print_stream(session.reply("the cat")) is False
  assert "[stopped]" in capsys.readouterr().out
  partial = session.messages[-1]["content"]
  assert session.messages[-1]["role"] == "assistant" and partial and full_answer.startswith(partial)
  session.generator.decode = decode
  session.reset()
  assert "".join(session.reply("the cat")) == full_answer  # the cache was left consistent


def test_two_turns_an_empty_line_non_ascii_and_reset_through_stdin(run_dir):
  proc = chat("--checkpoint", run_dir, *GREEDY, stdin="the cat\n\ncafé naïve 🙂 日本語?\n/reset\nthe cat\n/exit\n")
  assert proc.returncode == 0, proc.stderr
  assert "Traceback" not in proc.stderr and "(conversation cleared)" in proc.stdout
  replies = answers(proc.stdout)
  assert len(replies) == 3  # the empty line asked nothing
  assert replies[2] == replies[0]  # after /reset the same question gets the same greedy answer


def test_one_shot_from_the_argument_and_from_stdin(run_dir):
  from_arg = chat("--checkpoint", run_dir, *GREEDY, "-p", "the cat")
  from_stdin = chat("--checkpoint", run_dir, *GREEDY, "-p", stdin="the cat\n")
  interactive = chat("--checkpoint", run_dir, *GREEDY, stdin="the cat\n")
  assert from_arg.returncode == from_stdin.returncode == 0, from_arg.stderr + from_stdin.stderr
  assert from_arg.stdout == from_stdin.stdout
  assert from_arg.stdout.rstrip("\n") == answers(interactive.stdout)[0]


def test_the_default_checkpoint_is_the_newest_under_runs(run_dir):
  older = run_dir.parent / "older"
  shutil.copytree(run_dir, older)
  os.utime(older / "checkpoint.safetensors", (0, 0))
  proc = chat(*GREEDY, cwd=run_dir.parent.parent, stdin="/exit\n")
  assert proc.returncode == 0 and f"| {os.path.join('runs', 'model', 'checkpoint.safetensors')} |" in proc.stdout


def test_without_a_checkpoint_chat_says_to_train_one(tmp_path):
  """The real script, in a subprocess."""
  proc = subprocess.run([sys.executable, str(ROOT / "chat.py")], capture_output=True, text=True, cwd=tmp_path, timeout=600)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert proc.stderr.count("\n") == 1 and "python train.py" in proc.stderr


@pytest.mark.parametrize("flag", [["--top-p", "0"], ["--temperature", "-1"], ["--max-tokens", "0"]])
def test_bad_sampling_flags_are_one_line_errors(run_dir, flag):
  proc = chat("--checkpoint", run_dir, *flag, "-p", "hi")
  assert proc.returncode == 2 and proc.stderr.startswith("error:") and proc.stderr.count("\n") == 1
