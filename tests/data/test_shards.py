import numpy as np
import pytest
from aurora_tg import UserError
from aurora_tg.formats.checkpoint import RunRecord
from aurora_tg.data.shards import TokenData
from aurora_tg.model import GPTConfig


def test_batches_are_seeded_shifted_windows_from_their_split():
  tokens = np.arange(1000, dtype=np.uint16)
  data = TokenData(tokens, block_size=8)
  assert data.val_tokens == 50 and data.train[0][-1] + 1 == data.val[0][0]
  x, y = data.batch(np.random.default_rng(3), 4)
  x2, _ = data.batch(np.random.default_rng(3), 4)
  assert np.array_equal(x, x2) and x.shape == (4, 8) and x.dtype == np.int32
  assert np.array_equal(y[:, :-1], x[:, 1:]) and np.all(y[:, -1] == x[:, -1] + 1)
  assert x.max() < 950
  xv, _ = data.batch(np.random.default_rng(3), 4, "val")
  assert xv.min() >= 950


def test_random_windows_cover_every_shard_in_proportion_and_never_cross_one():
  shards = [np.arange(0, 100), np.arange(1000, 1400), np.arange(5000, 5009)]  # the last has no room for a window
  data = TokenData(shards, block_size=10, val=[np.arange(10_000, 10_020)])
  x, y = data.batch(np.random.default_rng(0), 20_000)
  starts = x[:, 0]
  assert np.all(np.diff(x, axis=1) == 1) and np.all(y[:, -1] == x[:, -1] + 1)  # consecutive: inside one shard
  in_first, in_second = (starts < 1000).mean(), ((starts >= 1000) & (starts < 5000)).mean()
  assert in_first + in_second == 1
  assert abs(in_first - 90 / 480) < 0.015  # windows per shard: 90 and 390
  assert set(starts[starts < 1000]) == set(range(90)) and starts[starts >= 1000].max() == 1389


def test_a_sequential_pass_reads_every_token_once_an_epoch_in_a_seeded_shard_order():
  shards = [np.arange(s * 1000, s * 1000 + 200) for s in range(4)]
  data = TokenData(shards, block_size=4, val=[np.arange(50_000, 50_010)], order="sequential", seed=7)
  batches = [data.batch(None, 3) for _ in range(4 * 16)]  # 16 batches of 3 x 4 tokens fit in a 200-token shard
  inputs = np.concatenate([x.reshape(-1) for x, _ in batches])
  order = data.shard_order(0)
  expected = np.concatenate([shards[i][:16 * 12] for i in order])
  assert np.array_equal(inputs, expected)
  for x, y in batches: assert np.array_equal(y.reshape(-1)[:-1], x.reshape(-1)[1:])
  assert data.state()["epoch"] == 0
  next_x, _ = data.batch(None, 3)  # the second epoch starts with its own order
  assert data.state()["epoch"] == 1 and next_x[0, 0] == shards[data.shard_order(1)[0]][0]


def test_a_sequential_pass_resumed_from_a_record_goes_on_as_if_never_stopped(tmp_path):
  shards = [np.arange(s * 1000, s * 1000 + 300) for s in range(3)]
  make = lambda: TokenData(shards, block_size=8, val=[np.arange(9000, 9020)], order="sequential", seed=3)
  straight = make()
  expected = [straight.batch(None, 2)[0] for _ in range(40)]
  first = make()
  done = [first.batch(None, 2)[0] for _ in range(17)]
  record = RunRecord("pretrain", GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=10_000), "fp",
                     data_position=first.state())
  resumed = make()
  resumed.restore(RunRecord.from_json(record.to_json(tmp_path), tmp_path).data_position)
  done += [resumed.batch(None, 2)[0] for _ in range(23)]
  assert all(np.array_equal(a, b) for a, b in zip(done, expected))


def test_too_little_data_for_the_context():
  with pytest.raises(UserError, match="too short for a context of 16"):
    TokenData(np.arange(20, dtype=np.uint16), block_size=16)
  with pytest.raises(UserError, match="validation part"):
    TokenData([np.arange(100)], block_size=16, val=[np.arange(10)])
  with pytest.raises(UserError, match="sequential needs a shard of at least 65"):
    TokenData([np.arange(50)], block_size=16, val=[np.arange(40)], order="sequential").batch(None, 4)
