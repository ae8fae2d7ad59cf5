import math
from dataclasses import replace
import numpy as np
import pytest
from tinygrad import Tensor, Context, dtypes, nn
from tinygrad.nn.state import get_state_dict
from aurora_tg.formats import checkpoint
from aurora_tg.formats.checkpoint import RunRecord
from aurora_tg.data.shards import TokenData
from aurora_tg.model import GPT, GPTConfig
from aurora_tg.trainer import Trainer, TrainSettings, build_optimizer, lr_multiplier
from conftest import TEST_SHAPE

SETTINGS = TrainSettings(steps=6, batch_size=4, lr=1e-2, warmup=2, eval_every=3, eval_batches=2, log_every=3, seed=7)


def structured_tokens(n=6000, seed=0) -> np.ndarray:
  """A learnable stream: mostly t+1 after t, with some noise."""
  rng = np.random.default_rng(seed)
  t = np.cumsum(rng.choice([1, 1, 1, 2], size=n)) % TEST_SHAPE["vocab_size"]
  return t.astype(np.uint16)


def make_trainer(settings=SETTINGS, seed=0, plain_sgd=False) -> Trainer:
  """plain_sgd: SGD without momentum or decay instead of settings.optimizer, so a step is -lr times the gradient."""
  Tensor.manual_seed(seed)
  model = GPT(GPTConfig(**TEST_SHAPE))
  data = TokenData(structured_tokens(), TEST_SHAPE["block_size"])
  optimizer = nn.optim.OptimizerGroup(nn.optim.SGD(nn.state.get_parameters(model), settings.lr)) if plain_sgd else build_optimizer(model, settings)
  return Trainer(model, data, settings, optimizer)


def feed(trainer: Trainer, *batches):
  """The trainer's next training batches are these (x, y), in turn."""
  batches = iter(batches)
  trainer.data.batch = lambda rng, n, split="train": next(batches)


def applied_gradients(trainer: Trainer, before: list[np.ndarray]) -> list[np.ndarray]:
  """What a plain-SGD trainer's first step (lr times the warmup's first multiplier) applied, as a gradient."""
  lr = trainer.s.lr * lr_multiplier(0, trainer.s)
  return [(b - p.numpy().astype(np.float64)) / lr for p, b in zip(trainer.params, before)]


def global_norm(arrays: list[np.ndarray]) -> float: return float(np.sqrt(sum(np.square(a.astype(np.float64)).sum() for a in arrays)))


def run_record(trainer: Trainer) -> RunRecord: return RunRecord("pretrain", trainer.model.cfg, "test tokenizer")


def weights(trainer: Trainer) -> dict[str, np.ndarray]:
  return {k: v.numpy() for k, v in get_state_dict(trainer.model).items()}


def test_lr_schedule_warms_up_then_decays_to_the_floor():
  s = TrainSettings(steps=100, warmup=10, min_lr_frac=0.1)
  mults = [lr_multiplier(i, s) for i in range(100)]
  assert mults[0] == pytest.approx(0.1) and mults[9] == pytest.approx(1.0)
  assert all(a >= b for a, b in zip(mults[10:], mults[11:]))
  assert lr_multiplier(100, s) == pytest.approx(0.1)


def test_training_lowers_validation_loss(tmp_path):
  trainer = make_trainer(TrainSettings(**{**SETTINGS.__dict__, "steps": 30, "eval_every": 30}))
  before = trainer.evaluate()
  assert trainer.run(tmp_path, run_record(trainer), metrics=lambda _: None, log=lambda _: None) == "done"
  assert trainer.last_val_loss < 0.7 * before


def test_gradient_accumulation_matches_one_big_batch():
  """Two micro-batches of 4 take the step one batch of 8 holding the same sequences takes. Plain SGD without clipping,
  so the step is proportional to the gradient: micro-batch gradients summed and not divided by their count would
  double it (one AdamW step, or a clipped one, would not show that: both ignore the gradient's scale)."""
  settings = replace(SETTINGS, lr=1.0, grad_clip=0.0)
  big = make_trainer(replace(settings, batch_size=8), plain_sgd=True)
  accum = make_trainer(replace(settings, batch_size=4, grad_accum=2), plain_sgd=True)
  x, y = big.data.batch(np.random.default_rng(0), 8)
  feed(big, (x, y)); feed(accum, (x[:4], y[:4]), (x[4:], y[4:]))
  before = [p.numpy().astype(np.float64) for p in big.params]
  (loss_big, norm_big), (loss_accum, norm_accum) = big.train_step(), accum.train_step()
  assert loss_accum == pytest.approx(loss_big, rel=1e-5)
  assert norm_accum == pytest.approx(norm_big, rel=1e-4)
  grads_big, grads_accum = applied_gradients(big, before), applied_gradients(accum, before)
  assert global_norm(grads_big) == pytest.approx(norm_big, rel=1e-3)  # the step was the whole gradient
  for g_accum, g_big in zip(grads_accum, grads_big):
    np.testing.assert_allclose(g_accum, g_big, rtol=1e-3, atol=1e-3 * np.abs(g_big).max())


def test_gradient_norm_is_reported_before_clipping_and_clipping_caps_it():
  """The reported gradient norm (train_step's, which the log line shows) is numpy's global L2 norm of the loss's
  gradients, computed here by tinygrad's autograd outside the trainer. A gradient above grad_clip reaches the
  optimizer scaled to norm grad_clip, one below it untouched (plain SGD: the step is -lr times what it got)."""
  x, y = TokenData(structured_tokens(), TEST_SHAPE["block_size"]).batch(np.random.default_rng(0), SETTINGS.batch_size)
  Tensor.manual_seed(0)  # the weights make_trainer(seed=0) starts from
  model = GPT(GPTConfig(**TEST_SHAPE))
  params = nn.state.get_parameters(model)
  Tensor.realize(*params)  # stored, as the trainer stores them: lazy, their random init would be fused into every kernel
  with Context(TRAINING=1):
    for p in params: p.requires_grad = True
    model.loss(Tensor(x), Tensor(y)).backward()
  Tensor.realize(*[p.grad for p in params])  # in one schedule (one at a time, each would redo the backward pass)
  grads = [p.grad.numpy().astype(np.float64) for p in params]
  norm = global_norm(grads)
  for clip in (norm / 4, norm * 4):
    trainer = make_trainer(replace(SETTINGS, lr=1.0, grad_clip=clip), plain_sgd=True)
    before = [p.numpy().astype(np.float64) for p in trainer.params]
    for b, g in zip(before, params): assert np.array_equal(b, g.numpy())  # the reference saw the same weights
    feed(trainer, (x, y))
    _, reported = trainer.train_step()
    assert reported == pytest.approx(norm, rel=1e-4)
    applied = applied_gradients(trainer, before)
    assert global_norm(applied) == pytest.approx(min(clip, norm), rel=1e-3)
    for a, g in zip(applied, grads):
      np.testing.assert_allclose(a, g * min(1.0, clip / norm), rtol=1e-3, atol=1e-3 * np.abs(g).max())


def test_checkpoint_round_trip_is_bit_exact(tmp_path):
  a = make_trainer()
  a.train_step()
  a.save(tmp_path, run_record(a))
  model_state, optim_state, record = checkpoint.load(tmp_path)
  b = make_trainer(seed=99)
  checkpoint.copy_into(get_state_dict(b.model), model_state, "weights")
  b.restore(optim_state, record)
  for k, w in weights(a).items(): assert np.array_equal(weights(b)[k], w), k
  opt_a, opt_b = (checkpoint.optimizer_state(t.optimizer, t.params) for t in (a, b))
  for k in opt_a: assert np.array_equal(opt_a[k].numpy(), opt_b[k].numpy()), k
  assert b.step == 1 and record.model == a.model.cfg


def test_resume_continues_as_if_never_stopped(tmp_path):
  straight = make_trainer()
  straight_losses = [straight.train_step()[0] for _ in range(6)]
  first = make_trainer()
  losses = [first.train_step()[0] for _ in range(3)]
  first.save(tmp_path, run_record(first))
  second = make_trainer(seed=123)  # different init: everything must come from the checkpoint
  model_state, optim_state, record = checkpoint.load(tmp_path)
  checkpoint.copy_into(get_state_dict(second.model), model_state, "weights")
  second.restore(optim_state, record)
  losses += [second.train_step()[0] for _ in range(3)]
  np.testing.assert_allclose(losses, straight_losses, atol=1e-5)
  for k, w in weights(straight).items(): np.testing.assert_allclose(weights(second)[k], w, atol=1e-5, err_msg=k)


def test_non_finite_loss_stops_without_overwriting_the_checkpoint(tmp_path):
  trainer = make_trainer(TrainSettings(**{**SETTINGS.__dict__, "steps": 3, "eval_every": 1}))
  trainer.run(tmp_path, run_record(trainer), metrics=lambda _: None, log=lambda _: None)
  saved = (tmp_path / checkpoint.CHECKPOINT_NAME).read_bytes()
  trainer.s = TrainSettings(**{**trainer.s.__dict__, "steps": 6})
  trainer.params[0].assign(trainer.params[0] * float("nan")).realize()
  from aurora_tg.trainer import NonFinite
  with pytest.raises(NonFinite):
    trainer.run(tmp_path, run_record(trainer), metrics=lambda _: None, log=lambda _: None)
  assert (tmp_path / checkpoint.CHECKPOINT_NAME).read_bytes() == saved


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_checkpoint_is_a_user_error(tmp_path, damage):
  from aurora_tg import UserError
  trainer = make_trainer()
  path = trainer.save(tmp_path, run_record(trainer))
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
  with pytest.raises(UserError, match="corrupt"):
    checkpoint.load(path)


TWO_CPUS = ("CPU", "CPU:1")


def test_two_devices_train_like_one_and_resume_on_one(tmp_path):
  """Data parallel over CPU and CPU:1, each with half of every batch, takes the steps one device takes, with gradient
  accumulation (which data parallelism leaves unchanged) and Aurora, which updates the hidden matrices (its polar
  factor of a sharded gradient) and gives the rest to AdamW. Its checkpoint resumes on one device."""
  settings = TrainSettings(**{**SETTINGS.__dict__, "optimizer": "aurora", "lr": 0.05, "grad_accum": 2})
  one, two = make_trainer(settings), make_trainer(TrainSettings(**{**settings.__dict__, "devices": TWO_CPUS}))
  assert two.model.wte.weight.device == TWO_CPUS
  for _ in range(2):
    (loss_one, _), (loss_two, _) = one.train_step(), two.train_step()
    assert loss_two == pytest.approx(loss_one, abs=1e-5)
  two.save(tmp_path, run_record(two))
  resumed = make_trainer(settings, seed=123)
  model_state, optim_state, record = checkpoint.load(tmp_path)
  checkpoint.copy_into(get_state_dict(resumed.model), model_state, "weights")
  resumed.restore(optim_state, record)
  for _ in range(2):
    (loss_two, _), (loss_resumed, _) = two.train_step(), resumed.train_step()
    assert loss_resumed == pytest.approx(loss_two, abs=1e-5)
  two.for_inference()
  for k, w in weights(two).items(): np.testing.assert_allclose(weights(resumed)[k], w, atol=1e-5, err_msg=k)


def test_mixed_precision_keeps_float32_weights_and_follows_float32_training():
  """float16 compute (CPU has it; bfloat16 is the GPU default): the loss tracks float32 training's within half
  precision's rounding, and weights and optimizer state stay float32."""
  full = make_trainer()
  half = make_trainer(TrainSettings(**{**SETTINGS.__dict__, "dtype": "float16"}))
  for _ in range(3):
    (loss_full, _), (loss_half, _) = full.train_step(), half.train_step()
    assert loss_half == pytest.approx(loss_full, rel=1e-2)
  assert half.model(Tensor([[1, 2, 3]])).dtype == dtypes.float16
  assert all(t.dtype == dtypes.float32 for t in [*half.params, *nn.state.get_parameters(half.optimizer)] if dtypes.is_float(t.dtype))


def test_bits_per_byte_is_the_summed_loss_in_bits_over_the_bytes_the_targets_decode_to():
  """Checked against numpy: the model's logits, a float64 log-softmax, and each target's bytes from the tokenizer."""
  from aurora_tg.data.tokenizer import train_bpe
  from conftest import sample_text
  tok = train_bpe([sample_text(3000)], 300)
  stream = np.array([t for seed in range(30) for t in tok.encode(sample_text(60, seed=seed)) + [tok.eot]], np.uint16)
  Tensor.manual_seed(0)
  model = GPT(GPTConfig(**{**TEST_SHAPE, "vocab_size": tok.n_vocab}))
  trainer = Trainer(model, TokenData(stream, TEST_SHAPE["block_size"], val_fraction=0.3), SETTINGS, build_optimizer(model, SETTINGS),
                    token_bytes=tok.token_bytes())
  val_loss = trainer.evaluate()
  rng, bits, n_bytes, losses = np.random.default_rng(SETTINGS.seed + 1), 0.0, 0, []
  for _ in range(SETTINGS.eval_batches):  # the batches evaluate() draws
    x, y = trainer.data.batch(rng, SETTINGS.batch_size, "val")
    logits = model(Tensor(x)).numpy().astype(np.float64)
    log_probs = logits - logits.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    token_losses = -np.take_along_axis(log_probs, y[..., None].astype(np.int64), -1)[..., 0]
    losses.append(token_losses)
    text = [t for t in y.reshape(-1).tolist() if t != tok.eot]  # <|endoftext|> stands for no text
    assert (y == tok.eot).any()
    bits += token_losses[y != tok.eot].sum() / math.log(2)
    n_bytes += sum(len(tok.decode_bytes([t])) for t in text)
  assert val_loss == pytest.approx(np.mean(losses), rel=1e-5)
  assert trainer.last_val_bpb == pytest.approx(bits / n_bytes, rel=1e-5)
