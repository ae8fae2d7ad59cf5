"""Weight-only quantization for inference. Decoding reads every weight once per token, so its speed is set by the
bytes a weight takes: float16 halves them, int8 quarters them. Activations, norms and the KV cache stay float32.

int8 keeps a float32 scale per group of GROUP consecutive inputs of an output channel, as llama.cpp's q8_0 does:
the largest |w| of the group maps to 127, so one outlying weight coarsens the steps of its group, not of its whole
row. The matmul reads the int8 weights and their scales and multiplies them as it loads them, so no dequantized copy
of a weight is ever written."""
import math
from tinygrad import Tensor, dtypes, nn
from aurora_tg import UserError
from aurora_tg.model import GPT, Linear, TiedEmbedding

KINDS = ("float16", "int8")


GROUP = 32


def group_size(width: int) -> int:
  """Inputs per scale for a row of this width: GROUP, or the largest power of two of at least 8 dividing the width
  (SwiGLU's hidden widths are multiples of 16), else the whole row."""
  group = math.gcd(width, GROUP)
  return group if group >= 8 else width


def int8_groups(weight: Tensor) -> tuple[Tensor, Tensor]:
  """(int8 weight (rows, width), float32 scales (rows, width / group)) with weight ~ int8 * its group's scale: rounded
  to nearest, the error at most half a scale."""
  rows, width = weight.shape
  groups = weight.reshape(rows, -1, group_size(width))
  scale = groups.abs().max(-1) / 127
  scale = (scale > 0).where(scale, 1.0)  # an all-zero group stays zero whatever its scale
  codes = (groups / scale.unsqueeze(-1)).round().clip(-127, 127).cast(dtypes.int8).reshape(rows, width)
  return codes.realize(), scale.realize()


def dequantized(codes: Tensor, scale: Tensor, dtype=dtypes.float32) -> Tensor:
  """codes * their groups' scales, lazily: used inside a matmul, it is computed as the weights load."""
  rows, width = codes.shape
  return (codes.cast(dtype).reshape(rows, scale.shape[-1], -1) * scale.cast(dtype).unsqueeze(-1)).reshape(rows, width)


class Int8Linear:
  """Linear with int8 weights and a scale per group of inputs of each output channel."""
  def __init__(self, linear: Linear):
    self.weight, self.scale = int8_groups(linear.weight)
    self.bias = linear.bias

  def __call__(self, x: Tensor) -> Tensor:
    return x.linear(dequantized(self.weight, self.scale, x.dtype).T, None if self.bias is None else self.bias.cast(x.dtype))


class Int8Embedding:
  """The tied embedding and LM head with int8 rows: a row is a token's embedding and its output channel alike."""
  def __init__(self, embedding: TiedEmbedding):
    self.weight, self.scale = int8_groups(embedding.weight)

  def __call__(self, idx: Tensor) -> Tensor:
    return dequantized(self.weight, self.scale)[idx]

  def project(self, x: Tensor) -> Tensor:
    return x @ dequantized(self.weight, self.scale, x.dtype).T


def quantize(model: GPT, kind: str) -> GPT:
  """Quantize the model's matrices (every Linear and the tied embedding) in place; biases, norms and the position
  embedding are small and stay float32."""
  if kind not in KINDS: raise UserError(f"--quantize must be one of {', '.join(KINDS)}, got {kind!r}")
  for block in model.h:
    for owner in (block.attn, block.mlp):
      for name, layer in vars(owner).items():
        if not isinstance(layer, Linear): continue
        if kind == "int8": setattr(owner, name, Int8Linear(layer))
        else: layer.weight = layer.weight.cast(dtypes.float16).contiguous().realize()
  if kind == "int8": model.wte = Int8Embedding(model.wte)
  else: model.wte.weight = model.wte.weight.cast(dtypes.float16).contiguous().realize()
  return model


def weight_bytes(model: GPT) -> int:
  """Bytes of all the model's tensors: what one decoded token reads, the KV cache aside."""
  return sum(t.nbytes() for t in nn.state.get_parameters(model))
