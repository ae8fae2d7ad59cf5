"""Quantized inference end to end: `python -m aurora_tg.export --quantize` writes a checkpoint that loads as it was
saved and chats; chat.py quantizes any checkpoint at load time; a bad --quantize value is one error line."""
import numpy as np
import pytest
from tinygrad import Tensor, dtypes
from tinygrad.nn.state import get_state_dict
from aurora_tg import checkpoint
from aurora_tg.export import main as export
from aurora_tg.quantize import quantize, weight_bytes
from aurora_tg.tokenizer import train_bpe
from conftest import sample_text
from test_chat import chat, make_model, save_run
from test_train_cli import assert_one_line_error


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  tokenizer = train_bpe([sample_text()], 300)
  return save_run(tmp_path_factory.mktemp("quantize") / "run", make_model(tokenizer), tokenizer, "sft"), tokenizer


@pytest.mark.parametrize("kind, bytes_ratio, logit_error", [("float16", 0.5, 1e-2), ("int8", 0.25, 0.1)])
def test_exported_quantized_checkpoint_loads_as_saved_and_chats(tmp_path, run, kind, bytes_ratio, logit_error):
  folder, tokenizer = run
  assert export([str(folder), str(tmp_path / kind), "--quantize", kind]) == 0
  loaded, _, record = checkpoint.load_model(tmp_path / kind)
  in_memory, _, _ = checkpoint.load_model(folder, kind)
  original, _, _ = checkpoint.load_model(folder)
  assert record.quantized == kind and loaded.h[0].attn.c_attn.weight.dtype == (dtypes.int8 if kind == "int8" else dtypes.float16)
  for name, t in get_state_dict(in_memory).items(): np.testing.assert_array_equal(get_state_dict(loaded)[name].numpy(), t.numpy(), err_msg=name)
  # the matrices shrink to about their share; norms, biases and positions stay float32
  assert weight_bytes(loaded) < weight_bytes(original) * (bytes_ratio + 0.1)
  ids = Tensor([tokenizer.encode("the cat sat on the mat")])
  exact, approx = original(ids).numpy(), loaded(ids).numpy()
  assert 0 < np.abs(approx - exact).max() < logit_error * np.abs(exact).max()
  greedy = ["--complete", "the cat", "--temperature", "0", "--max-tokens", "8"]
  saved, at_load = chat("--checkpoint", tmp_path / kind, *greedy), chat("--checkpoint", folder, "--quantize", kind, *greedy)
  assert saved.returncode == 0 and saved.stdout == at_load.stdout and saved.stdout.startswith("the cat"), saved.stderr


def test_bad_quantize_values_are_one_error_line(tmp_path, run):
  folder, _ = run
  assert_one_line_error(chat("--checkpoint", folder, "--quantize", "int4", "-p", "hi"), "--quantize must be one of float16, int8")
  assert export([str(folder), str(tmp_path / "q"), "--quantize", "int8"]) == 0
  assert_one_line_error(chat("--checkpoint", tmp_path / "q", "--quantize", "float16", "-p", "hi"), "already quantized to int8")


def test_quantize_refuses_an_unknown_kind(run):
  folder, _ = run
  model, _, _ = checkpoint.load_model(folder)
  with pytest.raises(Exception, match="float16, int8"): quantize(model, "int3")


@pytest.mark.parametrize("kind", [None, "float16", "int8"])
def test_a_head_padded_for_decoding_gives_the_vocabularys_logits(run, kind):
  """chat.py pads the LM head's rows to a multiple of 64; the model's logits keep the vocabulary's width and values."""
  folder, tokenizer = run
  model, _, _ = checkpoint.load_model(folder, kind)
  ids = Tensor([tokenizer.encode("the cat sat on the mat")])
  before = model(ids).numpy()
  assert before.shape[-1] == model.cfg.vocab_size and model.cfg.vocab_size % 64  # padding has rows to add
  model.wte.pad_rows()
  assert model.wte.weight.shape[0] % 64 == 0
  after = model(ids).numpy()
  assert after.shape == before.shape
  np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5 * np.abs(before).max())
