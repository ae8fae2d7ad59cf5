"""GGUF export (`python -m aurora_tg.export RUN out.gguf`): the file read back with the official gguf package holds
every weight under llama.cpp's name, shape and value; its tokenizer, run by a second BPE written here, encodes as
Aurora's does; and, where llama-cpp-python is installed, llama.cpp loads it and continues text greedily with
Aurora's tokens."""
import numpy as np
import pytest
import regex
from tinygrad import Tensor
from tinygrad.nn.state import get_state_dict
from aurora_tg.formats import checkpoint
from aurora_tg.cli.export import main as export
from aurora_tg.model import GPT, GPTConfig
from aurora_tg.data.tokenizer import gpt2, train_bpe
from conftest import TEST_SHAPE, sample_text
from test_chat import greedy_tokens, make_model, save_run

gguf = pytest.importorskip("gguf")

# llama.cpp's gpt2 tensor names, written out here rather than taken from the gguf package the exporter uses
LAYER_NAMES = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "ln_2": "ffn_norm",
               "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
TOP_NAMES = {"wte": "token_embd", "wpe": "position_embd", "ln_f": "output_norm"}
TEXT = "The cat sat on a mat, naïve café 🙂 — 1234567 dogs ran past!\n\n  'tis   the bird's song.\tEnd"


def llama_name(aurora_name: str) -> str:
  stem, kind = aurora_name.rsplit(".", 1)
  if stem in TOP_NAMES: return f"{TOP_NAMES[stem]}.{kind}"
  _, layer, rest = stem.split(".", 2)
  return f"blk.{layer}.{LAYER_NAMES[rest]}.{kind}"


def q8_0_values(raw: np.ndarray, shape) -> np.ndarray:
  """llama.cpp's q8_0 decoded by hand: blocks of 32 weights, each a float16 scale then 32 int8 values."""
  blocks = raw.reshape(-1).view(np.uint8).reshape(-1, 34)
  scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)
  return (blocks[:, 2:].copy().view(np.int8).astype(np.float32) * scale).reshape(shape)


@pytest.fixture(scope="module")
def gpt2_run(tmp_path_factory):
  tokenizer = gpt2()
  model = make_model(tokenizer)
  return save_run(tmp_path_factory.mktemp("gguf") / "run", model, tokenizer, "sft"), model, tokenizer


def read(path):
  reader = gguf.GGUFReader(str(path))
  fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
  return fields, {t.name: t for t in reader.tensors}


@pytest.mark.parametrize("kind", [None, "float16", "int8"])
def test_gguf_holds_every_tensor_with_its_name_shape_and_value(tmp_path, gpt2_run, kind):
  run, model, tokenizer = gpt2_run
  out = tmp_path / "model.gguf"
  assert export([str(run), str(out)] + (["--quantize", kind] if kind else [])) == 0
  fields, tensors = read(out)
  cfg = model.cfg
  assert fields["general.architecture"] == "gpt2"
  assert (fields["gpt2.block_count"], fields["gpt2.embedding_length"], fields["gpt2.attention.head_count"]) == (cfg.n_layer, cfg.n_embd, cfg.n_head)
  assert (fields["gpt2.context_length"], fields["gpt2.feed_forward_length"]) == (cfg.block_size, cfg.mlp_hidden)
  weights = get_state_dict(model)
  assert set(tensors) == {llama_name(n) for n in weights}
  for name, weight in weights.items():
    expected, t = weight.numpy(), tensors[llama_name(name)]
    assert tuple(int(n) for n in t.shape[::-1]) == expected.shape, name  # GGUF lists dimensions innermost first
    matrix = expected.ndim == 2 and name != "wpe.weight"  # vectors and the position table stay float32
    if not matrix or kind is None:
      assert t.tensor_type == gguf.GGMLQuantizationType.F32, name
      np.testing.assert_array_equal(np.asarray(t.data).reshape(expected.shape), expected, err_msg=name)
    elif kind == "float16":
      assert t.tensor_type == gguf.GGMLQuantizationType.F16, name
      np.testing.assert_array_equal(np.asarray(t.data).reshape(expected.shape), expected.astype(np.float16), err_msg=name)
    else:  # q8_0: each weight within half a step of its block's scale (largest |w| / 127), plus the scale's float16 rounding
      assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0, name
      blocks = expected.reshape(-1, 32)
      bound = np.abs(blocks).max(1, keepdims=True) * (0.5 / 127 + 1e-3)
      error = np.abs(q8_0_values(np.asarray(t.data), blocks.shape) - blocks)
      assert (error <= bound).all(), (name, float((error - bound).max()))
      assert error.max() > 0  # it really is quantized


def bpe(text: str, pattern: str, tokens: list[str], merges: list[str]) -> list[int]:
  """GPT-2's BPE as its paper's code runs it: split by the pattern, map bytes to printable characters, then merge the
  lowest-ranked adjacent pair until none is in the merge list."""
  from gguf.vocab import bytes_to_unicode
  chars, ranks = bytes_to_unicode(), {tuple(m.split(" ")): r for r, m in enumerate(merges)}
  ids = {t: i for i, t in enumerate(tokens)}
  out = []
  for piece in regex.findall(pattern, text):
    parts = [chars[b] for b in piece.encode()]
    while len(parts) > 1:
      rank, i = min((ranks.get((parts[i], parts[i + 1]), len(ranks)), i) for i in range(len(parts) - 1))
      if rank == len(ranks): break
      parts[i:i + 2] = [parts[i] + parts[i + 1]]
    out += [ids[p] for p in parts]
  return out


@pytest.mark.parametrize("which", ["gpt2", "bpe"])
def test_the_gguf_tokenizer_encodes_as_aurora_does(tmp_path, which):
  tokenizer = gpt2() if which == "gpt2" else train_bpe([sample_text()], 400)
  model = GPT(GPTConfig(**{**TEST_SHAPE, "vocab_size": tokenizer.n_vocab + 3}))  # 3 padding rows past the tokenizer
  save_run(tmp_path / "run", model, tokenizer, "sft")
  assert export([str(tmp_path / "run"), str(tmp_path / "m.gguf")]) == 0
  fields, _ = read(tmp_path / "m.gguf")
  tokens, types, merges = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"], fields["tokenizer.ggml.merges"]
  assert fields["tokenizer.ggml.pre"] == ("gpt-2" if which == "gpt2" else "llama-bpe")
  assert len(tokens) == tokenizer.n_vocab + 3 and types[-3:] == [gguf.TokenType.UNUSED] * 3
  assert [tokens[tokenizer.special(s)] for s in ("<|endoftext|>", "<|assistant|>")] == ["<|endoftext|>", "<|assistant|>"]
  assert types[tokenizer.special("<|end|>")] == gguf.TokenType.CONTROL
  assert fields["tokenizer.ggml.eos_token_id"] == tokenizer.eot and fields["tokenizer.ggml.eot_token_id"] == tokenizer.special("<|end|>")
  if which == "gpt2": assert len(merges) == 50000  # GPT-2's merges.txt has 50,000
  for text in (TEXT, sample_text(300, seed=1)):
    assert bpe(text, tokenizer.enc._pat_str, tokens, merges) == tokenizer.encode(text)


def test_bad_exports_are_one_error_line(tmp_path, gpt2_run, capsys):
  run, _, tokenizer = gpt2_run
  assert export([str(run), str(tmp_path / "m.gguf"), "--quantize", "int4"]) == 2
  assert capsys.readouterr().err.strip().startswith("error: --quantize must be one of float16, int8")
  rope = GPT(GPTConfig(**TEST_SHAPE, pos="rope"))
  checkpoint.save(tmp_path / "rope", get_state_dict(rope), {}, checkpoint.RunRecord("pretrain", rope.cfg, tokenizer.fingerprint()))
  tokenizer.save(str(tmp_path / "rope" / checkpoint.TOKENIZER_NAME))
  assert export([str(tmp_path / "rope"), str(tmp_path / "r.gguf")]) == 2
  assert "cannot express rope" in capsys.readouterr().err
  assert export([str(run), str(tmp_path / "int8"), "--quantize", "int8"]) == 0
  assert export([str(tmp_path / "int8"), str(tmp_path / "q.gguf")]) == 2
  err = capsys.readouterr().err.strip().splitlines()[-1]
  assert err.startswith("error:") and "int8 weights" in err
  assert not any(p.suffix == ".gguf" or ".gguf.tmp" in p.name for p in tmp_path.iterdir())


def llama(path):
  llama_cpp = pytest.importorskip("llama_cpp")
  return llama_cpp.Llama(model_path=str(path), n_ctx=64, n_threads=2, logits_all=True, verbose=False)


def llama_greedy(llm, prompt: list[int], n: int) -> tuple[list[int], np.ndarray]:
  """llama.cpp's greedy continuation, and its logits for the prompt's last position."""
  llm.reset()
  llm.eval(prompt)
  first_logits, out = np.array(llm.scores[len(prompt) - 1]), []
  for _ in range(n):
    out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
    llm.eval([out[-1]])
  return out, first_logits


@pytest.mark.parametrize("kind", [None, "float16", "int8"])
def test_llama_cpp_continues_text_with_aurora_tokens(tmp_path, gpt2_run, kind):
  """Greedy decoding in llama.cpp gives Aurora's float32 tokens; quantized files stay close in their logits."""
  run, model, tokenizer = gpt2_run
  out = tmp_path / "model.gguf"
  assert export([str(run), str(out)] + (["--quantize", kind] if kind else [])) == 0
  llm = llama(out)
  prompt = tokenizer.encode("the cat sat on a mat while")
  assert llm.tokenize(TEXT.encode(), add_bos=False, special=False) == tokenizer.encode(TEXT)
  tokens, logits = llama_greedy(llm, prompt, 12)
  ours = model(Tensor([prompt])).numpy()[0, -1]
  tolerance = {None: 1e-3, "float16": 2e-2, "int8": 1e-1}[kind] * np.abs(ours).max()
  np.testing.assert_allclose(logits[:len(ours)], ours, atol=tolerance)
  if kind is None: assert tokens == greedy_tokens(model, prompt, 12, stop=set())


def test_llama_cpp_reads_an_own_bpe(tmp_path):
  tokenizer = train_bpe([sample_text()], 400)
  save_run(tmp_path / "run", make_model(tokenizer), tokenizer, "sft")
  assert export([str(tmp_path / "run"), str(tmp_path / "m.gguf")]) == 0
  llm = llama(tmp_path / "m.gguf")
  for text in (TEXT, sample_text(300, seed=2)):
    assert llm.tokenize(text.encode(), add_bos=False, special=False) == tokenizer.encode(text)
