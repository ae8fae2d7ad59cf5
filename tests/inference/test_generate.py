from dataclasses import replace
import numpy as np
import pytest
from tinygrad import Tensor
from aurora_tg.inference.generate import Generator
from aurora_tg.inference.sampling import Sampling
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
  np.testing.assert_allclose(gen.prefill(ids[:5]).numpy()[0], full[4], atol=1e-4)
  for t in range(5, 16):
    chosen = gen.decode(ids[t], t)  # greedy, as a new Generator starts
    np.testing.assert_allclose(gen.logits.numpy()[0], full[t], atol=1e-4, err_msg=f"position {t}")
    assert chosen == full[t].argmax(), f"position {t}"


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


def test_an_answer_cut_at_max_tokens_leaves_the_cache_ready_for_the_next_turn():
  """The last token of an answer cut at max_tokens is never fed (its successor is not wanted): the cache holds the
  prompt and the answer but that token, and the next turn, prefilled from there, answers as a fresh generator does."""
  model = make_model()
  gen, prompt, s = Generator(model), [5, 6, 7], Sampling(temperature=0.9, repetition_penalty=1.3, max_tokens=4, seed=2)
  answer = gen.generate(prompt, s)
  assert len(answer) == 4 and gen.cached == prompt + answer[:-1]
  follow_up = prompt + answer + [8, 9]
  assert gen.generate(follow_up, s) == Generator(model).generate(follow_up, s)


def test_generation_stops_at_a_stop_token_and_at_the_context_end():
  model = make_model()
  gen = Generator(model)
  greedy = Sampling(temperature=0, max_tokens=100)
  free = gen.generate([5, 6], greedy)
  assert len(free) == 16 - 2 + 1  # the context holds 16 tokens; the last logits still give one more
  stopped = Generator(model).generate([5, 6], greedy, stop={free[3]})
  assert stopped == free[:free.index(free[3])]


def test_chunked_prefill_matches_full_forward_and_reuses_a_shared_prefix():
  model = make_model("rope")
  rng = np.random.default_rng(1)
  first = rng.integers(0, 97, size=13).tolist()
  second = first[:6] + rng.integers(0, 97, size=7).tolist()
  full_first, full_second = model(Tensor([first, second])).numpy()
  gen = Generator(model, prefill_chunk=4)
  # several chunks; then a prompt sharing 6 tokens; then a shorter one (whose logits, causally, are first's at 2)
  for ids, expected in ((first, full_first[-1]), (second, full_second[-1]), (first[:3], full_first[2])):
    np.testing.assert_allclose(gen.prefill(ids).numpy()[0], expected, atol=1e-4)
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
  np.testing.assert_allclose(gen.prefill(ids[:15]).numpy()[0], full_ids[14], atol=1e-4)  # one short of the context
  gen.decode(ids[15], 15)
  np.testing.assert_allclose(gen.logits.numpy()[0], full_ids[15], atol=1e-4)  # the context's last position
  np.testing.assert_allclose(gen.prefill(ids).numpy()[0], full_ids[15], atol=1e-4)  # all cached: the last chunk starts at 8
  np.testing.assert_allclose(gen.prefill(ids[:13] + other).numpy()[0], full_other[15], atol=1e-4)  # 13 cached, 3 new
  assert gen.cached == ids[:13] + other
  seq = ids[:14]
  while len(seq) <= 16: seq.append(int(full(seq)[len(seq) - 1].argmax()))
  assert Generator(model).generate(ids[:14], Sampling(temperature=0, max_tokens=10)) == seq[14:]


def test_kernel_search_is_asked_for_as_the_steps_compile(monkeypatch):
  """beam > 0 reaches tinygrad's BEAM search for the prefill, decode and sampler kernels. The search itself is
  tinygrad's, and a real one takes 90 s even at this shape here, so the test watches it being called and lets it
  keep each kernel as it is."""
  from tinygrad.codegen.opt import search
  model = GPT(GPTConfig(**{**TEST_SHAPE, "n_layer": 1}))
  prompt, s = [3, 1, 4, 1, 5], Sampling(temperature=0, max_tokens=4)
  plain = Generator(model).generate(prompt, s)
  searched = []
  monkeypatch.setattr(search, "beam_search", lambda kernel, rawbufs, var_vals, amount, *a, **kw: searched.append(amount) or kernel)
  assert Generator(model, beam=3).generate(prompt, s) == plain
  assert len(searched) >= 10 and set(searched) == {3}


@pytest.mark.parametrize("s", [Sampling(temperature=0, max_tokens=5), Sampling(temperature=0.8, top_k=5, max_tokens=5)])
def test_compile_leaves_nothing_to_search_for_an_answer(monkeypatch, s):
  """After compile(s), an answer by s (one that fills the context, too) compiles no kernel of its own: the search
  and its progress bar are over before the answer streams (chat.py --beam)."""
  from tinygrad.codegen.opt import search
  model = GPT(GPTConfig(**{**TEST_SHAPE, "n_layer": 1, "n_embd": 16}))
  searched = []
  monkeypatch.setattr(search, "beam_search", lambda kernel, *a, **kw: searched.append(kernel) or kernel)
  generator = Generator(model, beam=2)
  generator.compile(s)
  assert searched
  compiled = len(searched)
  for prompt in ([0, 6, 7], list(range(1, 15))):  # the first starts as the warm-up's prompt did: its cache is reused
    assert generator.generate(prompt, replace(s, max_tokens=8)) == Generator(model).generate(prompt, replace(s, max_tokens=8))
  assert len(searched) == compiled


def test_decoding_a_token_outside_the_vocabulary_is_refused():
  """The token enters the jitted step as a variable bounded by the vocabulary; a value outside it is an error, never
  an unchecked read past the embedding table."""
  model = make_model()
  generator = Generator(model)
  generator.prefill([1, 2, 3])
  for token in (model.cfg.vocab_size, -1):
    with pytest.raises(ValueError, match="outside the vocabulary"): generator.decode(token, 3)
  assert 0 <= generator.decode(np.int64(4), 3) < model.cfg.vocab_size  # a numpy id is an id
