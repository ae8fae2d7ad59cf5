"""The training loop: jitted gradient and update steps, LR schedule, evaluation, checkpoints and the run log."""
import json, math, signal, time
from dataclasses import dataclass, asdict
from pathlib import Path
import numpy as np
from tinygrad import Tensor, TinyJit, Context, nn
from tinygrad.nn.state import get_state_dict
from aurora_tg import checkpoint
from aurora_tg.data import TokenData
from aurora_tg.model import GPT


@dataclass
class TrainSettings:
  steps: int = 300
  batch_size: int = 16
  grad_accum: int = 1           # micro-batches per optimizer step
  lr: float = 3e-3
  warmup: int = 20
  min_lr_frac: float = 0.1      # cosine decays to lr * min_lr_frac
  weight_decay: float = 0.1
  grad_clip: float = 1.0
  eval_every: int = 50
  eval_batches: int = 4
  log_every: int = 10
  seed: int = 1337


class NonFiniteLoss(Exception): pass


def lr_multiplier(step: int, s: TrainSettings) -> float:
  """Linear warmup, then cosine decay to min_lr_frac."""
  if step < s.warmup: return (step + 1) / s.warmup
  progress = min(1.0, (step - s.warmup) / max(1, s.steps - s.warmup))
  return s.min_lr_frac + (1 - s.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: GPT, s: TrainSettings) -> nn.optim.OptimizerGroup:
  """AdamW; as in GPT-2 and nanoGPT, weight decay applies to matrices and embeddings only, not to norms and biases."""
  params = nn.state.get_parameters(model)
  decay, no_decay = [p for p in params if p.ndim >= 2], [p for p in params if p.ndim < 2]
  return nn.optim.OptimizerGroup(nn.optim.AdamW(decay, lr=s.lr, b1=0.9, b2=0.95, weight_decay=s.weight_decay),
                                 nn.optim.AdamW(no_decay, lr=s.lr, b1=0.9, b2=0.95, weight_decay=0.0))


class Trainer:
  def __init__(self, model: GPT, data: TokenData, settings: TrainSettings, optimizer: nn.optim.OptimizerGroup):
    self.model, self.data, self.s, self.optimizer = model, data, settings, optimizer
    self.params = nn.state.get_parameters(model)
    # jitted functions must see weights as stored buffers: a still-lazy initialisation would be captured as kernels
    Tensor.realize(*self.params, *nn.state.get_parameters(optimizer))
    self.base_lrs = [o.lr.item() for o in optimizer.optimizers]
    # gradients summed over micro-batches live in buffers of their own, so accumulation spans separate jit calls
    self.grad_sums = [Tensor.zeros_like(p).contiguous().realize() for p in self.params]
    self.step, self.rng, self.last_val_loss = 0, np.random.default_rng(settings.seed), None
    self._micro_step, self._update_step, self._eval_step = TinyJit(self._micro), TinyJit(self._update), TinyJit(self._eval)

  # ----- jitted pieces -----
  def _micro(self, x: Tensor, y: Tensor) -> Tensor:
    with Context(TRAINING=1):
      for p in self.params: p.grad = None
      loss = self.model.loss(x, y)
      loss.backward()
      for acc, p in zip(self.grad_sums, self.params): acc.assign(acc + p.grad)
      return loss.realize(*self.grad_sums)

  def _update(self, lr_mult: Tensor) -> Tensor:
    with Context(TRAINING=1):
      grads = [acc / self.s.grad_accum for acc in self.grad_sums]
      norm = Tensor.stack(*[g.square().sum() for g in grads]).sum().sqrt()
      scale = (self.s.grad_clip / (norm + 1e-6)).minimum(1.0) if self.s.grad_clip > 0 else Tensor(1.0)
      for p, g in zip(self.params, grads): p.grad = g * scale
      for opt, base in zip(self.optimizer.optimizers, self.base_lrs): opt.lr.assign(lr_mult * base)
      updates = self.optimizer.schedule_step()
      for acc in self.grad_sums: acc.assign(acc.zeros_like())
      return norm.realize(*updates, *self.grad_sums)

  def _eval(self, x: Tensor, y: Tensor) -> Tensor: return self.model.loss(x, y).realize()

  # ----- steps -----
  def train_step(self) -> tuple[float, float]:
    """One optimizer step over grad_accum micro-batches -> (mean loss, gradient norm before clipping)."""
    losses = []
    for _ in range(self.s.grad_accum):
      x, y = self.data.batch(self.rng, self.s.batch_size)
      losses.append(self._micro_step(Tensor(x), Tensor(y)).item())
    loss = sum(losses) / len(losses)
    if not math.isfinite(loss): raise NonFiniteLoss(f"loss became {loss} at step {self.step}")
    norm = self._update_step(Tensor([lr_multiplier(self.step, self.s)])).item()
    self.step += 1
    return loss, norm

  def evaluate(self) -> float:
    """Mean validation loss over fixed batches (a fresh generator, so training's sampling is untouched)."""
    rng = np.random.default_rng(self.s.seed + 1)
    losses = [self._eval_step(*map(Tensor, self.data.batch(rng, self.s.batch_size, "val"))).item() for _ in range(self.s.eval_batches)]
    return sum(losses) / len(losses)

  # ----- checkpoints -----
  def save(self, run_dir: Path, record: dict) -> Path:
    record = record | {"step": self.step, "rng": self.rng.bit_generator.state, "settings": asdict(self.s)}
    return checkpoint.save(run_dir, get_state_dict(self.model), checkpoint.optimizer_state(self.optimizer, self.params), record)

  def restore(self, optim_state: dict[str, Tensor], record: dict):
    checkpoint.copy_into(checkpoint.optimizer_state(self.optimizer, self.params), optim_state, "optimizer state")
    self.step, self.rng.bit_generator.state = record["step"], record["rng"]

  # ----- the loop -----
  def run(self, run_dir: Path, record: dict, log=lambda line: print(line, flush=True)) -> str:
    """Train to s.steps, evaluating, logging and checkpointing; Ctrl-C saves and returns 'interrupted'."""
    stop = []
    previous_handler = signal.signal(signal.SIGINT, lambda *_: stop.append(True))  # finish the step, then save
    metrics = open(run_dir / "metrics.jsonl", "a")
    try:
      start, tokens_per_step = time.perf_counter(), self.s.batch_size * self.s.grad_accum * self.data.block_size
      first_step, window_start, window_tokens = self.step, start, 0
      if self.step == 0: self._log_eval(metrics, log, start, train_loss=None)
      while self.step < self.s.steps and not stop:
        loss, norm = self.train_step()
        window_tokens += tokens_per_step
        if self.step % self.s.log_every == 0 or self.step == self.s.steps:
          now = time.perf_counter()
          tok_s = window_tokens / (now - window_start)
          eta = (self.s.steps - self.step) * (now - start) / (self.step - first_step)
          lr = self.base_lrs[0] * lr_multiplier(self.step - 1, self.s)
          log(f"step {self.step:5d}/{self.s.steps} | loss {loss:.4f} | lr {lr:.2e} | grad norm {norm:.2f} | "
              f"{tok_s:,.0f} tok/s | {_duration(eta)} left")
          metrics.write(json.dumps({"step": self.step, "train_loss": loss, "lr": lr, "tokens_per_s": tok_s,
                                    "elapsed_s": now - start}) + "\n")
          window_start, window_tokens = now, 0
        if self.step % self.s.eval_every == 0 or self.step == self.s.steps:
          self._log_eval(metrics, log, start, loss)
          self.save(run_dir, record)  # a killed run loses at most eval_every steps
      if stop: self.save(run_dir, record)
      return "interrupted" if stop else "done"
    finally:
      metrics.close()
      signal.signal(signal.SIGINT, previous_handler)

  def _log_eval(self, metrics, log, start: float, train_loss: float | None):
    val = self.evaluate()
    self.last_val_loss = val
    log(f"step {self.step:5d}: val loss {val:.4f}")
    metrics.write(json.dumps({"step": self.step, "train_loss": train_loss, "val_loss": val,
                              "elapsed_s": time.perf_counter() - start}) + "\n")
    metrics.flush()


def _duration(seconds: float) -> str:
  m, s = divmod(int(seconds), 60)
  return f"{m}m{s:02d}s"
