"""Choosing the next token on the device: repetition penalty, temperature, top-k and top-p run inside a jitted step
over a batch of rows (one per conversation), and only the chosen token ids go back to the host.

Without sorting: top-k and top-p keep every token whose probability reaches a threshold, and the threshold is found by
a search over float32 bit patterns (for non-negative floats their order as integers is their order as numbers), which
takes a fixed number of reductions whatever the vocabulary. tinygrad's sort is a bitonic network of hundreds of
kernels at GPT-2's vocabulary. The draw itself is the Gumbel-max trick: the argmax of log-probabilities plus Gumbel
noise is a sample of their softmax, so no cumulative sum is needed either."""
from dataclasses import dataclass
import numpy as np
from tinygrad import Tensor, dtypes


@dataclass(frozen=True)
class Sampling:
  temperature: float = 0.8      # 0 means greedy
  top_k: int = 0                # 0 keeps every token
  top_p: float = 1.0            # nucleus: the smallest set whose probability reaches top_p
  repetition_penalty: float = 1.0
  max_tokens: int = 256
  seed: int | None = 0          # None draws a fresh seed

  @property
  def mode(self) -> str:
    """Which compiled sampler serves it: the cheaper ones skip work the settings do not need."""
    if self.temperature == 0: return "greedy"
    return "filter" if self.top_k > 0 or self.top_p < 1 else "sample"

  def row(self) -> list[float]:
    """The settings as one row of the sampler's parameter table."""
    return [self.temperature, self.top_k, self.top_p, self.repetition_penalty]


MODES = ("greedy", "sample", "filter")
SEARCH_WAYS = 16       # candidate thresholds tried per round of the threshold search
SEARCH_ROUNDS = 8      # 16**8 = 2**32 candidates: every bit pattern of a float32 in [0, 1]
ONE_BITS = 0x3F800000  # 1.0's bit pattern, the largest probability relative to the most likely token


def largest_threshold(bits: Tensor, weight: Tensor, target: Tensor) -> Tensor:
  """Per row, the largest integer t with sum(weight[bits >= t]) >= target (target > 0, weight >= 0): each round
  narrows [lo, hi) to one of SEARCH_WAYS equal parts by testing them all in one reduction. (B, V), (B, V), (B, 1) -> (B, 1)."""
  lo = Tensor.zeros(bits.shape[0], 1, dtype=dtypes.int32, device=bits.device)
  hi = lo + (ONE_BITS + 1)  # nothing reaches it, so its sum is 0 < target
  ways = Tensor.arange(1, SEARCH_WAYS, dtype=dtypes.int32).to(bits.device)
  for _ in range(SEARCH_ROUNDS):
    step = (hi - lo + SEARCH_WAYS - 1) // SEARCH_WAYS
    candidates = lo + step * ways
    mass = (bits.unsqueeze(1) >= candidates.unsqueeze(2)).where(weight.unsqueeze(1), 0).sum(-1)
    passed = (mass >= target).cast(dtypes.int32).sum(-1, keepdim=True)  # the sum falls as t grows: a prefix passes
    lo = lo + step * passed
    hi = (lo + step).minimum(hi)
  return lo


def penalized(logits: Tensor, seen: Tensor, penalty: Tensor) -> Tensor:
  """CTRL's repetition penalty: the logits of tokens already in the text shrink towards (or away below) zero."""
  return seen.where((logits > 0).where(logits / penalty, logits * penalty), logits)


def keep_mask(probs: Tensor, top_k: Tensor, top_p: Tensor) -> Tensor:
  """Tokens inside both the top-k (ties with the k-th kept) and the nucleus: each token whose preceding mass, in
  order of probability, is below top_p of the top-k's mass. probs are relative to the most likely token (max 1)."""
  bits = probs.bitcast(dtypes.int32)
  k_threshold = (top_k > 0).where(largest_threshold(bits, probs.ones_like(), top_k), 0)
  in_top_k = (bits >= k_threshold).where(probs, 0)
  p_threshold = largest_threshold(bits, in_top_k, top_p * in_top_k.sum(-1, keepdim=True))
  return bits >= k_threshold.maximum((top_p < 1).where(p_threshold, 0))


def gumbel(keys: Tensor, vocab: int) -> Tensor:
  """Gumbel noise (B, vocab) from one 64-bit key per row ((B, 2) uint32 halves), by tinygrad's threefry hash of each
  token's index: the host draws the keys, so a seeded conversation replays exactly."""
  key = (keys[:, 1:2].cast(dtypes.uint64) << 32) | keys[:, 0:1].cast(dtypes.uint64)
  index = Tensor.arange(vocab).to(keys.device).cast(dtypes.uint64).unsqueeze(0)
  bits = index.expand(keys.shape[0], vocab).threefry(key.expand(keys.shape[0], vocab)).cast(dtypes.uint32)
  uniform = ((bits >> 8).cast(dtypes.float32) + 0.5) * 2.0 ** -24  # in (0, 1): both logs stay finite
  return -(-uniform.log()).log()


def sample(logits: Tensor, params: Tensor, seen: Tensor, keys: Tensor, mode: str) -> Tensor:
  """The next token of each row, (B,) int32. logits (B, V) float32; params (B, 4): temperature, top_k, top_p,
  repetition penalty (Sampling.row); seen (B, V) bool; keys (B, 2) uint32. Rows with temperature 0 are greedy."""
  temperature, top_k, top_p, penalty = (params[:, i:i + 1] for i in range(4))
  logits = penalized(logits, seen, penalty)
  greedy = logits.argmax(-1)
  if mode == "greedy": return greedy.cast(dtypes.int32)
  scaled = (logits - logits.max(-1, keepdim=True)) / (temperature > 0).where(temperature, 1)
  if mode == "filter": scaled = keep_mask(scaled.exp(), top_k, top_p).where(scaled, float("-inf"))
  drawn = (scaled + gumbel(keys, logits.shape[-1])).argmax(-1)
  return (temperature[:, 0] > 0).where(drawn, greedy).cast(dtypes.int32)


def key_rows(rngs: list[np.random.Generator]) -> np.ndarray:
  """One fresh key per row from that row's generator: (rows, 2) uint32."""
  return np.stack([rng.integers(0, 2 ** 32, size=2, dtype=np.uint32) for rng in rngs])

