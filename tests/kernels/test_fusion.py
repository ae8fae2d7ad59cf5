"""Fusion is part of Aurora's promise: pin how many kernels one forward pass and one training step schedule.

A change that splits a fused kernel (a stray .contiguous(), an op tinygrad cannot fuse through) or merges what must
stay apart shows up here as a changed count. To update after a deliberate change, run
    python -m pytest tests/kernels/test_fusion.py
read the measured counts from the failure message, check that the change is the one you meant (DEBUG=2 prints every
kernel), and write them into PINNED below. The counts depend on tinygrad's version, which pyproject.toml pins."""
import numpy as np
import pytest
from tinygrad import Tensor, GlobalCounters
from aurora_tg.data import TokenData
from aurora_tg.model import GPT, GPTConfig
from aurora_tg.trainer import Trainer, TrainSettings, build_optimizer
from kernel_check import on

SHAPE = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=97)
# kernels for: the loss (forward only), one micro-batch (forward, backward, gradient accumulation), one optimizer
# update (clipping, AdamW, the neuron-death statistics), SHAPE, batch 4, AdamW
PINNED = {"CPU": (40, 135, 267), "CL": (40, 135, 265)}


def kernels_of(fn, *args) -> int:
  GlobalCounters.reset()
  Tensor.realize(fn(*args))
  return GlobalCounters.kernel_count


def test_kernel_counts_of_forward_and_train_step(backend):
  if backend not in PINNED: pytest.skip(f"no kernel counts pinned for {backend} yet (see this file's docstring)")
  with on(backend):
    Tensor.manual_seed(0)
    model = GPT(GPTConfig(**SHAPE))
    tokens = (np.arange(2000) % SHAPE["vocab_size"]).astype(np.uint16)
    settings = TrainSettings(batch_size=4)
    trainer = Trainer(model, TokenData(tokens, SHAPE["block_size"]), settings, build_optimizer(model, settings))
    x, y = (Tensor(a).realize() for a in trainer.data.batch(np.random.default_rng(0), settings.batch_size))
    lr_mult = Tensor([1.0]).realize()
    # unjitted calls: the jit would replay captured kernels without scheduling anything
    measured = (kernels_of(model.loss, x, y), kernels_of(trainer._micro, x, y), kernels_of(trainer._update, lr_mult))
  assert measured == PINNED[backend], f"{backend} kernel counts (forward, micro-batch, update) are {measured}, pinned " \
    f"{PINNED[backend]}: fusion changed; if that is intended, update PINNED (see this file's docstring)"
