import re, time
from tinygrad import Context, Tensor
from tinygrad.codegen.opt import search
from aurora_tg.inference.generate import Generator
from aurora_tg.backends.kernel_search import SearchProgress, searching
from aurora_tg.model import GPT, GPTConfig
from aurora_tg.inference.sampling import Sampling
from conftest import TEST_SHAPE

BAR = re.compile(r"kernel search \(BEAM=(\d)\):\s+(\d+)%\|[^|]*\| (\d+)/(\d+) \[")


def slow_search(seconds: float, searched: list):
  """A stand-in for tinygrad's search, which takes seconds a kernel here: it takes `seconds` and keeps each kernel
  as it is."""
  def search_for(kernel, rawbufs, var_vals, amount, *args, **kwargs):
    time.sleep(seconds)
    searched.append(amount)
    return kernel
  return search_for


def generate(beam: int, width: int, vocab: int) -> list[int]:
  """A short greedy answer. tinygrad compiles a kernel once per process, and a test file shares its process with
  others: each test has a width and a vocabulary (the sampler's kernels) that no other test has."""
  Tensor.manual_seed(0)
  model = GPT(GPTConfig(**{**TEST_SHAPE, "n_layer": 1, "n_embd": width, "vocab_size": vocab}))
  return Generator(model, beam=beam).generate([3, 1, 4, 1, 5], Sampling(temperature=0, max_tokens=4))


def test_a_slow_search_shows_each_batch_of_kernels_counted_to_its_end(monkeypatch, capsys):
  searched = []
  monkeypatch.setattr(search, "beam_search", slow_search(0.01, searched))
  monkeypatch.setattr(SearchProgress, "quiet_for", 0)
  generate(beam=2, width=40, vocab=89)
  # a batch's bar redraws itself on one line (carriage returns) and ends it: its last drawing is its final count
  finals = [BAR.findall(line)[-1] for line in capsys.readouterr().err.split("\n") if BAR.search(line)]
  assert len(finals) >= 3  # the prefill, the sampler after it, and the decode step compile apart
  assert all(beam == "2" and percent == "100" and done == total for beam, percent, done, total in finals)
  assert sum(int(total) for *_, total in finals) == len(searched)  # every kernel searched was counted


def test_no_search_and_a_quick_one_stay_quiet(monkeypatch, capsys):
  """Without a search tinygrad's own bar stays off (it needs DEBUG), however long compiling takes; with one, a batch
  quicker than quiet_for (a search found in tinygrad's cache, small kernels) draws nothing."""
  searched = []
  monkeypatch.setattr(search, "beam_search", slow_search(0, searched))
  monkeypatch.setattr(SearchProgress, "quiet_for", 0)
  generate(beam=0, width=56, vocab=83)
  assert "kernel search" not in capsys.readouterr().err
  monkeypatch.setattr(SearchProgress, "quiet_for", 600)
  generate(beam=2, width=56, vocab=83)
  assert searched and "kernel search" not in capsys.readouterr().err


def test_searching_sets_beam_whatever_the_environment_says(monkeypatch):
  """beam 0 means no search even with BEAM set outside (as tinygrad's environment variable sets it)."""
  x = Tensor.arange(35).reshape(5, 7).float().contiguous().realize()
  searched = []
  monkeypatch.setattr(search, "beam_search", slow_search(0, searched))
  with Context(BEAM=2), searching(0): (x * 3).sum(1).numpy()  # numpy(): on CPU, realize() may defer the work
  assert searched == []
  with searching(1): (x * 5).sum(1).numpy()
  assert searched == [1]
