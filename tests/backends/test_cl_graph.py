"""Jitted steps on OpenCL replayed through CLGraph compute what tinygrad's own kernel-by-kernel launches compute:
with new input buffers each call, with variables that change kernel arguments and launch sizes, over several of
tinygrad's graph batches, and in whole conversations (prefill, decode, the device sampler with its uint32 keys)."""
import os, subprocess, sys
import numpy as np
import pytest
from tinygrad import Device, Tensor, TinyJit, Variable
from tinygrad.engine.realize import graph_cache
from tinygrad.uop.ops import Ops
from aurora_tg.backends.devices import works
from conftest import ROOT

pytestmark = pytest.mark.skipif(not works("CL"), reason="no OpenCL device here")


@pytest.fixture
def on_cl():
  """CL as the default device with no graph runner, as tinygrad leaves it; both restored after."""
  from tinygrad.helpers import DEV
  dev = Device["CL"]
  saved = DEV.value, dev.graph
  DEV.value, dev.graph = "CL", None
  yield dev
  DEV.value, dev.graph = saved


def graph_runners(jit) -> list:
  """The graph runners of a captured jit's calls, and None for each call launched on its own."""
  return [graph_cache.get(call.src[0]) if call.src[0].op is Ops.CUSTOM_FUNCTION and call.src[0].arg == "graph" else None
          for call in jit.captured.linear.src]


def test_a_step_replays_with_new_inputs_and_new_variable_values(on_cl):
  from aurora_tg.backends.cl_graph import CLGraph, install
  assert install("CL") and on_cl.graph is CLGraph

  @TinyJit
  def step(x: Tensor, n) -> tuple[Tensor, Tensor]:
    h = x
    for i in range(40): h = (h * 0.5 + i * 0.01).contiguous()  # 40 kernels: more than tinygrad's first batch of 32
    head = h[:n].exp().contiguous()  # n elements: the kernel's launch size follows n
    return head.sum().realize(), h.max().realize()

  def expected(x: np.ndarray, n: int) -> tuple[float, float]:
    h = x.astype(np.float64)
    for i in range(40): h = h * 0.5 + i * 0.01
    return np.exp(h[:n]).sum(), h.max()

  rng, n = np.random.default_rng(0), Variable("n", 1, 100)
  for count in (5, 100, 37, 1, 64, 12):
    x = rng.normal(size=100).astype(np.float32)
    total, top = step(Tensor(x, device="CL"), n.bind(count))  # a new input buffer every call
    np.testing.assert_allclose((total.item(), top.item()), expected(x, count), rtol=1e-5, err_msg=f"n={count}")
  runners = graph_runners(step)
  assert len(runners) >= 2 and all(isinstance(r, CLGraph) for r in runners)  # every kernel ran from a graph


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_conversations_decode_the_same_tokens_as_kernels_launched_one_by_one(on_cl, tmp_path, quantize):
  from aurora_tg.backends.cl_graph import CLGraph, install
  from aurora_tg.data.tokenizer import train_bpe
  from conftest import sample_text
  from test_chat import make_model, save_run
  from test_cpu_queue import conversation
  tokenizer = train_bpe([sample_text()], 300)
  run = save_run(tmp_path / "run", make_model(tokenizer, 32), tokenizer, "pretrain")
  expected, calls = conversation(run, quantize)
  assert install("CL")
  assert conversation(run, quantize) == (expected, 2)  # a decode step: two graph runs, not a launch per kernel
  assert all(expected)


def test_train_steps_through_the_graph_give_the_same_losses_and_weights(on_cl):
  """Training's two jitted pieces (gradient, update) and evaluation, replayed through CLGraph, against the same steps
  launched kernel by kernel: the same losses and weights, bit for bit (the same kernels in the same order)."""
  from tinygrad.nn.state import get_state_dict
  from aurora_tg.backends.cl_graph import CLGraph, install
  from test_trainer import SETTINGS, make_trainer
  def train():
    trainer = make_trainer(SETTINGS)
    losses = [trainer.train_step()[0] for _ in range(4)] + [trainer.evaluate()]
    return trainer, losses, {k: v.numpy() for k, v in get_state_dict(trainer.model).items()}
  _, expected_losses, expected_weights = train()
  assert install("CL")
  trainer, losses, weights = train()
  assert losses == expected_losses
  for k, w in expected_weights.items(): np.testing.assert_array_equal(weights[k], w, err_msg=k)
  for step in (trainer._micro_step, trainer._update_step, trainer._eval_step):
    assert all(isinstance(r, CLGraph) for r in graph_runners(step))


def test_decoding_on_cl_installs_the_graph_and_other_backends_keep_theirs():
  code = ("from aurora_tg.backends import devices; from tinygrad import Device; d = devices.select_device({!r}); "
          "graph = Device[d].graph; devices.tune_for_decoding(); print(Device[d].graph is graph, getattr(Device[d].graph, '__name__', None))")
  def run(device: str) -> str:
    done = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r})\n{code.format(device)}"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]
  assert run("CL") == "False CLGraph"
  assert run("CPU").startswith("True")
