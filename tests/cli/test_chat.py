"""The chat session (context fitting, turns) and chat.py end to end through stdin."""
import os, shutil, subprocess, sys
import numpy as np
import pytest
from tinygrad import Tensor, TinyJit
from tinygrad.nn.state import get_state_dict
from aurora_tg import UserError
from aurora_tg.formats import checkpoint
from aurora_tg.inference.conversation import ChatSession, fit_context, print_stream, stop_tokens
from aurora_tg.inference.sampling import Sampling
from aurora_tg.model import GPT, GPTConfig
from aurora_tg.data.tokenizer import SPECIAL_TOKENS, train_bpe
import chat as chat_script
from conftest import ROOT, TEST_SHAPE, run_main, sample_text

GREEDY = ["--temperature", "0", "--repetition-penalty", "1", "--max-tokens", "12"]


_FORWARDS = {}


def greedy_tokens(model: GPT, prompt: list[int], max_tokens: int, stop: set[int]) -> list[int]:
  """Greedy decoding the plain way, as the reference for chat's answers: the whole sequence recomputed for every new
  token (no KV cache, no chunked prefill), padded to the context so one compiled forward serves every length
  (causal attention: the padding after a position cannot change its logits). Stops where Generator.stream stops."""
  if id(model) not in _FORWARDS: _FORWARDS[id(model)] = (model, TinyJit(lambda x: model(x).realize()))
  forward, ids, out, block = _FORWARDS[id(model)][1], list(prompt), [], model.cfg.block_size
  while len(out) < max_tokens:
    logits = forward(Tensor([ids + [0] * (block - len(ids))])).numpy()[0, len(ids) - 1]
    token = int(logits.argmax())
    if token in stop: break
    out.append(token)
    ids.append(token)
    if len(ids) > block: break
  return out


def greedy_answer(model: GPT, tokenizer, messages: list[dict], max_tokens: int = 12) -> str:
  """What a greedy chat answer to messages must be: the chat template (with the oldest turns dropped as chat drops
  them, see test_a_long_conversation_...), then greedy_tokens up to a role token."""
  prompt = fit_context(tokenizer, messages, model.cfg.block_size - min(max_tokens, model.cfg.block_size // 2))
  return tokenizer.decode(greedy_tokens(model, prompt, max_tokens, {tokenizer.special(t) for t in SPECIAL_TOKENS}))


@pytest.fixture(scope="module")
def tokenizer():
  return train_bpe([sample_text()], 300)


def make_model(tokenizer, block_size: int = 64) -> GPT:
  """Random weights that make greedy answers worth comparing. GPT-2's small initialisation mostly repeats the last
  token, which in a chat prompt is <|assistant|>, so most answers would be empty; weights of std 0.3 give answers that
  depend on the prompt. Tokens that are not whole UTF-8 characters get zero embeddings (so logit 0, which some of
  the other random logits always beat): answers are readable text, which tells different answers apart."""
  model = GPT(GPTConfig(**{**TEST_SHAPE, "vocab_size": tokenizer.n_vocab, "block_size": block_size}))
  rng = np.random.default_rng(0)
  partial = [i for i in range(tokenizer.eot) if "\ufffd" in tokenizer.decode([i])]  # decoded with errors="replace"
  for name, t in get_state_dict(model).items():
    value = rng.standard_normal(t.shape).astype(np.float32) * 0.3 + (1.0 if "ln_" in name and name.endswith("weight") else 0.0)
    if name == "wte.weight": value[partial] = 0
    t.assign(Tensor(value)).realize()
  return model


@pytest.fixture(scope="module")
def model(tokenizer) -> GPT:
  """The model run_dir holds, made here: the reference that chat.py's answers are checked against."""
  return make_model(tokenizer)


def save_run(out, model: GPT, tokenizer, stage: str):
  checkpoint.save(out, get_state_dict(model), {}, checkpoint.RunRecord(stage, model.cfg, tokenizer.fingerprint()))
  tokenizer.save(str(out / checkpoint.TOKENIZER_NAME))
  return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tokenizer):
  """A chat fine-tuned checkpoint with random weights, written the way train.py writes one."""
  return save_run(tmp_path_factory.mktemp("chat") / "runs" / "model", make_model(tokenizer), tokenizer, "sft")


def chat(*args, stdin="", cwd=ROOT):
  """`python chat.py ARGS < stdin` in cwd, run in this process (see conftest.run_main)."""
  return run_main(chat_script.main, args, stdin, cwd)


def answers(stdout: str) -> list[str]:
  """The answers of an interactive chat's output: what follows "aurora> " up to the next prompt, without the newline
  that ends it (answers may hold newlines of their own)."""
  return [turn[len("aurora> "):].removesuffix("\n") for turn in stdout.split("you> ") if turn.startswith("aurora> ")]


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
  session.generator._prefill = lambda tokens, start, last: starts.append(start.unbind()[1]) or prefill(tokens, start, last)
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


def test_two_turns_an_empty_line_non_ascii_and_reset_through_stdin(run_dir, model, tokenizer):
  proc = chat("--checkpoint", run_dir, *GREEDY, stdin="the cat\n\ncafé naïve 🙂 日本語?\n/reset\nthe cat\n/exit\n")
  assert proc.returncode == 0, proc.stderr
  assert "Traceback" not in proc.stderr and "(conversation cleared)" in proc.stdout
  first = greedy_answer(model, tokenizer, [{"role": "user", "content": "the cat"}])
  second_turn = [{"role": "user", "content": "the cat"}, {"role": "assistant", "content": first},
                 {"role": "user", "content": "café naïve 🙂 日本語?"}]
  second = greedy_answer(model, tokenizer, second_turn)
  assert first.strip() and second.strip()  # the model said something
  # the answers are the model's greedy ones, the second turn's given the first; the empty line asked nothing, and
  # after /reset the same question gets the first answer again
  assert answers(proc.stdout) == [first, second, first], proc.stdout


def test_one_shot_from_the_argument_and_from_stdin(run_dir, model, tokenizer):
  from_arg = chat("--checkpoint", run_dir, *GREEDY, "-p", "the cat")
  from_stdin = chat("--checkpoint", run_dir, *GREEDY, "-p", stdin="the cat\n")
  interactive = chat("--checkpoint", run_dir, *GREEDY, stdin="the cat\n")
  assert from_arg.returncode == from_stdin.returncode == 0, from_arg.stderr + from_stdin.stderr
  expected = greedy_answer(model, tokenizer, [{"role": "user", "content": "the cat"}])
  assert expected.strip() and from_arg.stdout == from_stdin.stdout == expected + "\n"
  assert f"aurora> {expected}\n" in interactive.stdout


def test_help_unknown_commands_and_the_system_prompt(run_dir, model, tokenizer):
  stdin = "/help\n/frobnicate now\nthe cat\n/system answer like a pirate\nthe cat\n/system\nthe cat\n/exit\n"
  proc = chat("--checkpoint", run_dir, *GREEDY, stdin=stdin)
  assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
  listed = proc.stdout.split("commands:", 1)[1]  # /help's list: every command README.md names
  assert all(f"\n  {command}" in listed for command in ("/reset", "/system TEXT", "/help", "/exit"))
  assert "unknown command /frobnicate; /help lists the commands" in proc.stdout
  question = [{"role": "user", "content": "the cat"}]
  plain = greedy_answer(model, tokenizer, question)
  pirate = greedy_answer(model, tokenizer, [{"role": "system", "content": "answer like a pirate"}, *question])
  assert plain != pirate  # so the system prompt shows in the answer
  assert "(system prompt set; conversation cleared)" in proc.stdout and "(system prompt removed; conversation cleared)" in proc.stdout
  # the unknown command asked nothing; /system sets the prompt of a fresh conversation, /system alone removes it
  assert answers(proc.stdout) == [plain, pirate, plain], proc.stdout


def test_a_pretrained_only_model_gets_a_note(run_dir, model, tokenizer, tmp_path):
  pretrained = save_run(tmp_path / "pretrained", model, tokenizer, "pretrain")
  note = chat("--checkpoint", pretrained, *GREEDY, stdin="/exit\n")
  assert note.returncode == 0, note.stderr
  banner = note.stdout.split("you> ")[0]
  assert "note: this model is only pretrained" in banner and "--complete" in banner
  assert f"python train.py --stage sft --init {pretrained}" in banner
  fine_tuned = chat("--checkpoint", run_dir, *GREEDY, stdin="/exit\n")
  assert fine_tuned.returncode == 0 and "Aurora chat |" in fine_tuned.stdout and "note:" not in fine_tuned.stdout


@pytest.mark.parametrize("max_tokens, budget", [(10, 54), (48, 32)])
def test_a_long_conversation_keeps_the_system_prompt_the_newest_question_and_room_to_answer(tokenizer, model, max_tokens, budget):
  """README: the oldest turns go; the system prompt and the newest question stay; at least half the context (64
  tokens here) or --max-tokens, whichever is less, is left for the answer."""
  system = {"role": "system", "content": "be brief"}
  history = [{"role": r, "content": f"the cat {i}" if r == "user" else f"sat on a mat {i}"} for i in range(6) for r in ("user", "assistant")]
  question = {"role": "user", "content": "and the dog?"}
  session = ChatSession(model, tokenizer, Sampling(temperature=0, repetition_penalty=1.0, max_tokens=max_tokens), system="be brief")
  session.messages += history
  answer = "".join(session.reply(question["content"]))
  # the expected prompt, found by hand: whole turns dropped from the oldest while the rest exceeds the budget
  kept = next(history[i:] for i in range(len(history) + 1) if len(tokenizer.render_chat([system, *history[i:], question], True)[0]) <= budget)
  assert 0 < len(kept) < len(history)  # some turns went, some stayed
  prompt, _ = tokenizer.render_chat([system, *kept, question], add_generation_prompt=True)
  assert session.generator.cached[:len(prompt)] == prompt  # what the model was given
  expected = greedy_tokens(model, prompt, max_tokens, stop_tokens(tokenizer))
  assert expected and answer == tokenizer.decode(expected)
  assert session.generator.cached[len(prompt):] == expected[:len(session.generator.cached) - len(prompt)]


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
