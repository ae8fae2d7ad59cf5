"""The training loop: jitted gradient and update steps, LR schedule, evaluation, checkpoints and the run log."""
import math, signal, time
from typing import Callable
from dataclasses import replace
from pathlib import Path
import numpy as np
from tinygrad import Tensor, TinyJit, Context, dtypes, nn
from tinygrad.nn.state import get_state_dict
from aurora_tg import optim
from aurora_tg.formats import checkpoint
from aurora_tg.formats.checkpoint import RunRecord
from aurora_tg.config import TrainSettings
from aurora_tg.tools.diagnostics import NeuronWatch
from aurora_tg.model import GPT, IGNORE_INDEX


class NonFinite(Exception): pass


def lr_multiplier(step: int, s: TrainSettings) -> float:
  """Linear warmup, then cosine decay to min_lr_frac."""
  if step < s.warmup: return (step + 1) / s.warmup
  progress = min(1.0, (step - s.warmup) / max(1, s.steps - s.warmup))
  return s.min_lr_frac + (1 - s.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: GPT, s: TrainSettings) -> nn.optim.OptimizerGroup:
  return optim.build_optimizer(model, s.optimizer, s.lr, s.adam_lr, s.weight_decay, s.matrix_weight_decay)


class Trainer:
  """Trains what the optimizer holds (everything else in the model stays frozen) on data.batch() batches.
  loss(x, y) defaults to the model's cross-entropy; saved_state() is what a checkpoint stores of the model.
  token_bytes (each token id's length in UTF-8 bytes, see Tokenizer.token_bytes) adds bits per byte to evaluation;
  extra_eval(step), when set, adds its figures (a benchmark's, say) to each evaluation's log line and metrics."""
  def __init__(self, model: GPT, data, settings: TrainSettings, optimizer: nn.optim.OptimizerGroup,
               loss: Callable[[Tensor, Tensor], Tensor] | None = None, saved_state: Callable[[], dict] | None = None,
               token_bytes: np.ndarray | None = None):
    self.model, self.data, self.s, self.optimizer, self.token_bytes = model, data, settings, optimizer, token_bytes
    self.extra_eval: Callable[[int], dict[str, float]] = lambda step: {}
    self.loss = loss or model.loss
    self.saved_state = saved_state or (lambda: get_state_dict(model))
    self.params, self.model_params = optimizer.params, nn.state.get_parameters(model)
    # jitted functions must see weights as stored buffers: a still-lazy initialisation would be captured as kernels
    Tensor.realize(*self.model_params, *nn.state.get_parameters(optimizer))
    if settings.devices: self._replicate(settings.devices)
    model.compute_dtype = getattr(dtypes, settings.dtype)
    self.base_lrs = [o.lr.item() for o in optimizer.optimizers]
    # gradients summed over micro-batches live in buffers of their own, so accumulation spans separate jit calls
    self.grad_sums = [Tensor.zeros_like(p).contiguous().realize() for p in self.params]
    self.step, self.rng, self.last_val_loss, self.best_val_loss, self.elapsed_before = 0, np.random.default_rng(settings.seed), None, None, 0.0
    self.last_val_bpb: float | None = None
    self.watch = self._neuron_watch() if settings.diagnostics else None
    self._micro_step, self._update_step, self._eval_step = TinyJit(self._micro), TinyJit(self._update), TinyJit(self._eval)

  def _neuron_watch(self) -> NeuronWatch:
    """Neuron-death diagnostics (--diagnostics): a copy of every trained MLP up/gate weight and kernels in every update,
    so only runs that ask for them pay. A fixed probe batch (its own generator) is where each evaluation counts the
    neurons that never fire."""
    probe = self.data.batch(np.random.default_rng(self.s.seed + 2), NeuronWatch.PROBE_SEQUENCES, "val")[0]
    return NeuronWatch(self.model, self.params, self.tensor(probe, axis=None))

  def _replicate(self, devices: tuple[str, ...]):
    """Data parallelism: a copy of every weight and optimizer tensor on each device. Batches are then split along
    the batch axis, and tinygrad sums the weights' gradients across the devices (its all-reduce)."""
    seen = set()
    for t in [*self.model_params, *nn.state.get_parameters(self.optimizer)]:
      if id(t) not in seen: seen.add(id(t)); t.shard_(devices)
    for opt in self.optimizer.optimizers: opt.device = devices
    Tensor.realize(*self.model_params, *nn.state.get_parameters(self.optimizer))

  def for_inference(self):
    """After training: the model in float32 and, after data-parallel training, on the first device alone."""
    self.model.compute_dtype = dtypes.float32
    for p in self.model_params:
      if isinstance(p.device, tuple): p.replace(p.to(p.device[0]).contiguous().realize())

  def tensor(self, array, axis: int | None = 0) -> Tensor:
    """A host array as an input. When data parallel: split along axis (the batch axis) over the devices, or with
    axis None, a copy on each."""
    return Tensor(array).shard(self.s.devices, axis=axis) if self.s.devices else Tensor(array)

  # ----- jitted pieces -----
  def _micro(self, x: Tensor, y: Tensor) -> Tensor:
    with Context(TRAINING=1):
      for p in self.model_params: p.grad = None  # frozen weights too: backward gives every tensor a gradient
      loss = self.loss(x, y)
      loss.backward()
      for acc, p in zip(self.grad_sums, self.params): acc.assign(acc + p.grad)
      return loss.realize(*self.grad_sums)

  def _update(self, lr_mult: Tensor) -> Tensor:
    with Context(TRAINING=1):
      grads = [acc / self.s.grad_accum for acc in self.grad_sums]
      # a scalar per weight first: fused into one kernel over every weight, the sum fails to link on PoCL
      norm = Tensor.stack(*[g.square().sum().contiguous() for g in grads]).sum().sqrt()
      scale = (self.s.grad_clip / (norm + 1e-6)).minimum(1.0) if self.s.grad_clip > 0 else norm.ones_like()
      for p, g in zip(self.params, grads): p.grad = g * scale
      for opt, base in zip(self.optimizer.optimizers, self.base_lrs): opt.lr.assign(lr_mult * base)
      if self.watch: self.watch.snapshot()
      updates = self.optimizer.schedule_step()
      for acc in self.grad_sums: acc.assign(acc.zeros_like())
      finite = Tensor.stack(*[p.isfinite().all().contiguous() for p in self.params]).all()
      return Tensor.stack(norm, finite.float()).realize(*updates, *self.grad_sums, *(self.watch.accumulate() if self.watch else ()))

  # evaluation is always the model's own cross-entropy (on assistant tokens, for chat data), whatever it trains on;
  # per token, so that bits per byte can weigh each by the bytes it stands for
  def _eval(self, x: Tensor, y: Tensor) -> Tensor:
    return self.model(x).float().sparse_categorical_crossentropy(y, ignore_index=IGNORE_INDEX, reduction="none").realize()

  # ----- steps -----
  def train_step(self) -> tuple[float, float]:
    """One optimizer step over grad_accum micro-batches -> (mean loss, gradient norm before clipping)."""
    losses = []
    for _ in range(self.s.grad_accum):
      x, y = self.data.batch(self.rng, self.s.batch_size)
      losses.append(self._micro_step(self.tensor(x), self.tensor(y)).item())
    loss = sum(losses) / len(losses)
    if not math.isfinite(loss): raise NonFinite(f"loss became {loss} at step {self.step}")
    norm, finite = self._update_step(self.tensor([lr_multiplier(self.step, self.s)], axis=None)).tolist()
    if not finite: raise NonFinite(f"the {self.s.optimizer} update at step {self.step} made the weights non-finite")
    self.step += 1
    return loss, norm

  def evaluate(self) -> float:
    """Mean validation loss per token over fixed batches (a fresh generator, so training's sampling is untouched).
    With token_bytes, also sets last_val_bpb: the loss summed over the tokens, in bits, divided by the UTF-8 bytes
    they decode to (special tokens, which decode to no text, left out), which compares models across tokenizers."""
    rng, loss, counted, bits_loss, n_bytes = np.random.default_rng(self.s.seed + 1), 0.0, 0, 0.0, 0
    for _ in range(self.s.eval_batches):
      x, y = self.data.batch(rng, self.s.batch_size, "val")
      losses = self._eval_step(self.tensor(x), self.tensor(y)).numpy().astype(np.float64)
      loss, counted = loss + losses[y != IGNORE_INDEX].sum(), counted + int((y != IGNORE_INDEX).sum())
      if self.token_bytes is not None:
        token_bytes = np.where(y == IGNORE_INDEX, 0, self.token_bytes[np.maximum(y, 0)])
        bits_loss, n_bytes = bits_loss + losses[token_bytes > 0].sum() / math.log(2), n_bytes + int(token_bytes.sum())
    self.last_val_bpb = bits_loss / n_bytes if n_bytes else None
    return loss / counted

  # ----- checkpoints -----
  def save(self, run_dir: Path, record: RunRecord, elapsed_s: float = 0.0) -> Path:
    record = replace(record, step=self.step, rng=self.rng.bit_generator.state, elapsed_s=self.elapsed_before + elapsed_s,
                     best_val_loss=self.best_val_loss, data_position=getattr(self.data, "state", lambda: None)())
    return checkpoint.save(run_dir, self.saved_state(), checkpoint.optimizer_state(self.optimizer, self.params), record,
                           keep=record.run.keep if record.run else 0)

  def restore(self, optim_state: dict[str, Tensor], record: RunRecord):
    checkpoint.copy_into(checkpoint.optimizer_state(self.optimizer, self.params), optim_state, "optimizer state")
    self.step, self.rng.bit_generator.state, self.elapsed_before = record.step, record.rng, record.elapsed_s
    self.best_val_loss = record.best_val_loss
    if record.data_position: self.data.restore(record.data_position)

  # ----- the loop -----
  def run(self, run_dir: Path, record: RunRecord, metrics: Callable[[dict], None], log=lambda line: print(line, flush=True)) -> str:
    """Train to s.steps, evaluating, logging (metrics gets one dict per log line and evaluation) and checkpointing.
    Ctrl-C (SIGINT) and SIGTERM (a scheduler's or a cloud's notice) finish the step, save, and return 'interrupted'
    or 'terminated'."""
    stop = []
    previous = {sig: signal.signal(sig, lambda signum, _: stop.append(signum)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
      start, tokens_per_step = time.perf_counter(), self.s.batch_size * self.s.grad_accum * self.data.block_size
      elapsed = lambda: self.elapsed_before + time.perf_counter() - start
      first_step, window_start, window_tokens = self.step, start, 0
      if self.step == 0: self._log_eval(metrics, log, elapsed(), train_loss=None)
      while self.step < self.s.steps and not stop:
        loss, norm = self.train_step()
        window_tokens += tokens_per_step
        if self.step % self.s.log_every == 0 or self.step == self.s.steps:
          now = time.perf_counter()
          tok_s = window_tokens / (now - window_start)
          eta = (self.s.steps - self.step) * (now - start) / (self.step - first_step)
          lr = self.base_lrs[0] * lr_multiplier(self.step - 1, self.s)
          neurons = self.watch.report() if self.watch else {}
          dead = f"dead neurons {'/'.join(f'{f:.0%}' for f in neurons['dead_fraction'])} | " if self.watch else ""
          log(f"step {self.step:5d}/{self.s.steps} | loss {loss:.4f} | lr {lr:.2e} | grad norm {norm:.2f} | "
              f"{dead}{tok_s:,.0f} tok/s | {_duration(eta)} left")
          metrics({"step": self.step, "train_loss": loss, "lr": lr, "tokens_per_s": tok_s, "elapsed_s": elapsed(), **neurons})
          window_start, window_tokens = now, 0
        if self.step % self.s.eval_every == 0 or self.step == self.s.steps:
          self._log_eval(metrics, log, elapsed(), loss)
          if not math.isfinite(self.last_val_loss):  # never save a model that evaluates to NaN over the last good one
            raise NonFinite(f"validation loss became {self.last_val_loss} at step {self.step}")
          best = record.run is not None and record.run.keep_best and (self.best_val_loss is None or self.last_val_loss < self.best_val_loss)
          if best: self.best_val_loss = self.last_val_loss
          path = self.save(run_dir, record, time.perf_counter() - start)  # a killed run loses at most eval_every steps
          if best: checkpoint.link(path, run_dir / checkpoint.BEST_NAME)
      if stop: self.save(run_dir, record, time.perf_counter() - start)
      return "done" if not stop else "interrupted" if stop[0] == signal.SIGINT else "terminated"
    finally:
      for sig, handler in previous.items(): signal.signal(sig, handler)

  def _log_eval(self, metrics, log, elapsed_s: float, train_loss: float | None):
    val = self.evaluate()
    self.last_val_loss = val
    extra = ({"val_bpb": self.last_val_bpb} if self.last_val_bpb is not None else {}) | self.extra_eval(self.step)
    never = {"never_active": self.watch.never_active()} if self.watch else {}
    log(f"step {self.step:5d}: val loss {val:.4f}" + "".join(f" | {name} {value:.4f}" for name, value in extra.items())
        + "".join(f" | never active {'/'.join(f'{f:.0%}' for f in fractions)}" for fractions in never.values()))
    metrics({"step": self.step, "train_loss": train_loss, "val_loss": val, "elapsed_s": elapsed_s} | never | extra)


def _duration(seconds: float) -> str:
  m, s = divmod(int(seconds), 60)
  return f"{m}m{s:02d}s"
