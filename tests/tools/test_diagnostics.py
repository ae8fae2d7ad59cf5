"""Neuron-death diagnostics against numpy: leverage from weight changes applied by hand, the dead count over windows,
SwiGLU's up and gate rows together, frozen layers skipped, and never-active neurons on a probe batch."""
import json
from dataclasses import replace
import numpy as np
import pytest
from tinygrad import Tensor, nn
from tinygrad.nn.state import get_state_dict
from aurora_tg import lora
from aurora_tg.tools.diagnostics import NeuronWatch
from aurora_tg.finetune import frozen_below
from aurora_tg.model import GPT, GPTConfig, Linear
from conftest import TEST_SHAPE
from kernels import reference as ref
from test_trainer import SETTINGS, make_trainer, run_record


def watched(mlp="gelu", trained=lambda model: nn.state.get_parameters(model), probe=None) -> NeuronWatch:
  Tensor.manual_seed(0)
  model = GPT(GPTConfig(**TEST_SHAPE, mlp=mlp))
  Tensor.realize(*nn.state.get_parameters(model))  # stored, as the trainer stores them
  return NeuronWatch(model, trained(model), probe)


def step(watch: NeuronWatch, deltas: list[np.ndarray]) -> list[np.ndarray]:
  """One optimizer step by hand: snapshot, move each watched weight by its delta, accumulate. Returns the changes
  the weights really took (float32 rounding included), for the numpy side."""
  before = [w.numpy().astype(np.float64) for w in watch.weights]
  watch.snapshot()
  for w, d in zip(watch.weights, deltas): w.assign(w + Tensor(d.astype(np.float32))).realize()
  Tensor.realize(*watch.accumulate())
  return [w.numpy() - b for w, b in zip(watch.weights, before)]


def np_leverage(changes_per_step: list[list[np.ndarray]]) -> np.ndarray:
  """m * E_i / sum E: E_i sums neuron i's squared row changes over the steps and over the given matrices."""
  energy = sum(np.square(c).sum(1) for changes in changes_per_step for c in changes)
  return len(energy) * energy / energy.sum()


def test_leverage_is_each_neurons_share_of_the_squared_update_per_window():
  watch = watched()
  rng = np.random.default_rng(0)
  for window in range(2):  # the second window must not see the first's steps
    scales = [rng.uniform(0, 2, (w.shape[0], 1)) for w in watch.weights]  # uneven rows
    changes = [step(watch, [rng.standard_normal(w.shape) * s for w, s in zip(watch.weights, scales)]) for _ in range(2)]
    report = watch.report()
    for i, lev in enumerate(watch.leverage):
      expected = np_leverage([[c[i]] for c in changes])
      np.testing.assert_allclose(lev, expected, rtol=1e-4, err_msg=f"window {window}, layer {i}")
      assert report["leverage_spread"][i] == pytest.approx(expected.std(), rel=1e-4)
    assert report["dead_fraction"] == [0.0, 0.0]


def test_a_neuron_starved_for_dead_after_windows_in_a_row_is_dead_and_one_that_recovers_is_not():
  """Layer 0's rows: 0-3 get no update in windows 1-3 and a fair one in window 4; row 4 none in windows 1-2 and a
  fair one in window 3 (recovering in the K-th window); rows 5 and 7 none in windows 1 and 3 (and 7 in 4), a fair one
  in window 2 that starts their count over from 0; row 6 a 0.3 update every window, whose square (0.09 of a fair
  share) is starved but whose norm (0.3) would not be."""
  assert NeuronWatch.DEAD_AFTER == 3 and NeuronWatch.STARVED_BELOW == 0.1  # what the rows above are built for
  watch = watched()
  m = watch.weights[0].shape[0]
  still = {1: [0, 1, 2, 3, 4, 5, 7], 2: [0, 1, 2, 3, 4], 3: [0, 1, 2, 3, 5, 7], 4: [7]}
  dead = []
  for window, rows in still.items():
    delta = np.ones(watch.weights[0].shape)
    delta[rows], delta[6] = 0.0, 0.3
    step(watch, [delta, np.ones(watch.weights[1].shape)])
    dead.append(watch.report()["dead_fraction"])
  assert dead == [[0.0, 0.0], [0.0, 0.0], [5 / m, 0.0], [1 / m, 0.0]]


def test_swiglu_combines_up_and_gate_rows():
  """Up and gate changes with different row patterns: a neuron's energy is the sum of both."""
  watch = watched("swiglu")
  assert len(watch.layers) == TEST_SHAPE["n_layer"] and all(len(ws) == 2 for ws in watch.layers)
  rng = np.random.default_rng(1)
  m = watch.weights[0].shape[0]
  up, gate = np.ones((m, 1)), np.ones((m, 1))
  up[: m // 2], gate[m // 2:] = 0.0, 3.0  # half the neurons move only through the gate, the rest mostly through it
  changes = step(watch, [rng.standard_normal(w.shape) * (up if i % 2 == 0 else gate) for i, w in enumerate(watch.weights)])
  watch.report()
  for i, lev in enumerate(watch.leverage):
    np.testing.assert_allclose(lev, np_leverage([changes[2 * i: 2 * i + 2]]), rtol=1e-4, err_msg=f"layer {i}")


def test_frozen_and_lora_wrapped_layers_are_not_watched():
  frozen = watched("swiglu", lambda model: frozen_below(model, 1))
  assert [[id(w) for w in ws] for ws in frozen.layers] == [[id(frozen.model.h[1].mlp.c_fc.weight), id(frozen.model.h[1].mlp.c_gate.weight)]]
  rng = np.random.default_rng(2)
  changes = step(frozen, [rng.standard_normal(w.shape) for w in frozen.weights])
  report = frozen.report()
  assert len(report["dead_fraction"]) == len(report["leverage_spread"]) == 1
  np.testing.assert_allclose(frozen.leverage[0], np_leverage([changes]), rtol=1e-4)
  adapted = watched(trained=lambda model: lora.add_adapters(model, lora.LoRAConfig(rank=2)))
  assert adapted.weights == [] and adapted.report() == {"dead_fraction": [], "leverage_spread": []}


def np_gate_preactivations(model: GPT, x: np.ndarray) -> list[np.ndarray]:
  """Each block's gating pre-activation (c_gate's output for SwiGLU, c_fc's otherwise) by a float64 numpy forward of
  the model (layernorm, learned positions, biases)."""
  p, (B, T), swiglu = {k: v.numpy().astype(np.float64) for k, v in get_state_dict(model).items()}, x.shape, model.cfg.mlp == "swiglu"
  h, pres = p["wte.weight"][x] + p["wpe.weight"][:T], []
  for i in range(model.cfg.n_layer):
    def w(name): return p[f"h.{i}.{name}"]
    def linear(a, name): return a @ w(f"{name}.weight").T + w(f"{name}.bias")
    def heads(t): return t.reshape(B, T, model.cfg.n_head, -1).transpose(0, 2, 1, 3)
    q, k, v = (heads(t) for t in np.split(linear(ref.layernorm(h, w("ln_1.weight"), w("ln_1.bias")), "attn.c_attn"), 3, -1))
    h = h + linear(ref.causal_attention(q, k, v).transpose(0, 2, 1, 3).reshape(B, T, -1), "attn.c_proj")
    a = ref.layernorm(h, w("ln_2.weight"), w("ln_2.bias"))
    pres.append(linear(a, "mlp.c_gate" if swiglu else "mlp.c_fc"))
    h = h + linear(ref.silu(pres[-1]) * linear(a, "mlp.c_fc") if swiglu else ref.gelu(pres[-1]), "mlp.c_proj")
  return pres


def set_rows(layer: Linear, rows: slice | int, weight: float | np.ndarray, bias: float):
  """Rows with this weight in every entry (0: they ignore the input) and this bias."""
  w, b = layer.weight.numpy(), layer.bias.numpy()
  w[rows], b[rows] = weight, bias
  layer.weight.assign(Tensor(w)).realize()
  layer.bias.assign(Tensor(b)).realize()


@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
def test_never_active_counts_neurons_whose_gate_is_not_positive_on_any_probe_token(mlp):
  """Block 0 silences 10 neurons and block 1 5, through the gate. Block 0's neuron 20 is shifted so that one probe
  token alone makes it positive: active. With SwiGLU the up-projection says otherwise (20 rows negative, the silenced
  ones positive), so measuring it would be wrong."""
  x = np.random.default_rng(3).integers(0, TEST_SHAPE["vocab_size"], (NeuronWatch.PROBE_SEQUENCES, TEST_SHAPE["block_size"]))
  watch = watched(mlp, probe=Tensor(x))
  gates = [block.mlp.c_gate if mlp == "swiglu" else block.mlp.c_fc for block in watch.model.h]
  set_rows(gates[0], slice(0, 10), 0.0, -1.0)
  set_rows(gates[1], slice(0, 5), 0.0, -1.0)
  if mlp == "swiglu":
    set_rows(watch.model.h[0].mlp.c_fc, slice(0, 10), 0.0, 1.0)
    set_rows(watch.model.h[0].mlp.c_fc, slice(30, 50), 0.0, -1.0)
  top = np.sort(np_gate_preactivations(watch.model, x)[0][..., 20].reshape(-1))[-2:]
  w20, b20 = gates[0].weight.numpy()[20], gates[0].bias.numpy()[20]
  set_rows(gates[0], 20, w20, b20 - top.mean())  # between the largest and the second largest
  pres = np_gate_preactivations(watch.model, x)
  assert (pres[0][..., 20] > 0).sum() == 1
  expected = [float((pre <= 0).all(axis=(0, 1)).mean()) for pre in pres]
  m = pres[0].shape[-1]
  assert expected == [10 / m, 5 / m]  # the rest of the neurons fire somewhere on the probe
  assert watch.never_active() == pytest.approx(expected)
  assert all(type(getattr(block.mlp, name)) is Linear for block in watch.model.h for name in ("c_fc", "c_gate") if getattr(block.mlp, name) is not None)


def test_the_trainer_measures_its_own_steps_and_logs_the_diagnostics(tmp_path):
  """A real update step feeds the watch (its leverage is numpy's from the weights before and after), and a run
  writes dead_fraction and leverage_spread at log lines, never_active at evaluations, and shows them."""
  trainer = make_trainer(replace(SETTINGS, diagnostics=True), plain_sgd=True)
  weights = lambda: [w.numpy().astype(np.float64) for w in trainer.watch.weights]
  before = weights()
  trainer.train_step()
  trainer.watch.report()
  for lev, b, a in zip(trainer.watch.leverage, before, weights()): np.testing.assert_allclose(lev, np_leverage([[a - b]]), rtol=1e-3)
  lines, metrics = [], []
  trainer = make_trainer(replace(SETTINGS, steps=3, log_every=3, eval_every=3, diagnostics=True))
  trainer.run(tmp_path, run_record(trainer), metrics=metrics.append, log=lines.append)
  logged, evaluated = [m for m in metrics if "val_loss" not in m], [m for m in metrics if "val_loss" in m]
  assert [len(m["dead_fraction"]) for m in logged] == [len(m["leverage_spread"]) for m in logged] == [TEST_SHAPE["n_layer"]]
  assert [len(m["never_active"]) for m in evaluated] == [TEST_SHAPE["n_layer"]] * 2
  assert "dead neurons 0%/0%" in lines[1] and "never active" in lines[0] and "never active" in lines[2]
  json.dumps(metrics)  # plain floats: metrics.jsonl can hold them


def test_without_diagnostics_a_run_keeps_no_copies_and_logs_none(tmp_path):
  """Off (the default but for matrix optimizers' pretraining): no watch, so no weight copies and no figures."""
  trainer = make_trainer(replace(SETTINGS, steps=3, log_every=3, eval_every=3))
  assert trainer.watch is None
  lines, metrics = [], []
  trainer.run(tmp_path, run_record(trainer), metrics=metrics.append, log=lines.append)
  assert not any(key in m for m in metrics for key in ("dead_fraction", "leverage_spread", "never_active"))
  assert not any("dead neurons" in line or "never active" in line for line in lines)
