"""Weight-only quantization for inference. Decoding reads every weight once per token, so its speed is set by the
bytes a weight takes: float16 halves them, int8 quarters them. Activations, norms and the KV cache stay float32.

int8 keeps one float32 scale per output channel (a row of the weight: the largest |w| of the row maps to 127). The
matmul reads the int8 weights and converts them as it loads them, and the scale multiplies each output afterwards,
so no dequantized copy of a weight is ever written.

int8 weights round to nearest by default. Given calibration text, they round as GPTQ does instead (calibrated_codes):
the same format and speed, with the rounding errors steered away from the directions the layer's inputs use.
"""
import time
import numpy as np
from tinygrad import Tensor, dtypes, nn
from aurora_tg import UserError
from aurora_tg.model import GPT, Linear, TiedEmbedding

KINDS = ("float16", "int8")


def check_kind(kind: str):
  if kind not in KINDS: raise UserError(f"--quantize must be one of {', '.join(KINDS)}, got {kind!r}")


def int8_rows(weight: Tensor, moment: np.ndarray | None = None) -> tuple[Tensor, Tensor]:
  """(int8 weight, float32 scale per row) with weight ~ int8 * scale: rounded to nearest, the error at most scale/2,
  or, given the second moment of the layer's input (input_moments), rounded by calibrated_codes."""
  scale = weight.abs().max(-1) / 127
  scale = (scale > 0).where(scale, 1.0)  # an all-zero row stays zero whatever its scale
  if moment is not None:
    codes = calibrated_codes(weight.numpy(), scale.numpy(), moment)
    return Tensor(codes, device=weight.device).realize(), scale.realize()
  return (weight / scale.unsqueeze(-1)).round().clip(-127, 127).cast(dtypes.int8).realize(), scale.realize()


def calibrated_codes(weight: np.ndarray, scale: np.ndarray, moment: np.ndarray, damping: float = 0.01, block: int = 128) -> np.ndarray:
  """int8 codes for weight (outputs x inputs) at the given row scales, chosen to keep the layer's outputs rather than its
  weights close: GPTQ (Frantar et al., 2022). Input columns round one at a time, in order, and each rounding error is
  spread over the columns not yet rounded along the inverse of the inputs' second moment E[x x^T], so that the
  next roundings cancel what the inputs would see of it. Columns go in their own order: GPTQ's option of taking
  the most active inputs first gave the default chat model larger logit errors (README). Written in numpy: it is
  a column-by-column loop, which in tinygrad would be a few tiny kernels per column; it runs once, at export."""
  H = moment.astype(np.float64)  # a copy: damped in place below
  dead = np.diag(H) == 0
  # GPTQ's damping keeps the inverse well conditioned; its size follows the live inputs alone, and an input that is
  # always zero gets a diagonal of its own, so its column rounds to nearest and passes no error on
  live = np.diag(H)[~dead]
  H[np.diag_indices_from(H)] += damping * (live.mean() if live.size else 1.0)
  H[dead, dead] = 1
  inverse_factor = np.linalg.cholesky(np.linalg.inv(H)).T  # upper triangular U with U^T U = H^-1
  W, n = weight.astype(np.float64), weight.shape[1]
  codes = np.empty(weight.shape, np.int8)
  for start in range(0, n, block):  # a block's errors reach the later columns in one matrix product
    end = min(start + block, n)
    U, errors = inverse_factor[start:end, start:end], np.empty((W.shape[0], end - start))
    for i in range(end - start):
      column = W[:, start + i]
      code = np.clip(np.round(column / scale), -127, 127)
      codes[:, start + i] = code
      errors[:, i] = (column - code * scale) / U[i, i]
      W[:, start + i:end] -= np.outer(errors[:, i], U[i, i:])
    W[:, end:] -= errors @ inverse_factor[start:end, end:]
  return codes


class _Recorder:
  """Stands in for a matrix's call while the model runs the calibration text: adds x^T x of its input to a sum."""
  def __init__(self, call):
    self.call, self.sum, self.count = call, 0.0, 0

  def __call__(self, x: Tensor) -> Tensor:
    # x^T x in numpy's BLAS: for GPT-2's 3,072-wide MLP inputs it costs as much as the layer, and tinygrad's
    # unsearched matmul kernels are several times slower on a CPU
    rows = x.reshape(-1, x.shape[-1]).float().numpy()
    self.sum, self.count = self.sum + (rows.T @ rows).astype(np.float64), self.count + len(rows)
    return self.call(x)


def input_moments(model: GPT, windows: list[list[int]], batch_tokens: int = 2048, log=print) -> dict:
  """E[x x^T] of the input of each matrix the float model multiplies by, over token windows of one length: a dict
  from each Linear, and from the tied embedding for its LM head, to its (inputs x inputs) moment."""
  linears = [(owner, name, layer) for block in model.h for owner in (block.attn, block.mlp)
             for name, layer in vars(owner).items() if isinstance(layer, Linear)]
  recorders = {layer: _Recorder(layer) for _, _, layer in linears}
  recorders[model.wte] = _Recorder(model.wte.project)
  started, batch_size = time.perf_counter(), max(1, batch_tokens // len(windows[0]))
  try:
    for owner, name, layer in linears: setattr(owner, name, recorders[layer])
    model.wte.project = recorders[model.wte]  # an instance attribute over the method, deleted after
    for first in range(0, len(windows), batch_size):
      model(Tensor(windows[first:first + batch_size], device=model.wte.weight.device))  # the recorders realize what they need
      done, elapsed = min(first + batch_size, len(windows)), time.perf_counter() - started
      log(f"calibrating int8: {done}/{len(windows)} windows of {len(windows[0])} tokens | "
          f"{done * len(windows[0]) / elapsed:,.0f} tokens/s | {elapsed / done * (len(windows) - done):.0f}s left")
  finally:
    for owner, name, layer in linears: setattr(owner, name, layer)
    vars(model.wte).pop("project", None)
  return {layer: r.sum / r.count for layer, r in recorders.items()}


class Int8Linear:
  """Linear with int8 weights and a scale per output channel."""
  def __init__(self, linear: Linear, moment: np.ndarray | None = None):
    self.weight, self.scale = int8_rows(linear.weight, moment)
    self.bias = linear.bias

  def __call__(self, x: Tensor) -> Tensor:
    y = x.linear(self.weight.cast(x.dtype).T) * self.scale.cast(x.dtype)
    return y if self.bias is None else y + self.bias.cast(x.dtype)


class Int8Embedding:
  """The tied embedding and LM head with int8 rows: a row is a token's embedding and its output channel alike."""
  def __init__(self, embedding: TiedEmbedding, moment: np.ndarray | None = None):
    self.weight, self.scale = int8_rows(embedding.weight, moment)

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


def quantize(model: GPT, kind: str, calibration: list[list[int]] | None = None, log=print) -> GPT:
  """Quantize the model's matrices (every Linear and the tied embedding) in place; biases, norms and the position
  embedding are small and stay float32. calibration (int8 only): token windows of one length, whose activations
  choose the int8 rounding (calibrated_codes); without it, weights round to nearest."""
  check_kind(kind)
  if calibration and kind != "int8": raise UserError(f"calibration is for int8 weights; {kind} rounds to nearest")
  moments = input_moments(model, calibration, log=log) if calibration else {}
  for i, block in enumerate(model.h):
    for owner in (block.attn, block.mlp):
      for name, layer in vars(owner).items():
        if not isinstance(layer, Linear): continue
        if kind == "int8": setattr(owner, name, Int8Linear(layer, moments.get(layer)))
        else: layer.weight = layer.weight.cast(dtypes.float16).contiguous().realize()
    if moments: log(f"calibrated rounding: layer {i + 1}/{len(model.h)}")
  model.wte = Int8Embedding(model.wte, moments.get(model.wte)) if kind == "int8" else Float16Embedding(model.wte)
  if moments: log("calibrated rounding: the tied embedding and LM head")
  return model


def weight_bytes(model: GPT) -> int:
  """Bytes of all the model's tensors: what one decoded token reads, the KV cache aside."""
  return sum(t.nbytes() for t in nn.state.get_parameters(model))
