"""Quantized inference end to end: `python -m aurora_tg.export --quantize` writes a checkpoint that loads as it was
saved and chats; chat.py quantizes any checkpoint at load time; a bad --quantize value is one error line. The
calibrated int8 rounding (GPTQ) against the paper's own formulation of it, and the activations it is calibrated on
against numpy."""
import numpy as np
import pytest
from tinygrad import Tensor, dtypes
from tinygrad.nn.state import get_state_dict
from aurora_tg.formats import checkpoint
from aurora_tg.inference import loading
from aurora_tg.cli.export import calibration_windows, main as export
from aurora_tg.inference.quantize import calibrated_codes, input_moments, quantize, weight_bytes
from aurora_tg.data.tokenizer import train_bpe
from conftest import run_main, sample_text
from test_chat import chat, make_model, save_run
from test_train import assert_one_line_error


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  tokenizer = train_bpe([sample_text()], 300)
  return save_run(tmp_path_factory.mktemp("quantize") / "run", make_model(tokenizer), tokenizer, "sft"), tokenizer


@pytest.mark.parametrize("kind, bytes_ratio, logit_error", [("float16", 0.5, 1e-2), ("int8", 0.25, 0.1)])
def test_exported_quantized_checkpoint_loads_as_saved_and_chats(tmp_path, run, kind, bytes_ratio, logit_error):
  folder, tokenizer = run
  assert export([str(folder), str(tmp_path / kind), "--quantize", kind]) == 0
  loaded, _, record = loading.load_model(tmp_path / kind)
  in_memory, _, _ = loading.load_model(folder, kind)
  original, _, _ = loading.load_model(folder)
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


def output_error(weight: np.ndarray, approx: np.ndarray, moment: np.ndarray) -> float:
  """E|x (W - Q)^T|^2 over inputs with second moment E[x x^T]: what GPTQ minimises."""
  diff = weight - approx
  return float(np.einsum("oi,ij,oj->", diff, moment, diff))


def nearest_codes(weight: np.ndarray, scale: np.ndarray) -> np.ndarray:
  return np.clip(np.round(weight / scale[:, None]), -127, 127)


def gptq_reference(weight: np.ndarray, scale: np.ndarray, moment: np.ndarray, damping: float = 0.01) -> np.ndarray:
  """GPTQ as the paper first states it (Optimal Brain Quantization, columns in order): after a column rounds, the
  weights left move by -error / [H^-1]_qq times row q of H^-1, and H^-1 loses that column by one elimination step.
  No Cholesky factor and no blocks, unlike the implementation."""
  H = moment + damping * np.mean(np.diag(moment)) * np.eye(len(moment))
  inverse, W = np.linalg.inv(H), weight.astype(np.float64).copy()
  codes = np.zeros(W.shape)
  for q in range(W.shape[1]):
    codes[:, q] = np.clip(np.round(W[:, q] / scale), -127, 127)
    error = (W[:, q] - codes[:, q] * scale) / inverse[q, q]
    W -= np.outer(error, inverse[q])
    inverse -= np.outer(inverse[:, q], inverse[q]) / inverse[q, q]
  return codes


def correlated_layer(seed: int, n_out: int, n_in: int):
  """A weight and the second moment of inputs whose features correlate, as a trained model's activations do."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(4 * n_in, n_in)) @ rng.normal(size=(n_in, n_in)) + rng.normal(size=n_in)
  weight = rng.normal(size=(n_out, n_in)) * 0.1
  return weight, np.abs(weight).max(1) / 127, x.T @ x / len(x)


@pytest.mark.parametrize("seed, n_out, n_in, block", [(0, 16, 24, 128), (1, 33, 40, 8), (2, 7, 50, 16)])
def test_calibrated_codes_are_gptqs(seed, n_out, n_in, block):
  """Equal to the paper's formulation whatever the block size (blocks smaller than the input carry errors across);
  and the point of it: a smaller output error over the calibration inputs than rounding to nearest."""
  weight, scale, moment = correlated_layer(seed, n_out, n_in)
  codes = calibrated_codes(weight, scale, moment, block=block)
  assert codes.dtype == np.int8
  np.testing.assert_array_equal(codes, gptq_reference(weight, scale, moment))
  calibrated = output_error(weight, codes * scale[:, None], moment)
  assert calibrated < 0.8 * output_error(weight, nearest_codes(weight, scale) * scale[:, None], moment)


def test_calibrated_codes_round_to_nearest_for_uncorrelated_inputs():
  """With E[x x^T] diagonal, an error in one input cannot be cancelled by another: GPTQ is rounding to nearest."""
  weight, scale, _ = correlated_layer(3, 12, 20)
  moment = np.diag(np.random.default_rng(3).uniform(0.5, 2, 20))
  np.testing.assert_array_equal(calibrated_codes(weight, scale, moment), nearest_codes(weight, scale))


def test_an_input_that_is_always_zero_changes_nothing_else():
  """A dead input (a zero row and column of the moment) rounds to nearest, and the live inputs' codes are those of the
  layer without it: it neither takes errors nor dilutes the damping. An all-zero moment rounds everything to nearest."""
  weight, scale, moment = correlated_layer(4, 10, 30)
  dead = np.zeros(30, bool)
  dead[[3, 17, 18]] = True
  moment[dead], moment[:, dead] = 0, 0
  codes = calibrated_codes(weight, scale, moment, block=8)
  np.testing.assert_array_equal(codes[:, dead], nearest_codes(weight, scale)[:, dead])
  np.testing.assert_array_equal(codes[:, ~dead], calibrated_codes(weight[:, ~dead], scale, moment[~dead][:, ~dead], block=8))
  np.testing.assert_array_equal(calibrated_codes(weight, scale, np.zeros_like(moment)), nearest_codes(weight, scale))


def test_input_moments_are_the_layers_inputs(run):
  """The first attention matrix's input is ln_1 of the embeddings, computed here in numpy; the LM head's moment M
  gives the logits' own: mean of logits^T logits = E M E^T for the tied table E. The model is restored after."""
  folder, tokenizer = run
  model, _, _ = loading.load_model(folder)
  windows = [tokenizer.encode("the cat sat on the mat and the dog sat on the log")[:8], list(range(8))]
  moments = input_moments(model, windows, batch_tokens=8, log=lambda *_: None)
  sd = {k: v.numpy().astype(np.float64) for k, v in get_state_dict(model).items()}
  x = sd["wte.weight"][np.array(windows)] + sd["wpe.weight"][:8]
  x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * sd["h.0.ln_1.weight"] + sd["h.0.ln_1.bias"]
  x = x.reshape(-1, x.shape[-1])
  np.testing.assert_allclose(moments[model.h[0].attn.c_attn], x.T @ x / len(x), rtol=1e-4, atol=1e-4)
  assert type(model.h[0].attn.c_attn).__name__ == "Linear" and "project" not in vars(model.wte)
  logits = model(Tensor(windows)).numpy().reshape(-1, model.cfg.vocab_size).astype(np.float64)
  table = sd["wte.weight"]
  expected = table @ moments[model.wte] @ table.T
  np.testing.assert_allclose(logits.T @ logits / len(logits), expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())


def test_calibrated_export_is_gptq_on_the_calibration_text(tmp_path, run):
  """`export --quantize int8 --calibrate --calibration-data TEXT` writes the codes quantize() calibrates on windows
  spread over TEXT, with the scales and format of rounding to nearest (so the same speed) but other codes; it loads
  and chats."""
  folder, tokenizer = run
  text = tmp_path / "calibration.txt"
  text.write_text(sample_text() * 4)
  assert export([str(folder), str(tmp_path / "calibrated"), "--quantize", "int8", "--calibrate", "--calibration-data", str(text),
                 "--calibration-tokens", "1024"]) == 0
  exported, _, record = loading.load_model(tmp_path / "calibrated")
  original, _, _ = loading.load_model(folder)
  windows = calibration_windows(str(text), tokenizer, original.cfg.block_size, 1024)
  assert record.quantized == "int8" and len(windows) == 1024 // original.cfg.block_size
  assert {len(w) for w in windows} == {original.cfg.block_size}  # of the text's tokens and the documents' ends:
  assert set(np.concatenate(windows)) <= set(tokenizer.encode(sample_text() * 4)) | {tokenizer.eot}
  in_memory = quantize(original, "int8", windows, log=lambda *_: None)
  nearest, _, _ = loading.load_model(folder, "int8")
  e, m, n = get_state_dict(exported), get_state_dict(in_memory), get_state_dict(nearest)
  for name in e:
    np.testing.assert_array_equal(e[name].numpy(), m[name].numpy(), err_msg=name)
    if name.endswith("scale"): np.testing.assert_array_equal(e[name].numpy(), n[name].numpy(), err_msg=name)
  assert all((e[name].numpy() != n[name].numpy()).any() for name in e if e[name].dtype == dtypes.int8)
  answer = chat("--checkpoint", tmp_path / "calibrated", "--complete", "the cat", "--temperature", "0", "--max-tokens", "8")
  assert answer.returncode == 0 and answer.stdout.startswith("the cat"), answer.stderr


def test_bad_quantize_values_are_one_error_line(tmp_path, run):
  folder, _ = run
  assert_one_line_error(chat("--checkpoint", folder, "--quantize", "int4", "-p", "hi"), "--quantize must be one of float16, int8")
  assert export([str(folder), str(tmp_path / "q"), "--quantize", "int8"]) == 0
  assert_one_line_error(chat("--checkpoint", tmp_path / "q", "--quantize", "float16", "-p", "hi"), "already quantized to int8")
  short = tmp_path / "short.txt"
  short.write_text("too short to hold a window")
  for flags, message in ((["--quantize", "int4"], "--quantize must be one of float16, int8"),
                         (["--quantize", "float16", "--calibrate"], "--calibrate is for --quantize int8"),
                         (["--quantize", "int8", "--calibrate", "--calibration-tokens", "0"], "must be positive"),
                         (["--quantize", "int8", "--calibration-data", str(short)], "go with --calibrate"),
                         (["--quantize", "int8", "--calibrate", "--calibration-data", str(short)], "no training window")):
    assert_one_line_error(run_main(export, [str(folder), str(tmp_path / "r"), *flags], "", tmp_path), message)


def test_quantize_refuses_an_unknown_kind(run):
  folder, _ = run
  model, _, _ = loading.load_model(folder)
  with pytest.raises(Exception, match="float16, int8"): quantize(model, "int3")


@pytest.mark.parametrize("kind", [None, "float16", "int8"])
def test_a_head_padded_for_decoding_gives_the_vocabularys_logits(run, kind):
  """chat.py pads the LM head's rows to a multiple of 64; the model's logits keep the vocabulary's values and are -inf
  past it, so that no sampler picks a padding row."""
  folder, tokenizer = run
  model, _, _ = loading.load_model(folder, kind)
  ids = Tensor([tokenizer.encode("the cat sat on the mat")])
  before = model(ids).numpy()
  assert before.shape[-1] == model.cfg.vocab_size and model.cfg.vocab_size % 64  # padding has rows to add
  model.wte.pad_rows()
  assert model.wte.weight.shape[0] % 64 == 0
  after = model(ids).numpy()
  assert after.shape == (*before.shape[:-1], model.head_rows) and model.head_rows == model.wte.weight.shape[0]
  np.testing.assert_allclose(after[..., :model.cfg.vocab_size], before, rtol=1e-5, atol=1e-5 * np.abs(before).max())
  assert np.isneginf(after[..., model.cfg.vocab_size:]).all()
