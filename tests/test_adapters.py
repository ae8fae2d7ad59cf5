"""Adapter layers: the bottleneck against numpy, identity at the start, the base frozen, the file holds adapters alone."""
import numpy as np
from tinygrad import Tensor, nn
from tinygrad.nn.state import safe_load
from aurora_tg import adapters
from aurora_tg.formats.checkpoint import RunRecord
from conftest import TEST_SHAPE
from test_lora import IDS, make_model, trained


def np_gelu(x):  # GPT-2's tanh approximation
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def test_an_adapter_adds_its_bottleneck_to_its_input():
  rng = np.random.default_rng(0)
  adapter = adapters.Adapter(32, 8)
  for t in (adapter.down.weight, adapter.down.bias, adapter.up.weight, adapter.up.bias):
    t.assign(Tensor(rng.standard_normal(t.shape).astype(np.float32) * 0.3)).realize()
  h = rng.standard_normal((2, 5, 32)).astype(np.float32)
  expected = h + np_gelu(h @ adapter.down.weight.numpy().T + adapter.down.bias.numpy()) @ adapter.up.weight.numpy().T + adapter.up.bias.numpy()
  np.testing.assert_allclose(adapter(Tensor(h)).numpy(), expected, atol=1e-5)


def test_adapters_start_as_the_identity_train_alone_and_save_alone(tmp_path):
  model = make_model()
  before = model(IDS).numpy()
  base = {k: v.numpy().copy() for k, v in nn.state.get_state_dict(model).items()}
  params = adapters.add_adapters(model, 8)
  np.testing.assert_allclose(model(IDS).numpy(), before, atol=1e-6)  # up starts at zero
  assert len(params) == 2 * 2 * 2 * TEST_SHAPE["n_layer"]  # down and up, weight and bias, after attention and MLP
  trainer = trained(model, params, saved_state=lambda: adapters.adapter_state(model))
  state = nn.state.get_state_dict(model)
  assert all(np.array_equal(state[name].numpy(), value) for name, value in base.items())  # the base, bit for bit
  assert np.abs(model(IDS).numpy() - before).max() > 1e-4  # the adapters learned
  path = trainer.save(tmp_path, RunRecord("adapter", model.cfg, "test tokenizer"))
  model_keys = [k for k in safe_load(str(path)) if k.startswith("model.")]
  assert sorted(model_keys) == sorted(f"model.{k}" for k in adapters.adapter_state(model))
  assert all(".adapter_attn." in k or ".adapter_mlp." in k for k in model_keys) and model_keys
