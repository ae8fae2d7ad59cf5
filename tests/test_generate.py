import math
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from tinygrad import Tensor
from aurora_tg.generate import Generator, Sampling, sample_token
from aurora_tg.model import GPT, GPTConfig
from conftest import TEST_SHAPE


def make_model(pos="learned") -> GPT:
  Tensor.manual_seed(0)
  return GPT(GPTConfig(**{**TEST_SHAPE, "pos": pos}))


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_kv_cache_decoding_matches_full_forward_at_every_position(pos):
  model = make_model(pos)
  ids = np.random.default_rng(0).integers(0, 97, size=16).tolist()
  full = model(Tensor([ids])).numpy()[0]
  gen = Generator(model)
  np.testing.assert_allclose(gen.prefill(ids[:5]), full[4], atol=1e-4)
  for t in range(5, 16):
    np.testing.assert_allclose(gen.decode(ids[t], t), full[t], atol=1e-4, err_msg=f"position {t}")


def test_greedy_is_deterministic_and_the_seed_picks_the_samples():
  """The same seed gives the same tokens, different seeds (or none) different ones; a temperature near 0 is greedy
  whatever the seed. The untrained model's next-token distribution is near uniform over 97 tokens, so two seeds
  sharing all 8 tokens by chance is all but impossible, and so is matching greedy at temperature 1."""
  model = make_model()
  gen, prompt = Generator(model), [1, 2, 3]
  greedy = gen.generate(prompt, Sampling(temperature=0, max_tokens=8))
  assert Generator(model).generate(prompt, Sampling(temperature=0, max_tokens=8)) == greedy
  runs = {seed: gen.generate(prompt, Sampling(temperature=1.0, max_tokens=8, seed=seed)) for seed in (3, 4, 5)}
  assert Generator(model).generate(prompt, Sampling(temperature=1.0, max_tokens=8, seed=3)) == runs[3] and len(runs[3]) == 8
  unseeded = [gen.generate(prompt, Sampling(temperature=1.0, max_tokens=8, seed=None)) for _ in range(2)]
  assert len({tuple(r) for r in [*runs.values(), *unseeded, greedy]}) == 6
  for seed in (3, 4):
    assert gen.generate(prompt, Sampling(temperature=1e-4, max_tokens=8, seed=seed)) == greedy


def chi_square_survival(x: float, dof: int) -> float:
  """P(X >= x) for X chi-square with an even number of degrees of freedom (closed form)."""
  assert dof % 2 == 0
  return math.exp(-x / 2) * sum((x / 2) ** i / math.factorial(i) for i in range(dof // 2))


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_samples_follow_the_softmax_of_logits_over_temperature(temperature):
  """20,000 draws with a fixed seed: Pearson's chi-square against softmax(logits / T) passes at p > 1e-4, and the same
  statistic rejects softmax(logits) (temperature ignored) at p < 1e-12, so the check has the power to see that."""
  logits = np.array([2.0, 1.5, 0.7, 0.0, -0.4, -1.0, -2.5])  # 7 tokens: 6 degrees of freedom
  rng, n = np.random.default_rng(0), 20_000
  counts = np.bincount([sample_token(logits, Sampling(temperature=temperature), rng) for _ in range(n)], minlength=len(logits))
  def p_value(t: float) -> float:
    expected = n * np.exp(logits / t) / np.exp(logits / t).sum()
    return chi_square_survival(((counts - expected) ** 2 / expected).sum(), len(logits) - 1)
  assert p_value(temperature) > 1e-4, counts
  assert p_value(1.0) < 1e-12, counts


def test_generation_stops_at_a_stop_token_and_at_the_context_end():
  model = make_model()
  gen = Generator(model)
  greedy = Sampling(temperature=0, max_tokens=100)
  free = gen.generate([5, 6], greedy)
  assert len(free) == 16 - 2 + 1  # the context holds 16 tokens; the last logits still give one more
  stopped = Generator(model).generate([5, 6], greedy, stop={free[3]})
  assert stopped == free[:free.index(free[3])]


logit_rows = st.lists(st.floats(-20, 20, allow_nan=False), min_size=2, max_size=50).map(np.array)


@settings(max_examples=60, deadline=None)
@given(logits=logit_rows, k=st.integers(1, 10), seed=st.integers(0, 2**16))
def test_top_k_never_leaves_the_k_largest(logits, k, seed):
  token = sample_token(logits, Sampling(temperature=1.0, top_k=k), np.random.default_rng(seed))
  assert logits[token] >= np.sort(logits)[-min(k, len(logits))]


@settings(max_examples=60, deadline=None)
@given(logits=logit_rows, p=st.floats(0.05, 0.99), seed=st.integers(0, 2**16))
def test_top_p_never_leaves_the_nucleus(logits, p, seed):
  token = sample_token(logits, Sampling(temperature=1.0, top_p=p), np.random.default_rng(seed))
  probs = np.exp(logits - logits.max()); probs /= probs.sum()
  higher = probs[probs > probs[token]].sum()  # mass of the tokens ranked strictly above the chosen one
  assert higher < p + 1e-9


def test_repetition_penalty_discourages_seen_tokens():
  logits = np.array([2.0, 1.9, -1.0])
  assert sample_token(logits, Sampling(temperature=0), np.random.default_rng(0), seen=[]) == 0
  assert sample_token(logits, Sampling(temperature=0, repetition_penalty=1.5), np.random.default_rng(0), seen=[0]) == 1


def test_chunked_prefill_matches_full_forward_and_reuses_a_shared_prefix():
  model = make_model("rope")
  rng = np.random.default_rng(1)
  first = rng.integers(0, 97, size=13).tolist()
  second = first[:6] + rng.integers(0, 97, size=7).tolist()
  full_first, full_second = model(Tensor([first, second])).numpy()
  gen = Generator(model, prefill_chunk=4)
  # several chunks; then a prompt sharing 6 tokens; then a shorter one (whose logits, causally, are first's at 2)
  for ids, expected in ((first, full_first[-1]), (second, full_second[-1]), (first[:3], full_first[2])):
    np.testing.assert_allclose(gen.prefill(ids), expected, atol=1e-4)
    assert gen.cached == ids


def test_prefill_near_the_end_of_the_context_matches_full_forward():
  """Prompts that end within a chunk of the context's end (16 tokens, chunks of 8): the last chunk then starts
  before the cached end and recomputes cached positions. Logits and greedy tokens match full forward passes."""
  model = make_model()
  rng = np.random.default_rng(2)
  ids, other = rng.integers(0, 97, size=16).tolist(), rng.integers(0, 97, size=3).tolist()
  def full(seq: list[int]) -> np.ndarray:  # one full forward of 16 tokens; causal, so padding changes no earlier logits
    return model(Tensor([seq + [0] * (16 - len(seq))])).numpy()[0]
  full_ids, full_other = full(ids), full(ids[:13] + other)
  gen = Generator(model)
  np.testing.assert_allclose(gen.prefill(ids[:15]), full_ids[14], atol=1e-4)  # one short of the context
  np.testing.assert_allclose(gen.decode(ids[15], 15), full_ids[15], atol=1e-4)  # the context's last position
  np.testing.assert_allclose(gen.prefill(ids), full_ids[15], atol=1e-4)  # all cached: the last chunk starts at 8
  np.testing.assert_allclose(gen.prefill(ids[:13] + other), full_other[15], atol=1e-4)  # 13 cached, 3 new
  assert gen.cached == ids[:13] + other
  seq = ids[:14]
  while len(seq) <= 16: seq.append(int(full(seq)[len(seq) - 1].argmax()))
  assert Generator(model).generate(ids[:14], Sampling(temperature=0, max_tokens=10)) == seq[14:]
