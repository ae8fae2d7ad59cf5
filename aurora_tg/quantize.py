"""Weight-only quantization for inference. Decoding reads every weight once per token, so its speed is set by the
bytes a weight takes: float16 halves them, int8 quarters them. Activations, norms and the KV cache stay float32.

int8 keeps one float32 scale per output channel (a row of the weight: the largest |w| of the row maps to 127). The
matmul reads the int8 weights and converts them as it loads them, and the scale multiplies each output afterwards,
so no dequantized copy of a weight is ever written."""
from tinygrad import Tensor, dtypes, nn
from aurora_tg import UserError
from aurora_tg.model import GPT, Linear, TiedEmbedding

KINDS = ("float16", "int8")


def int8_rows(weight: Tensor) -> tuple[Tensor, Tensor]:
  """(int8 weight, float32 scale per row) with weight ~ int8 * scale: rounded to nearest, the error at most scale/2."""
  scale = weight.abs().max(-1) / 127
  scale = (scale > 0).where(scale, 1.0)  # an all-zero row stays zero whatever its scale
  return (weight / scale.unsqueeze(-1)).round().clip(-127, 127).cast(dtypes.int8).realize(), scale.realize()


class Int8Linear:
  """Linear with int8 weights and a scale per output channel."""
  def __init__(self, linear: Linear):
    self.weight, self.scale = int8_rows(linear.weight)
    self.bias = linear.bias

  def __call__(self, x: Tensor) -> Tensor:
    y = x.linear(self.weight.cast(x.dtype).T) * self.scale.cast(x.dtype)
    return y if self.bias is None else y + self.bias.cast(x.dtype)


class Int8Embedding:
  """The tied embedding and LM head with int8 rows: a row is a token's embedding and its output channel alike."""
  def __init__(self, embedding: TiedEmbedding):
    self.weight, self.scale = int8_rows(embedding.weight)

  def pad_rows(self, multiple: int = 64):  # as TiedEmbedding.pad_rows: zero rows, with zero scales
    rows = -self.weight.shape[0] % multiple
    self.weight = self.weight.pad(((0, rows), (0, 0))).contiguous().realize()
    self.scale = self.scale.pad(((0, rows),)).contiguous().realize()

  def __call__(self, idx: Tensor) -> Tensor:  # gathered from the table scaled lazily: no kernel of its own
    return (self.weight.cast(dtypes.float32) * self.scale.unsqueeze(-1))[idx]

  def project(self, x: Tensor) -> Tensor:
    return (x @ self.weight.cast(x.dtype).T) * self.scale.cast(x.dtype)


class Float16Embedding(TiedEmbedding):
  """The tied embedding and LM head with float16 rows."""
  def __init__(self, embedding: TiedEmbedding):
    self.weight = embedding.weight.cast(dtypes.float16).contiguous().realize()

  def __call__(self, idx: Tensor) -> Tensor:
    # gathered from the table cast lazily to float32: tinygrad 0.14 on CL miscompiles the float16 gather (a float16
    # sum) from a table whose row count splits evenly, such as 32,768 tokens or GPT-2's padded 50,304
    return self.weight.cast(dtypes.float32)[idx]


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
  model.wte = Int8Embedding(model.wte) if kind == "int8" else Float16Embedding(model.wte)
  return model


def weight_bytes(model: GPT) -> int:
  """Bytes of all the model's tensors: what one decoded token reads, the KV cache aside."""
  return sum(t.nbytes() for t in nn.state.get_parameters(model))
