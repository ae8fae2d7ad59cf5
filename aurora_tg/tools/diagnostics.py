"""Neuron-death diagnostics, after the Aurora paper (Tilde Research): under Muon the update of a tall matrix (an MLP
up-projection, one row per neuron) gives some neurons far less than their share, and a neuron starved for long enough
stops learning for good. The trainer snapshots and accumulates inside its jitted update step and calls report() at
each log line and never_active() at each evaluation."""
import numpy as np
from tinygrad import Tensor
from aurora_tg.model import GPT


class _Recorder:
  """Stands in for a projection during the probe forward: passes its output on and keeps it."""
  def __init__(self, layer): self.layer, self.out = layer, None

  def __call__(self, x: Tensor) -> Tensor:
    self.out = self.layer(x)
    return self.out


def _gate_name(mlp) -> str:
  """The projection whose output the activation gates on: c_gate for SwiGLU, c_fc for the others."""
  return "c_gate" if getattr(mlp, "c_gate", None) is not None else "c_fc"


class NeuronWatch:
  """Per MLP layer, neuron i's leverage over a window (the steps since the last report) is its share of the update,
  relative to a uniform share: lev_i = m * E_i / sum_j E_j, where E_i sums the squared change of the neuron's rows
  (up and, for SwiGLU, gate) over the window's steps and m is the layer's neuron count; 1.0 is a fair share. A neuron
  is starved in a window when lev_i < STARVED_BELOW and dead once starved DEAD_AFTER windows in a row (one fair window
  revives it). Only trained weights are watched: frozen layers and LoRA-wrapped ones (whose base does not move) are
  skipped, and a layer with neither weight trained is left out of the per-layer lists. probe: the token ids (B, T)
  never_active() runs through the model."""
  STARVED_BELOW, DEAD_AFTER, PROBE_SEQUENCES = 0.1, 3, 4

  def __init__(self, model: GPT, trained: list[Tensor], probe: Tensor | None = None):
    self.model, self.probe = model, probe
    trained_ids = {id(t) for t in trained}
    layers = [[w for name in ("c_fc", "c_gate") if id(w := getattr(getattr(block.mlp, name, None), "weight", None)) in trained_ids]
              for block in model.h]
    self.layers = [ws for ws in layers if ws]
    self.weights = [w for ws in self.layers for w in ws]
    self.energy = [Tensor.zeros(ws[0].shape[0], device=ws[0].device).contiguous().realize() for ws in self.layers]
    self.before = [Tensor.zeros_like(w).contiguous().realize() for w in self.weights]
    self.starved = [np.zeros(ws[0].shape[0], np.int64) for ws in self.layers]
    self.leverage: list[np.ndarray] = [np.ones(ws[0].shape[0]) for ws in self.layers]  # the last window's, per layer

  def snapshot(self):
    """Copy the weights before the optimizer step (realized now, so the copy precedes the update)."""
    if self.weights: Tensor.realize(*[before.assign(w) for before, w in zip(self.before, self.weights)])

  def accumulate(self) -> list[Tensor]:
    """Add this step's squared row changes, up and gate summed, to each neuron's energy (on device: no host copy)."""
    before = iter(self.before)
    for energy, ws in zip(self.energy, self.layers):
      energy.assign(energy + sum((w - next(before)).square().sum(1) for w in ws))
    return self.energy

  def report(self) -> dict[str, list[float]]:
    """Close the window: per layer, the fraction of dead neurons and the leverage spread (its coefficient of
    variation, which is its standard deviation since its mean is 1; 0 when every neuron gets its share)."""
    energies = [e.numpy().astype(np.float64) for e in self.energy]
    for e in self.energy: e.assign(e.zeros_like()).realize()
    # a window in which nothing moved singles no neuron out: uniform
    self.leverage = [len(e) * e / e.sum() if e.sum() > 0 else np.ones_like(e) for e in energies]
    self.starved = [np.where(lev < self.STARVED_BELOW, n + 1, 0) for lev, n in zip(self.leverage, self.starved)]
    return {"dead_fraction": [float((n >= self.DEAD_AFTER).mean()) for n in self.starved],
            "leverage_spread": [float(lev.std()) for lev in self.leverage]}

  def never_active(self) -> list[float]:
    """Per block (frozen or not: firing is the forward pass's business), the fraction of neurons whose gating
    pre-activation is <= 0 on every token of the probe batch. GELU, SiLU and squared ReLU pass (nearly) nothing for a
    negative input, so such a neuron adds (nearly) nothing to any probe token's output. The probe's logits are never
    realized, so only the blocks' work is done."""
    gates = [(block.mlp, _gate_name(block.mlp)) for block in self.model.h]
    recorders = [_Recorder(getattr(mlp, name)) for mlp, name in gates]
    for (mlp, name), rec in zip(gates, recorders): setattr(mlp, name, rec)
    try: self.model(self.probe)
    finally:
      for (mlp, name), rec in zip(gates, recorders): setattr(mlp, name, rec.layer)
    silent = Tensor.stack(*[(rec.out <= 0).all(axis=(0, 1)).float().mean() for rec in recorders])
    return silent.tolist()
