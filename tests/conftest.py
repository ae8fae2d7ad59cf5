import os, sys, tempfile
from pathlib import Path

# Tests run on tinygrad's CPU backend unless DEV picks another; token caches go to a throwaway folder.
# A DEV set by the user also restricts the kernel tests (tests/kernels) to that one backend.
USER_DEV = os.environ.get("DEV")
os.environ.setdefault("DEV", "CPU")
os.environ.setdefault("AURORA_CACHE", tempfile.mkdtemp(prefix="aurora-test-cache-"))
ROOT = Path(__file__).resolve().parents[1]
if (ROOT.parent / "shared" / "tiktoken_cache").is_dir():  # offline machines keep GPT-2's BPE there
  os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(ROOT.parent / "shared" / "tiktoken_cache"))
sys.path.insert(0, str(ROOT))

import numpy as np
import pytest
from hypothesis import Phase, settings

# Hypothesis profiles, picked with HYPOTHESIS_PROFILE. Every example compiles fresh kernels (a second or more each,
# several times that on PoCL), so the default is a few random examples per test; CI replays a fixed set of two
# (the simplest, then one more), without shrinking a failure at length; `thorough` searches widely.
settings.register_profile("default", max_examples=3, deadline=None)
settings.register_profile("ci", max_examples=2, deadline=None, derandomize=True, print_blob=True,
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
