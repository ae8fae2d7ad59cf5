"""Decoding's kernel search (tinygrad's BEAM) with its progress shown. The search times variants of each kernel as
tinygrad first compiles it: minutes for a model on a CPU, and tinygrad draws its progress bar over the kernels it
compiles only with DEBUG on, amid its debugging output. searching() turns the search on, and the bar shows whatever
DEBUG is, from the first kernel a batch finishes after a second on (so a single kernel's long search shows once it
is done). A model searched before finds its searches in tinygrad's cache and compiles in seconds, with a short bar
or none."""
from contextlib import contextmanager
import time
from tinygrad import Context
from tinygrad.engine import realize
from tinygrad.helpers import BEAM, DEBUG, tqdm
from aurora_tg.backends import fence


class SearchProgress(tqdm):
  """Stands in for the tqdm that tinygrad's lower_and_compile draws over a batch of kernels to compile: under BEAM
  it draws "kernel search (BEAM=2): 27%|...| 3/11 [elapsed<left, rate]" once the batch has taken `quiet_for` seconds;
  otherwise it behaves as tinygrad's own."""
  quiet_for = 1.0

  def __init__(self, iterable=None, desc: str = "", disable: bool | None = False, **kwargs):
    self.searching = BEAM.value >= 1 and DEBUG.value < 1
    if self.searching: desc, disable, kwargs["unit"] = f"kernel search (BEAM={BEAM.value})", True, " kernels"
    super().__init__(iterable, desc, disable, **kwargs)

  def set_description(self, desc: str):
    # lower_and_compile names each kernel as it goes (tinygrad's colored names); the search keeps its own label
    if not self.searching or not hasattr(self, "desc"): super().set_description(desc)

  def update(self, n: int = 0, close: bool = False):
    if self.searching and self.disable and time.perf_counter() - self.st >= self.quiet_for: self.disable = False
    super().update(n, close)


@contextmanager
def searching(beam: int):
  """Compile what runs inside with tinygrad's BEAM set to beam (0: no search, even with BEAM set in the environment;
  tinygrad's JITBEAM, which overrides BEAM inside a jit, still searches), and show the search's progress on stderr."""
  # lower_and_compile looks its tqdm up in its module as it runs: replaced for the search, then put back
  shown = beam > 0 and fence.allows("the kernel search's progress bar")
  saved = realize.tqdm
  if shown: realize.tqdm = SearchProgress
  try:
    with Context(BEAM=beam): yield
  finally: realize.tqdm = saved
