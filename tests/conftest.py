import atexit, contextlib, io, os, shutil, subprocess, sys, tempfile
from pathlib import Path

# Tests run on tinygrad's CPU backend unless DEV picks another; token caches go to a throwaway folder.
# A DEV set by the user also restricts the kernel tests (tests/kernels) to that one backend. The user's DEV is kept
# in AURORA_USER_DEV for pytest-xdist's workers, which inherit the DEV=CPU set here and must not read it as a choice.
USER_DEV = os.environ.setdefault("AURORA_USER_DEV", os.environ.get("DEV", "")) or None
os.environ.setdefault("DEV", "CPU")
# tinygrad generates and compiles kernels in a pool of (cores / pytest-xdist workers) processes. A pool of one only
# adds pickling and process restarts while its worker waits (a tiny train.py run: 23.6 s with it, 18.4 s without, on 2
# cores), so where a worker's share is under two cores it compiles in its own process; set PARALLEL to choose.
if (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) < 2: os.environ.setdefault("PARALLEL", "0")
if "AURORA_CACHE" not in os.environ:  # made by the first process (xdist's workers inherit it) and removed as it exits
  os.environ["AURORA_CACHE"] = tempfile.mkdtemp(prefix="aurora-test-cache-")
  atexit.register(shutil.rmtree, os.environ["AURORA_CACHE"], ignore_errors=True)
ROOT = Path(__file__).resolve().parents[1]
if (ROOT.parent / "shared" / "tiktoken_cache").is_dir():  # offline machines keep GPT-2's BPE there
  os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(ROOT.parent / "shared" / "tiktoken_cache"))
sys.path.insert(0, str(ROOT))
# tests share helpers by importing each other's modules (from test_chat import make_model, from kernel_check import
# on), wherever they lie and whichever folder pytest collects first
sys.path[1:1] = [str(d) for d in sorted((ROOT / "tests").iterdir()) if d.is_dir() and d.name != "__pycache__"]

import numpy as np
import pytest
from hypothesis import Phase, settings

# Hypothesis profiles, picked with HYPOTHESIS_PROFILE. Every example compiles fresh kernels (a second or more each,
# several times that on PoCL), so the default is a few random examples per test; CI runs each test's explicit
# @example set (every profile runs it: the examples that reach each branch, variant and magnitude, see
# tests/kernels/kernel_check.py) and one generated example, the first of every strategy, without shrinking a failure
# at length; `thorough` searches widely.
settings.register_profile("default", max_examples=3, deadline=None)
settings.register_profile("ci", max_examples=1, deadline=None, derandomize=True, print_blob=True,
                          phases=[Phase.explicit, Phase.reuse, Phase.generate])
settings.register_profile("thorough", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_addoption(parser):
  parser.addoption("--device", default=None, help="run the kernel tests on this tinygrad backend only "
                   "(CPU, CL, CUDA, METAL, AMD, NV); by default they run on every backend that works here")

# One small shape shared by the tests, so tinygrad compiles its kernels once (they are cached on disk).
TEST_SHAPE = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=97)


def sample_text(n_words: int = 4000, seed: int = 0) -> str:
  """Repetitive English-like text with some unicode: enough structure for a tiny model to learn."""
  rng = np.random.default_rng(seed)
  words = "the cat sat on a mat while dogs ran past naïve café 🙂 and a bird sang".split()
  return " ".join(rng.choice(words, size=n_words)) + "\n"


@pytest.fixture
def text_file(tmp_path):
  p = tmp_path / "corpus.txt"
  p.write_text(sample_text(), encoding="utf-8")
  return p


def run_main(main, args, stdin: str = "", cwd=None) -> subprocess.CompletedProcess:
  """An entry point (train.main, chat.main) run in this process as `python X.py ARGS < stdin` would run it: its exit
  code, stdout and stderr. In-process because tinygrad generates every kernel's code anew in each process (its disk
  cache keeps only compiled binaries, and generating takes about half a second a kernel here), so runs of one model
  share that work. Tests that need a real process (a signal from outside, a second process
  holding a folder, a server) start the scripts in a subprocess."""
  from tinygrad.helpers import DEV
  def utf8_stream(text=""): return io.TextIOWrapper(io.BytesIO(text.encode()), encoding="utf-8")  # real streams, as scripts expect
  out, err, saved = utf8_stream(), utf8_stream(), (sys.stdin, DEV.value)
  sys.stdin = utf8_stream(stdin)
  try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), contextlib.chdir(cwd or os.getcwd()):
      try: code = main([str(a) for a in args])
      except SystemExit as e: code = e.code  # argparse's usage errors
  finally: sys.stdin, DEV.value = saved
  out.flush(), err.flush()
  return subprocess.CompletedProcess(args, code, out.buffer.getvalue().decode(), err.buffer.getvalue().decode())


TINY_RUN = ["--size", "tiny", "--steps", "4", "--eval-every", "2", "--batch-size", "4"]


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
  """One short tiny run on a generated corpus (the run folder, the corpus, its stdout), made once for the tests that
  read a checkpoint: a test that changes a run works on a copy."""
  from aurora_tg.cli.train import main
  tmp = tmp_path_factory.mktemp("run")
  corpus = tmp / "corpus.txt"
  corpus.write_text(sample_text(20000), encoding="utf-8")
  proc = run_main(main, [*TINY_RUN, "--data", corpus, "--out", tmp / "out"])
  assert proc.returncode == 0, proc.stdout + proc.stderr
  return tmp / "out", corpus, proc.stdout


def pytest_generate_tests(metafunc):
  if "backend" in metafunc.fixturenames:  # the kernel tests: one run per backend (and dtype)
    from backends import parametrize  # tests/kernels/backends.py, importable once a kernel test module is
    parametrize(metafunc)


def pytest_configure(config):
  # the one backend picked by --device or the user's DEV; None lets the kernel tests use every working one
  choice = config.getoption("--device") or USER_DEV
  config.chosen_backend = choice.upper() if choice else None
  if config.getoption("--device"):  # the same as DEV=...: every test runs there
    from tinygrad.helpers import DEV
    DEV.value = config.chosen_backend
