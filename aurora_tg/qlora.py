"""QLoRA's frozen base (Dettmers et al. 2023): every matrix of the model held in 4-bit NormalFloat (NF4) or int8, in
blocks of 64 weights that share one absmax scale, and dequantized where a step uses it. LoRA's adapters, trained
in float32 over it, see the quantized base; they still merge into the float base they came from (lora.py).

NF4's 16 levels are quantiles of a standard normal, so weights that are normally distributed use each level about
equally often. Biases and norms are small and stay float32."""
from statistics import NormalDist
import numpy as np
from tinygrad import Tensor, dtypes
from tinygrad.nn.state import get_state_dict
from aurora_tg.model import GPT, Linear, TiedEmbedding

KINDS = ("nf4", "int8")
BLOCK = 64  # weights per absmax scale, the paper's


def nf4_levels() -> np.ndarray:
  """The paper's construction: 8 positive and 7 negative quantiles of N(0, 1), between the quantile levels 1 - delta
  and 0.5 on each side, with 0 represented exactly, scaled to [-1, 1]. delta = 0.9677 as in the reference code."""
  ppf, top = NormalDist().inv_cdf, 0.9677083
  positive = [ppf(p) for p in np.linspace(top, 0.5, 9)[:-1]]
  negative = [-ppf(p) for p in np.linspace(top, 0.5, 8)[:-1]]
  levels = np.array(sorted(negative + [0.0] + positive))
  return (levels / np.abs(levels).max()).astype(np.float32)


NF4 = nf4_levels()


class QuantizedWeight:
  """A frozen matrix as codes and one float32 absmax per block of 64: NF4 codes packed two to a byte, or int8."""
  def __init__(self, weight: Tensor, kind: str):
    self.shape, self.kind = weight.shape, kind
    blocks = weight.float().reshape(-1, BLOCK)
    absmax = blocks.abs().max(-1, keepdim=True)
    self.absmax = (absmax > 0).where(absmax, 1.0).realize()  # an all-zero block stays zero whatever its scale
    scaled = blocks / self.absmax
    if kind == "int8": self.codes = (scaled * 127).round().cast(dtypes.int8).realize()
    else:  # the nearest level: how many of the midpoints between neighbouring levels lie below
      midpoints = (NF4[1:] + NF4[:-1]) / 2
      codes = sum((scaled > float(m)).cast(dtypes.uint8) for m in midpoints).reshape(-1, BLOCK // 2, 2)
      self.codes = (codes[..., 0] + codes[..., 1] * 16).cast(dtypes.uint8).realize()

  def dequantized(self) -> Tensor:
    """The float32 matrix the codes stand for, as elementwise work in the step that uses it (int8's fuses into the
    matmul; tinygrad 0.14 stores NF4's select chain between forward and backward: docs/finetuning.md)."""
    if self.kind == "int8": values = self.codes.cast(dtypes.float32) / 127
    else:
      codes = self.codes.cast(dtypes.int32)
      codes = Tensor.stack(codes % 16, codes // 16, dim=-1).reshape(self.codes.shape[0], BLOCK)
      values = Tensor.full(codes.shape, float(NF4[0]))
      for i in range(1, 16): values = (codes == i).where(float(NF4[i]), values)  # a chain of selects, no gather
    return (values * self.absmax).reshape(self.shape)

  def nbytes(self) -> int: return self.codes.nbytes() + self.absmax.nbytes()


class QuantizedLinear(Linear):
  def __init__(self, linear: Linear, kind: str):
    self.quantized, self.bias = QuantizedWeight(linear.weight, kind), linear.bias

  @property
  def weight(self) -> Tensor: return self.quantized.dequantized()


class QuantizedEmbedding(TiedEmbedding):
  """The tied embedding and LM head, frozen and quantized: rows gathered from the dequantized table."""
  def __init__(self, embedding: TiedEmbedding, kind: str):
    self.quantized = QuantizedWeight(embedding.weight, kind)

  @property
  def weight(self) -> Tensor: return self.quantized.dequantized()

  def __call__(self, idx: Tensor) -> Tensor: return self.weight[idx]


class QuantizedPositions:
  """The learned position table, frozen and quantized (the model reads its weight)."""
  def __init__(self, table, kind: str):
    self.quantized = QuantizedWeight(table.weight, kind)

  @property
  def weight(self) -> Tensor: return self.quantized.dequantized()


def quantizable(weight: Tensor) -> bool: return weight.numel() % BLOCK == 0


def quantize_base(model: GPT, kind: str) -> GPT:
  """Every matrix of the model (the blocks' projections, the tied embedding, the position table) quantized in place,
  for a frozen base. A matrix whose size is not a multiple of 64 (none of the presets') stays float32."""
  for block in model.h:
    for owner in (block.attn, block.mlp):
      for name, layer in vars(owner).items():
        if isinstance(layer, Linear) and quantizable(layer.weight): setattr(owner, name, QuantizedLinear(layer, kind))
  if quantizable(model.wte.weight): model.wte = QuantizedEmbedding(model.wte, kind)
  if model.wpe is not None and quantizable(model.wpe.weight): model.wpe = QuantizedPositions(model.wpe, kind)
  return model


def base_bytes(model: GPT) -> int:
  """Bytes the model's weights take, quantized or not (LoRA adapters aside)."""
  return sum(t.nbytes() for k, t in get_state_dict(model).items() if ".lora_" not in k)
