"""The fence around tinygrad's internals: decoding on a backend the tricks were not tested on takes tinygrad's public
path, another tinygrad version turns every private use off (with one note), and the kernel search puts back what it
replaces."""
import os, sys
import numpy as np
import pytest
from tinygrad import Context, Device, Tensor
from tinygrad.engine import realize
from aurora_tg.backends import cpu_queue, devices, fence, host_copy, kernel_search
from aurora_tg.inference.generate import Generator
from aurora_tg.inference.sampling import Sampling
from aurora_tg.model import GPT, GPTConfig

SHAPE = dict(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=97)


def refuse_private_copies(monkeypatch):
  def private(*args): raise AssertionError("a private host copy was taken")
  monkeypatch.setattr(host_copy, "_buffer", private)


def test_decoding_on_a_backend_without_the_tricks_takes_the_public_path(monkeypatch):
  """tinygrad's NULL device compiles every kernel and runs none: no trick was tested there, so none may run."""
  refuse_private_copies(monkeypatch)
  graph = Device["NULL"].graph
  with Context(DEV="NULL", NULL_ALLOW_COPYOUT=1):  # NULL's copies out give zeros instead of refusing
    assert not host_copy.direct(Device.DEFAULT)
    devices.tune_for_decoding()
    answer = Generator(GPT(GPTConfig(**SHAPE))).generate([1, 2, 3], Sampling(temperature=0, max_tokens=3))
  assert len(answer) == 3 and all(0 <= t < SHAPE["vocab_size"] for t in answer)
  assert Device["NULL"].graph is graph


def test_the_public_copies_match_the_private_ones_on_cpu(monkeypatch):
  values = np.arange(6, dtype=np.int32).reshape(2, 3)
  private = Tensor.zeros(2, 3, dtype="int32", device="CPU").contiguous().realize()
  host_copy.write(private, values)
  monkeypatch.setattr(fence, "version", lambda: "0.99.0")
  refuse_private_copies(monkeypatch)
  public = Tensor.zeros(2, 3, dtype="int32", device="CPU").contiguous().realize()
  host_copy.write(public, values)
  np.testing.assert_array_equal(host_copy.read(public), values)
  np.testing.assert_array_equal(host_copy.read(private), values)


def test_another_tinygrad_turns_every_private_use_off_with_one_note(monkeypatch, capsys):
  fence._note.cache_clear()
  monkeypatch.setattr(fence, "version", lambda: "0.99.0")
  assert not host_copy.direct("CPU") and not host_copy.direct("CL")
  with kernel_search.searching(2): assert realize.tqdm is not kernel_search.SearchProgress
  if devices.works("CL"):
    from aurora_tg.backends import cl_graph
    assert not cl_graph.install("CL")
  monkeypatch.delitem(sys.modules, "tinygrad")  # as before tinygrad is imported, when the queue's switch is read
  monkeypatch.delenv("HCQ2", raising=False)
  assert not cpu_queue.use_for_decoding("CPU") and "HCQ2" not in os.environ
  notes = capsys.readouterr().err.splitlines()
  assert len(notes) == len(set(notes)) >= 3 and all("written for tinygrad 0.14.0; with tinygrad 0.99.0" in n for n in notes)
  monkeypatch.setattr(fence, "version", lambda: fence.WRITTEN_FOR)  # the pinned version: the same call turns it on
  assert cpu_queue.use_for_decoding("CPU") and os.environ["HCQ2"] == "1"


def test_the_kernel_search_puts_back_what_it_replaced():
  original = realize.tqdm
  with kernel_search.searching(2): assert realize.tqdm is kernel_search.SearchProgress
  assert realize.tqdm is original
  with pytest.raises(RuntimeError):
    with kernel_search.searching(2): raise RuntimeError("a failed compile")
  assert realize.tqdm is original
