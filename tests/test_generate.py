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


def test_greedy_is_deterministic_and_seeded_sampling_reproducible():
  model = make_model()
  prompt = [1, 2, 3]
  greedy = Sampling(temperature=0, max_tokens=8)
  assert Generator(model).generate(prompt, greedy) == Generator(model).generate(prompt, greedy)
  seeded = Sampling(temperature=1.5, max_tokens=8, seed=3)
  a, b = Generator(model).generate(prompt, seeded), Generator(model).generate(prompt, seeded)
  assert a == b and len(a) == 8


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
