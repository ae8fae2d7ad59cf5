import os, sys, tempfile
from pathlib import Path

# Tests run on tinygrad's CPU backend unless DEV picks another; token caches go to a throwaway folder.
os.environ.setdefault("DEV", "CPU")
os.environ.setdefault("AURORA_CACHE", tempfile.mkdtemp(prefix="aurora-test-cache-"))
ROOT = Path(__file__).resolve().parents[1]
if (ROOT.parent / "shared" / "tiktoken_cache").is_dir():  # offline machines keep GPT-2's BPE there
  os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(ROOT.parent / "shared" / "tiktoken_cache"))
sys.path.insert(0, str(ROOT))

import numpy as np
import pytest

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
