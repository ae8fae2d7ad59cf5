"""LoRA adapters: a zero B changes nothing, merging changes nothing, the base stays frozen, the file holds adapters."""
import numpy as np
from tinygrad import Tensor, nn
from tinygrad.nn.state import safe_load
from aurora_tg import lora
from aurora_tg.formats import checkpoint
from aurora_tg.formats.checkpoint import RunRecord
from aurora_tg.finetune import frozen_below
from aurora_tg.optim import adamw
from aurora_tg.model import GPT, GPTConfig
from aurora_tg.trainer import Trainer
from conftest import TEST_SHAPE
from test_trainer import SETTINGS, structured_tokens
from aurora_tg.data.shards import TokenData

IDS = Tensor(np.random.default_rng(0).integers(0, 97, size=(2, 16)).tolist())


def make_model(**arch) -> GPT:
  Tensor.manual_seed(0)
  model = GPT(GPTConfig(**{**TEST_SHAPE, **arch}))
  Tensor.realize(*nn.state.get_parameters(model))
  return model


def test_zero_b_leaves_the_output_unchanged_and_merging_keeps_the_logits():
  model = make_model(mlp="swiglu")
  before = model(IDS).numpy()
  adapters = lora.add_adapters(model, lora.LoRAConfig(rank=4, alpha=8))
  np.testing.assert_allclose(model(IDS).numpy(), before, rtol=0, atol=1e-6)  # zeros added; only summation order may differ
  for t in adapters: t.assign(Tensor.randn(*t.shape) * 0.1).realize()  # B != 0: the adapters now matter
  adapted = model(IDS).numpy()
  assert np.abs(adapted - before).max() > 1e-3
  lora.merge_adapters(model)
  assert not lora.adapter_state(model)
  np.testing.assert_allclose(model(IDS).numpy(), adapted, atol=1e-4)


def trained(model: GPT, params: list[Tensor], saved_state=None) -> Trainer:
  trainer = Trainer(model, TokenData(structured_tokens(), 16), SETTINGS, adamw(params, 1e-2, 0.1), saved_state=saved_state)
  for _ in range(3): trainer.train_step()
  return trainer


def test_lora_trains_only_adapters_and_saves_only_them(tmp_path):
  model = make_model()
  base = {k: v.numpy().copy() for k, v in nn.state.get_state_dict(model).items()}
  adapters = lora.add_adapters(model, lora.LoRAConfig(rank=2, alpha=4, targets=("c_attn", "c_fc")))
  trainer = trained(model, adapters, saved_state=lambda: lora.adapter_state(model))
  state = nn.state.get_state_dict(model)
  for name, value in base.items():
    live = state[name] if name in state else state[name.replace(".weight", ".base.weight").replace(".bias", ".base.bias")]
    assert np.array_equal(live.numpy(), value), name  # bit-identical
  assert any(np.abs(t.numpy()).max() > 0 for t in adapters if t.shape[1] == 2)  # B moved
  path = trainer.save(tmp_path, RunRecord("lora", model.cfg, "test tokenizer"))
  model_keys = [k for k in safe_load(str(path)) if k.startswith("model.")]
  assert model_keys and all(".lora_a" in k or ".lora_b" in k for k in model_keys)
  assert len(model_keys) == 2 * 2 * TEST_SHAPE["n_layer"]


def test_partial_fine_tuning_freezes_embeddings_and_lower_blocks():
  model = make_model()
  params = frozen_below(model, 1)
  frozen = {k: v.numpy().copy() for k, v in nn.state.get_state_dict(model).items() if k.startswith(("wte", "wpe", "h.0."))}
  trained(model, params)
  state = nn.state.get_state_dict(model)
  for name, value in frozen.items(): assert np.array_equal(state[name].numpy(), value), name
  assert not np.array_equal(state["h.1.mlp.c_fc.weight"].numpy(), make_model().h[1].mlp.c_fc.weight.numpy())
