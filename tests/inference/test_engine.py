"""Batched decoding: rows at their own positions compute what the plain forward pass computes, and the engine's
answers (greedy, and seeded sampling) equal the single-stream Generator's, alone or eight at a time."""
import queue, threading
import numpy as np
import pytest
from tinygrad import Tensor, dtypes
from aurora_tg.inference.engine import Busy, Engine, Request
from aurora_tg.inference.generate import Generator
from aurora_tg.model import GPT, GPTConfig
from aurora_tg.inference.kv_cache import RowCache, kv_buffers
from aurora_tg.inference.sampling import Sampling
from aurora_tg.data.tokenizer import train_bpe
from conftest import TEST_SHAPE, sample_text
from test_chat import make_model


def ints(*values): return Tensor(list(values), dtype=dtypes.int32)


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_rows_at_their_own_positions_match_the_plain_forward(pos):
  model = GPT(GPTConfig(**{**TEST_SHAPE, "pos": pos}))
  rng = np.random.default_rng(0)
  a, b = rng.integers(0, TEST_SHAPE["vocab_size"], 9).tolist(), rng.integers(0, TEST_SHAPE["vocab_size"], 5).tolist()
  # the plain forward of both rows' whole sequences in one call (b padded at its end; causal, so the padding never
  # reaches b's positions): each row's logits at every position the chunks below stop at
  padded = b + [7] + [0] * (len(a) - len(b))
  full_a, full_b = model(Tensor([a + [5], padded])).numpy()
  kv = kv_buffers(model.cfg, 3)
  # a chunk of 5: row 0 takes a's first 4 tokens, row 1 nothing, row 2 all of b; each row's logits are its last
  # real token's
  out = model(Tensor([a[:4] + [0], [0] * 5, b]), RowCache(kv, ints(0, 0, 0), ints(4, 0, 5))).numpy()
  np.testing.assert_allclose(out[0, 0], full_a[3], atol=1e-5)
  np.testing.assert_allclose(out[2, 0], full_b[4], atol=1e-5)
  out = model(Tensor([a[4:], [0] * 5, [0] * 5]), RowCache(kv, ints(4, 0, 5), ints(5, 0, 0))).numpy()
  np.testing.assert_allclose(out[0, 0], full_a[8], atol=1e-5)
  out = model(Tensor([[5], [0], [7]]), RowCache(kv, ints(9, 0, 5), ints(1, 0, 1))).numpy()  # row 2 untouched meanwhile
  np.testing.assert_allclose(out[0, 0], full_a[9], atol=1e-5)
  np.testing.assert_allclose(out[2, 0], full_b[5], atol=1e-5)


def test_the_engine_answers_as_the_generator_does_alone_or_together():
  tokenizer = train_bpe([sample_text()], 300)
  model = make_model(tokenizer)
  prompts = [tokenizer.encode(sample_text(n, seed=n))[:40] for n in range(3, 11)]
  greedy = Sampling(temperature=0, max_tokens=12)
  sampled = Sampling(temperature=0.8, top_k=20, top_p=0.9, repetition_penalty=1.2, max_tokens=10, seed=5)
  generator, stop = Generator(model), {tokenizer.eot}
  expected = [generator.generate(p, greedy, stop) for p in prompts] + [generator.generate(prompts[0], sampled, stop)]
  engine, results = Engine(model, slots=8, waiting=8), {}

  def ask(prompt, s):
    answers = queue.Queue()
    engine.submit(Request(prompt, s, stop, lambda token, reason: answers.put((token, reason))))
    out = []
    while (item := answers.get())[0] is not None: out.append(item[0])
    return out

  def clients():
    try:
      results["alone"] = [ask(p, greedy) for p in prompts] + [ask(prompts[0], sampled)]
      together = [None] * len(prompts)
      threads = [threading.Thread(target=lambda i=i: together.__setitem__(i, ask(prompts[i], greedy))) for i in range(len(prompts))]
      for t in threads: t.start()
      for t in threads: t.join()
      results["together"] = together
    finally: engine.stop()
  threading.Thread(target=clients).start()
  engine.run()  # decoding stays in this thread, which loaded the model
  assert results["alone"] == expected and results["together"] == expected[:8]


def test_a_full_waiting_line_refuses_at_once():
  engine = Engine(GPT(GPTConfig(**TEST_SHAPE)), slots=1, waiting=1)
  engine.submit(Request([1], Sampling(), set(), lambda *_: None))  # nobody runs the engine: it waits
  with pytest.raises(Busy, match="all 1 slots are decoding and 1 requests wait"): engine.submit(Request([1], Sampling(), set(), lambda *_: None))
