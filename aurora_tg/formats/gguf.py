"""GGUF export: one file holding a GPT-2-layout Aurora model and its tokenizer, in the format llama.cpp and the tools
built on it load. The official `gguf` package writes the file and names the tensors (its map for llama.cpp's "gpt2"
architecture); this module supplies what it cannot know: the weights' types, and the tokenizer as llama.cpp's BPE
(byte-level token strings plus the merge list, which tiktoken's ranks hold only implicitly)."""
import numpy as np
from tinygrad.nn.state import get_state_dict
from aurora_tg import UserError
from aurora_tg.formats.files import write_atomically
from aurora_tg.formats.huggingface import require_gpt2_layout
from aurora_tg.model import GPT
from aurora_tg.data.tokenizer import SPECIAL_TOKENS, Tokenizer

# llama.cpp's pre-tokenizer (the regex that splits text before BPE) for each pattern Aurora's tokenizers use. GPT-2's
# is r50k_base's; rustbpe trains with GPT-4's split, which llama.cpp's "llama-bpe" (Llama 3's) computes as well.
GPT4_SPLIT = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"
PRE_TOKENIZERS = {GPT4_SPLIT: "llama-bpe"}
# Aurora's chat template (tokenizer.py's render_chat) in the Jinja form llama.cpp's chat front ends read
CHAT_TEMPLATE = ("{% for message in messages %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")


def weight_types(kind: str | None):
  """(the type of the model's matrices, the file type llama.cpp reports) for --quantize's kind."""
  import gguf
  types = {None: (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
           "float16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
           "int8": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0)}
  if kind not in types: raise UserError(f"--quantize must be one of float16, int8 (llama.cpp's q8_0), got {kind!r}")
  return types[kind]


def tensor_type(name: str, value: np.ndarray, matrices):
  """As llama.cpp's own converter does: vectors (norms, biases) and the position table stay float32; a q8_0 row must
  be whole blocks of 32, else the matrix falls back to float16."""
  import gguf
  if value.ndim == 1 or name.startswith("position_embd"): return gguf.GGMLQuantizationType.F32
  block = gguf.GGML_QUANT_SIZES[matrices][0]
  return matrices if value.shape[-1] % block == 0 else gguf.GGMLQuantizationType.F16


def model_tensors(model: GPT) -> dict[str, np.ndarray]:
  """The weights under llama.cpp's names, float32, in (out, in) layout as Aurora keeps them. llama.cpp's gpt2 graph
  needs every bias, so a model trained without them gets zero ones (as the Hugging Face export does)."""
  import gguf
  names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT2, model.cfg.n_layer)
  tensors = {}
  for name, t in get_state_dict(model).items():
    value = t.float().numpy()
    tensors[names.get_name(name, try_suffixes=(".weight", ".bias"))] = value
    if not model.cfg.bias and name.endswith(".weight") and not name.startswith(("wte", "wpe")):
      tensors[names.get_name(name[:-len("weight")] + "bias", try_suffixes=(".bias",))] = np.zeros(value.shape[0], np.float32)
  return tensors


def bpe_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
  """The merge list llama.cpp's BPE applies, recovered from tiktoken's ranks (tiktoken keeps no merge list). A token
  of rank r is the merge of the two parts that BPE, using only tokens ranked below r, leaves of its bytes."""
  merges = []
  for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
    if len(token) < 2: continue
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 2:
      pairs = [(ranks.get(parts[i] + parts[i + 1], rank), i) for i in range(len(parts) - 1)]
      best, i = min(pairs)
      if best >= rank: break
      parts[i:i + 2] = [parts[i] + parts[i + 1]]
    if len(parts) != 2: raise UserError(f"the tokenizer's token {token!r} is no merge of two lower-ranked tokens; llama.cpp's BPE cannot express it")
    merges.append((parts[0], parts[1]))
  return merges


def add_tokenizer(writer, tokenizer: Tokenizer, n_vocab: int):
  """GPT-2-style byte-level BPE as llama.cpp reads it: each token as bytes mapped to printable characters, the merges
  in rank order, the special tokens as control tokens, and rows past the tokenizer (padding) as unused tokens."""
  import gguf
  from gguf.vocab import bytes_to_unicode
  enc = tokenizer.enc
  pre = "gpt-2" if tokenizer.spec["kind"] == "gpt2" else PRE_TOKENIZERS.get(enc._pat_str)
  if pre is None: raise UserError(f"llama.cpp has no pre-tokenizer for this tokenizer's split pattern {enc._pat_str!r}; it cannot be exported to GGUF")
  if n_vocab < tokenizer.n_vocab: raise UserError(f"the model has {n_vocab} token rows but its tokenizer {tokenizer.n_vocab} tokens")
  chars = bytes_to_unicode()
  printable = lambda b: "".join(chars[x] for x in b)
  ranks = enc._mergeable_ranks
  specials = {enc.encode_single_token(s) for s in enc.special_tokens_set}
  tokens, types = [], []
  for i in range(n_vocab):
    if i in specials: token, kind = enc.decode_single_token_bytes(i).decode(), gguf.TokenType.CONTROL
    elif i < tokenizer.n_vocab: token, kind = printable(enc.decode_single_token_bytes(i)), gguf.TokenType.NORMAL
    else: token, kind = f"[PAD{i}]", gguf.TokenType.UNUSED
    tokens.append(token)
    types.append(kind)
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre(pre)
  writer.add_token_list(tokens)
  writer.add_token_types(types)
  writer.add_token_merges([f"{printable(a)} {printable(b)}" for a, b in bpe_merges(ranks)])
  writer.add_bos_token_id(tokenizer.eot)
  writer.add_eos_token_id(tokenizer.eot)
  writer.add_eot_token_id(tokenizer.special("<|end|>"))  # a chat model's turn ends there
  writer.add_add_bos_token(False)  # Aurora's models see no start token before the text
  if all(s in enc.special_tokens_set for s in SPECIAL_TOKENS): writer.add_chat_template(CHAT_TEMPLATE)


def save(model: GPT, tokenizer: Tokenizer, path: str, kind: str | None, name: str) -> dict[str, int]:
  """Write the GGUF file atomically; returns how many tensors were written per type name."""
  try: import gguf
  except ImportError: raise UserError("GGUF export needs the gguf package: pip install 'aurora-tg[gguf]'") from None
  cfg = model.cfg
  require_gpt2_layout(cfg)
  matrices, file_type = weight_types(kind)
  tensors = model_tensors(model)

  def write(tmp: str):
    writer = gguf.GGUFWriter(tmp, "gpt2")
    writer.add_name(name)
    writer.add_context_length(cfg.block_size)
    writer.add_embedding_length(cfg.n_embd)
    writer.add_feed_forward_length(cfg.mlp_hidden)
    writer.add_block_count(cfg.n_layer)
    writer.add_head_count(cfg.n_head)
    writer.add_layer_norm_eps(1e-5)  # model.py's LayerNorm
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_tokenizer(writer, tokenizer, cfg.vocab_size)
    for tensor_name, value in tensors.items():
      qtype = tensor_type(tensor_name, value, matrices)
      data = value if qtype == gguf.GGMLQuantizationType.F32 else gguf.quants.quantize(value, qtype)
      writer.add_tensor(tensor_name, data, raw_dtype=qtype)
      counts[qtype.name] = counts.get(qtype.name, 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=True)
    writer.close()

  counts: dict[str, int] = {}
  write_atomically(path, write, size=sum(v.nbytes for v in tensors.values()))
  return counts
