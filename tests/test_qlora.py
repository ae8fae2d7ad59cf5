"""QLoRA's quantized base: NF4's levels, blockwise codes and the dequantized matmul against numpy."""
from statistics import NormalDist
import numpy as np
import pytest
from tinygrad import Context, Tensor
from tinygrad.nn.state import get_state_dict
from aurora_tg import lora, qlora
from aurora_tg.model import GPT, GPTConfig, PRESETS
from aurora_tg.optim import adamw

# NF4 as bitsandbytes publishes it (functional.py, the table QLoRA's kernels use)
PUBLISHED_NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                 -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                 0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0]


def test_nf4_levels_are_the_papers_normal_quantiles():
  np.testing.assert_allclose(qlora.NF4, PUBLISHED_NF4, atol=2e-7)
  # what the levels are for: each takes about as many normal weights as the others (within the two tails' halves)
  x = np.random.default_rng(0).standard_normal(200_000)
  codes = np.abs(x[:, None] / NormalDist().inv_cdf(0.9677083) - qlora.NF4).argmin(-1)
  shares = np.bincount(codes, minlength=16) / len(x)
  assert shares[1:-1].min() > 0.04 and shares[1:-1].max() < 0.10, shares


def numpy_quantize(w: np.ndarray, kind: str) -> np.ndarray:
  """The QLoRA paper's blockwise quantization in numpy: each block of 64 over its absmax, then the nearest level
  (NF4's published table, or int8's 255 steps), scaled back."""
  blocks = w.reshape(-1, 64).astype(np.float64)
  absmax = np.abs(blocks).max(-1, keepdims=True)
  absmax[absmax == 0] = 1
  scaled = blocks / absmax
  if kind == "int8": return (np.round(scaled * 127) / 127 * absmax).reshape(w.shape)
  levels = np.array(PUBLISHED_NF4)
  return (levels[np.abs(scaled[..., None] - levels).argmin(-1)] * absmax).reshape(w.shape)


@pytest.mark.parametrize("kind", qlora.KINDS)
def test_blockwise_codes_and_the_dequantized_matmul_match_numpy_within_their_bound(kind):
  rng = np.random.default_rng(1)
  w = (rng.standard_normal((48, 128)) * 0.05).astype(np.float32)
  w[3, :64] = 0  # an all-zero block stays zero
  q = qlora.QuantizedWeight(Tensor(w), kind)
  got = q.dequantized().numpy()
  np.testing.assert_allclose(got, numpy_quantize(w, kind), atol=1e-6)
  assert not got[3, :64].any()
  # the rounding error of a weight is at most half the widest gap between levels times its block's absmax
  absmax = np.repeat(np.abs(w.reshape(-1, 64)).max(-1), 64).reshape(w.shape)
  half_gap = (np.diff(qlora.NF4).max() if kind == "nf4" else 1 / 127) / 2
  assert (np.abs(got - w) <= absmax * half_gap + 1e-7).all()
  # so the matmul through the dequantized weight is off by at most sum_j |x_j| * that bound
  x = rng.standard_normal((5, 128)).astype(np.float32)
  y = qlora.QuantizedLinear.__new__(qlora.QuantizedLinear)
  y.quantized, y.bias = q, None
  out = y(Tensor(x)).numpy()
  assert (np.abs(out - x @ w.T) <= np.abs(x) @ (absmax * half_gap).T + 1e-5).all()
  assert np.abs(out - x @ w.T).max() > 0  # it is quantized
  bits = q.nbytes() * 8 / w.size
  assert bits == pytest.approx((4 if kind == "nf4" else 8) + 32 / 64)


def test_an_nf4_base_takes_under_015x_its_float_bytes_and_lora_trains_over_it():
  Tensor.manual_seed(0)
  model = GPT(GPTConfig(**{**PRESETS["small"], "block_size": 16}))  # the default model's widths, where biases weigh most
  float_bytes = qlora.base_bytes(model)
  # the same model with every matrix rounded in numpy: what the quantized base must compute
  rounded = GPT(model.cfg)
  for name, t in get_state_dict(rounded).items():
    w = get_state_dict(model)[name].numpy()
    t.assign(Tensor(numpy_quantize(w, "nf4").astype(np.float32) if w.ndim == 2 else w)).realize()
  qlora.quantize_base(model, "nf4")
  assert qlora.base_bytes(model) <= 0.15 * float_bytes, qlora.base_bytes(model) / float_bytes
  quantized_logits = model(Tensor([[1, 2, 3, 4]])).numpy()
  np.testing.assert_allclose(quantized_logits, rounded(Tensor([[1, 2, 3, 4]])).numpy(), atol=1e-4)
  adapters = lora.add_adapters(model, lora.LoRAConfig(rank=2, alpha=4))
  np.testing.assert_allclose(model(Tensor([[1, 2, 3, 4]])).numpy(), quantized_logits, atol=1e-6)  # B = 0
  codes = {k: v.numpy().copy() for k, v in get_state_dict(model).items() if k.endswith(".codes")}
  opt = adamw(adapters, 1e-2, 0.0)
  with Context(TRAINING=1):
    for _ in range(3):
      opt.zero_grad()
      model.loss(Tensor([[1, 2, 3, 4]]), Tensor([[2, 3, 4, 5]])).backward()
      opt.step()
  assert all(np.array_equal(get_state_dict(model)[k].numpy(), v) for k, v in codes.items())  # the base stays frozen
  assert np.abs(model(Tensor([[1, 2, 3, 4]])).numpy() - quantized_logits).max() > 1e-4  # the adapters learned
  adapted = model(Tensor([[1, 2, 3, 4]])).numpy()
  lora.merge_adapters(model)  # into the float weights the codes stand for: the same logits
  np.testing.assert_allclose(model(Tensor([[1, 2, 3, 4]])).numpy(), adapted, atol=1e-4)
