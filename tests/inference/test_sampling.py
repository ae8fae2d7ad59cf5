"""The device sampler against a numpy statement of the same rules (the sampler Aurora used before it moved onto the
device): greedy is the argmax, top-k and top-p never leave their sets, and many seeded draws follow the reference
distribution by Pearson's chi-square, with the power to see a rule left out."""
import math
import numpy as np
import pytest
from tinygrad import Tensor
from aurora_tg.inference.sampling import Sampling, key_rows, sample

VOCAB = 40


def reference_probabilities(logits: np.ndarray, s: Sampling, seen=()) -> np.ndarray:
  """In float64: CTRL's repetition penalty, temperature, top-k (ties with the k-th kept), then the nucleus (a token
  stays if the mass ranked before it is below top_p)."""
  logits = logits.astype(np.float64).copy()
  ids = np.unique(np.asarray(seen, dtype=np.int64))
  logits[ids] = np.where(logits[ids] > 0, logits[ids] / s.repetition_penalty, logits[ids] * s.repetition_penalty)
  if s.temperature == 0: return np.eye(len(logits))[logits.argmax()]
  if 0 < s.top_k < len(logits): logits[logits < np.partition(logits, -s.top_k)[-s.top_k]] = -np.inf
  probs = np.exp((logits - logits.max()) / s.temperature)
  probs /= probs.sum()
  if s.top_p < 1.0:
    order = np.argsort(-probs, kind="stable")
    keep = np.cumsum(probs[order]) - probs[order] < s.top_p
    probs[order[~keep]] = 0.0
    probs /= probs.sum()
  return probs


def draw(logits: np.ndarray, settings: list[Sampling], seen: list[list[int]] | None = None, seed: int = 0,
         mode: str | None = None) -> np.ndarray:
  """One token per row of logits, each row with its own settings and random stream, on the device."""
  rows = len(logits)
  mask = np.zeros(logits.shape, dtype=bool)
  for row, ids in enumerate(seen or []): mask[row, ids] = True
  mode = mode or max((s.mode for s in settings), key=("greedy", "sample", "filter").index)
  keys = Tensor(key_rows([np.random.default_rng([seed, row]) for row in range(rows)]))
  return sample(Tensor(logits.astype(np.float32)), Tensor([s.row() for s in settings]), Tensor(mask), keys, mode).numpy()


def random_logits(rows: int, seed: int) -> np.ndarray:
  """Distinct values (no ties at a boundary) over a realistic spread."""
  return np.random.default_rng(seed).normal(0, 3, size=(rows, VOCAB))


def chi_square_survival(x: float, dof: int) -> float:
  """P(X >= x) for X chi-square with an even number of degrees of freedom (closed form)."""
  assert dof % 2 == 0
  return math.exp(-x / 2) * sum((x / 2) ** i / math.factorial(i) for i in range(dof // 2))


def test_greedy_is_the_argmax_after_the_penalty():
  logits = random_logits(64, 0)
  seen = [np.argsort(-row)[:2].tolist() for row in logits]  # the two best of each row were already used
  for mode in ("greedy", "sample", "filter"):  # temperature 0 rows are greedy in every compiled sampler
    plain = draw(logits, [Sampling(temperature=0)] * 64, mode=mode)
    np.testing.assert_array_equal(plain, logits.argmax(1))
    penalised = draw(logits, [Sampling(temperature=0, repetition_penalty=1.5)] * 64, seen, mode=mode)
    expected = [reference_probabilities(row, Sampling(temperature=0, repetition_penalty=1.5), ids).argmax() for row, ids in zip(logits, seen)]
    np.testing.assert_array_equal(penalised, expected)
  assert (penalised != plain).any(), "the penalty changed nothing: the test cannot see it ignored"


def test_top_k_never_leaves_the_k_largest():
  logits, rng = random_logits(256, 1), np.random.default_rng(1)
  ks = rng.integers(1, 8, size=256)
  for seed in range(3):
    tokens = draw(logits, [Sampling(temperature=2.0, top_k=int(k)) for k in ks], seed=seed)
    ranks = (logits > logits[np.arange(256), tokens][:, None]).sum(1)  # how many tokens beat the chosen one
    assert (ranks < ks).all(), f"rows {np.flatnonzero(ranks >= ks)} left their top-k"
  assert len(set(tokens.tolist())) > 20  # not stuck on a few tokens


def test_top_p_never_leaves_the_nucleus():
  logits, rng = random_logits(256, 2), np.random.default_rng(2)
  ps = rng.uniform(0.05, 0.99, size=256)
  for seed in range(3):
    tokens = draw(logits, [Sampling(temperature=1.0, top_p=float(p)) for p in ps], seed=seed)
    for row, (token, p) in enumerate(zip(tokens, ps)):
      assert reference_probabilities(logits[row], Sampling(temperature=1.0, top_p=float(p)))[token] > 0, f"row {row}: {token} outside"


@pytest.mark.parametrize("s", [Sampling(temperature=0.7), Sampling(temperature=1.3, top_k=6),
                               Sampling(temperature=0.9, top_k=12, top_p=0.8, repetition_penalty=1.3)],
                         ids=["temperature", "top-k", "everything"])
def test_draws_follow_the_reference_distribution(s):
  """8,192 seeded draws of one row: chi-square against the numpy reference passes at p > 1e-4, and rejects the same
  distribution with one rule left out (temperature 1, no top-k, no penalty) at p < 1e-12."""
  logits = np.random.default_rng(3).normal(0, 1.5, size=VOCAB)
  seen = np.argsort(-logits)[:3].tolist()
  rows = 2048
  counts = sum(np.bincount(draw(np.tile(logits, (rows, 1)), [s] * rows, [seen] * rows, seed=seed), minlength=VOCAB) for seed in range(4))
  def p_value(probs: np.ndarray) -> float:
    support = probs > 0
    if (counts[~support] > 0).any(): return 0.0
    expected = counts.sum() * probs[support]
    dof = support.sum() - 1
    statistic = ((counts[support] - expected) ** 2 / expected).sum()
    return chi_square_survival(statistic, dof + dof % 2)  # an odd dof rounded up: a slightly weaker test
  assert p_value(reference_probabilities(logits, s, seen)) > 1e-4, counts
  if s.temperature != 1: assert p_value(reference_probabilities(logits, Sampling(temperature=1.0, top_k=s.top_k, top_p=s.top_p, repetition_penalty=s.repetition_penalty), seen)) < 1e-12
  if s.top_k: assert p_value(reference_probabilities(logits, Sampling(temperature=s.temperature, top_p=s.top_p, repetition_penalty=s.repetition_penalty), seen)) < 1e-12
  if s.repetition_penalty != 1: assert p_value(reference_probabilities(logits, Sampling(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p), seen)) < 1e-12


def test_the_seed_replays_and_rows_draw_independently():
  logits = np.tile(random_logits(1, 4), (64, 1))
  s = [Sampling(temperature=3.0)] * 64  # a flat distribution: 64 rows alike would be a shared stream
  first = draw(logits, s, seed=7)
  np.testing.assert_array_equal(draw(logits, s, seed=7), first)
  assert (draw(logits, s, seed=8) != first).any()
  assert len(set(first.tolist())) > 10  # rows of the same logits draw different tokens


def test_a_padded_head_s_minus_infinity_tail_changes_no_draw():
  """A head padded for decoding (model.TiedEmbedding.pad_rows) gives -inf logits past the vocabulary: in every mode,
  also with a top-k larger than the vocabulary, the seeded draws equal those from the vocabulary's logits alone."""
  logits = random_logits(128, 5)
  padded = np.concatenate([logits, np.full((128, 24), -np.inf)], axis=1)
  settings = [Sampling(temperature=0), Sampling(temperature=0, repetition_penalty=1.5), Sampling(temperature=5.0),
              Sampling(temperature=5.0, top_k=VOCAB + 10), Sampling(temperature=2.0, top_k=5, top_p=0.9, repetition_penalty=1.2)]
  for s in settings:
    seen = [[1, 2]] * 128
    tokens = draw(padded, [s] * 128, seen, seed=3, mode=s.mode)
    np.testing.assert_array_equal(tokens, draw(logits, [s] * 128, seen, seed=3, mode=s.mode), err_msg=str(s))
    assert (tokens < VOCAB).all()
    if s.temperature >= 2: assert len(set(tokens.tolist())) > 3, s  # sampling, not stuck on one token
