"""Decoding on the CPU backend through tinygrad's command queue (HCQ2): the same tokens as kernels launched from Python,
each jitted step one submission; other devices, a user's own HCQ2, and a process that imported tinygrad already keep
tinygrad's default. The queue is on only in a fresh process, so each check runs one."""
import os, subprocess, sys
import pytest
from aurora_tg.formats import checkpoint
from aurora_tg.inference import loading
from aurora_tg.data.tokenizer import train_bpe
from conftest import ROOT, sample_text
from test_chat import make_model, save_run

# the tests' import path (conftest.py adds each tests/ folder), so the fresh process imports this file as this one does
TEST_PATH = [p for p in sys.path if p.startswith(str(ROOT))]


def conversation(run, quantize: str | None):
  """Tokens of a greedy answer, of a next turn that extends it (prefilled after the cached prefix), and of a sampled
  answer with every filter; and how many calls one decoded token's jitted step makes."""
  from aurora_tg.inference.generate import Generator
  from aurora_tg.inference.sampling import Sampling
  model, _, _ = loading.load_model(run, quantize)
  model.wte.pad_rows()  # as chat.py decodes
  generator, greedy = Generator(model), Sampling(temperature=0, repetition_penalty=1, max_tokens=10)
  first = [5, 17, 30]
  answer = generator.generate(first, greedy)
  follow_up = generator.generate(first + answer + [41, 8, 2], greedy)
  sampled = generator.generate([9, 3], Sampling(temperature=0.9, top_k=20, top_p=0.9, repetition_penalty=1.2, max_tokens=10, seed=1))
  return [answer, follow_up, sampled], len(generator._decoders["greedy"].captured.linear.src)


def in_fresh_process(code: str, **env) -> str:
  clean = {k: v for k, v in os.environ.items() if k not in ("HCQ2", "DEV")}
  done = subprocess.run([sys.executable, "-c", f"import sys; sys.path[:0] = {TEST_PATH!r}\n{code}"],
                        capture_output=True, text=True, env={**clean, **env}, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  tokenizer = train_bpe([sample_text()], 300)
  return save_run(tmp_path_factory.mktemp("queue") / "run", make_model(tokenizer, 32), tokenizer, "pretrain")


@pytest.mark.skipif("HCQ2" in os.environ, reason="this process must launch kernels from Python, without the queue")
def test_the_queue_decodes_the_tokens_python_launched_kernels_decode(run):
  """With float32 and with int8 weights, both in one fresh process (a process generates every kernel's code anew)."""
  from aurora_tg.backends.devices import select_device
  select_device("CPU")
  expected = [conversation(run, quantize) for quantize in (None, "int8")]  # this process imported tinygrad without the queue
  assert all(calls > 1 and all(tokens) for tokens, calls in expected)
  queued = in_fresh_process("from aurora_tg.backends import cpu_queue\nassert cpu_queue.use_for_decoding('CPU')\n"
                            "from aurora_tg.backends.devices import select_device; select_device('CPU')\n"
                            f"from test_cpu_queue import conversation; print([conversation({str(run)!r}, q) for q in (None, 'int8')])")
  assert queued == str([(tokens, 1) for tokens, _ in expected])  # the same tokens, and a decode step is one submission


def test_only_a_fresh_decoding_process_on_the_cpu_turns_the_queue_on():
  check = "from aurora_tg.backends import cpu_queue{}; on = cpu_queue.use_for_decoding({!r}); from tinygrad.helpers import getenv; print(on, getenv('HCQ2'))"
  assert in_fresh_process(check.format("", "CPU")) == "True 1"
  assert in_fresh_process(check.format("", None), DEV="CPU") == "True 1"  # tinygrad's DEV names the device
  assert in_fresh_process(check.format("", "cpu")) == "True 1"
  assert in_fresh_process(check.format("", None), DEV="CPU:LLVM") == "False 0"  # another renderer than the queue's clang
  assert in_fresh_process(check.format("", "CL")) == "False 0"
  assert in_fresh_process(check.format("", None), DEV="CL") == "False 0"
  assert in_fresh_process(check.format("", "CPU"), HCQ2="0") == "False 0"  # the user's choice stays
  assert in_fresh_process(check.format("; import tinygrad", "CPU")) == "False 0"  # too late: tinygrad read it already
