import collections, io, json, pickle, struct, sys, types, zipfile
import numpy as np
import pytest
from tinygrad import Tensor
from tinygrad.nn.state import get_state_dict, safe_save
from aurora_tg import UserError
from aurora_tg.formats import checkpoint
from aurora_tg.formats import huggingface as hf
from aurora_tg.model import GPT, GPTConfig, num_params
from aurora_tg.data.tokenizer import gpt2
from conftest import TEST_SHAPE

HF_SHAPE = dict(n_layer=2, n_head=2, n_embd=16, n_positions=24, vocab_size=50)
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def hf_tensors(n_layer, n_head, n_embd, n_positions, vocab_size, seed=0) -> dict[str, np.ndarray]:
  """GPT-2's Hugging Face names and shapes, Conv1D weights as (in, out), with random known values."""
  rng = np.random.default_rng(seed)
  C = n_embd
  shapes = {"wte.weight": (vocab_size, C), "wpe.weight": (n_positions, C), "ln_f.weight": (C,), "ln_f.bias": (C,)}
  for i in range(n_layer):
    shapes |= {f"h.{i}.ln_1.weight": (C,), f"h.{i}.ln_1.bias": (C,), f"h.{i}.attn.c_attn.weight": (C, 3 * C),
               f"h.{i}.attn.c_attn.bias": (3 * C,), f"h.{i}.attn.c_proj.weight": (C, C), f"h.{i}.attn.c_proj.bias": (C,),
               f"h.{i}.ln_2.weight": (C,), f"h.{i}.ln_2.bias": (C,), f"h.{i}.mlp.c_fc.weight": (C, 4 * C),
               f"h.{i}.mlp.c_fc.bias": (4 * C,), f"h.{i}.mlp.c_proj.weight": (4 * C, C), f"h.{i}.mlp.c_proj.bias": (C,)}
  out = {k: (1.0 if "ln" in k and k.endswith("weight") else 0.0) + rng.standard_normal(s) * 0.3 for k, s in shapes.items()}
  for i in range(n_layer):  # the causal-mask buffer older GPT-2 checkpoints carry; a loader must skip it
    out[f"h.{i}.attn.bias"] = np.tril(np.ones((n_positions, n_positions)))[None, None]
  return {k: v.astype(np.float32) for k, v in out.items()}


def write_hf_folder(folder, tensors, shape=HF_SHAPE, **config):
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", **shape, **config}))
  safe_save({k: Tensor(v) for k, v in tensors.items()}, str(folder / "model.safetensors"))
  return folder


def read_safetensors_numpy(path) -> dict[str, np.ndarray]:
  """The format by hand (8-byte header length, JSON header, raw little-endian data): independent of tinygrad."""
  raw = path.read_bytes()
  (n,) = struct.unpack("<Q", raw[:8])
  header, data = json.loads(raw[8:8 + n]), raw[8 + n:]
  return {k: np.frombuffer(data[v["data_offsets"][0]:v["data_offsets"][1]], np.float32).reshape(v["shape"])
          for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32"}  # float32 tensors only


def numpy_gpt2(w: dict[str, np.ndarray], ids: np.ndarray, n_layer: int, n_head: int) -> np.ndarray:
  """GPT-2's forward pass straight from the Hugging Face tensors (Conv1D: y = x W + b)."""
  def ln(x, name):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * w[f"{name}.weight"] + w[f"{name}.bias"]
  def conv1d(x, name): return x @ w[f"{name}.weight"] + w[f"{name}.bias"]
  T = len(ids)
  x = (w["wte.weight"][ids] + w["wpe.weight"][:T]).astype(np.float64)
  for i in range(n_layer):
    q, k, v = np.split(conv1d(ln(x, f"h.{i}.ln_1"), f"h.{i}.attn.c_attn"), 3, -1)
    q, k, v = (t.reshape(T, n_head, -1).transpose(1, 0, 2) for t in (q, k, v))
    scores = q @ k.transpose(0, 2, 1) / np.sqrt(q.shape[-1]) + np.triu(np.full((T, T), -np.inf), 1)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    y = (p / p.sum(-1, keepdims=True)) @ v
    x = x + conv1d(y.transpose(1, 0, 2).reshape(T, -1), f"h.{i}.attn.c_proj")
    h = conv1d(ln(x, f"h.{i}.ln_2"), f"h.{i}.mlp.c_fc")
    h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h ** 3)))
    x = x + conv1d(h, f"h.{i}.mlp.c_proj")
  return ln(x, "ln_f") @ w["wte.weight"].T


def test_hf_folder_gives_the_logits_of_a_numpy_gpt2(tmp_path):
  folder = write_hf_folder(tmp_path / "gpt2", hf_tensors(**HF_SHAPE))
  model = hf.load_weights(folder)
  ids = np.random.default_rng(1).integers(0, HF_SHAPE["vocab_size"], 20)
  expected = numpy_gpt2(read_safetensors_numpy(folder / "model.safetensors"), ids, HF_SHAPE["n_layer"], HF_SHAPE["n_head"])
  np.testing.assert_allclose(model(Tensor(ids[None])).numpy()[0], expected, rtol=1e-4, atol=1e-4)


def test_prefixed_keys_and_lm_head_are_understood(tmp_path):
  """GPT2LMHeadModel.save_pretrained writes "transformer."-prefixed names and the tied lm_head."""
  tensors = hf_tensors(**HF_SHAPE)
  prefixed = {f"transformer.{k}": v for k, v in tensors.items()} | {"lm_head.weight": tensors["wte.weight"]}
  plain = hf.load_weights(write_hf_folder(tmp_path / "plain", tensors))
  loaded = hf.load_weights(write_hf_folder(tmp_path / "prefixed", prefixed))
  for name, t in get_state_dict(plain).items(): np.testing.assert_array_equal(get_state_dict(loaded)[name].numpy(), t.numpy())


@pytest.mark.parametrize("bias", [True, False])
def test_export_then_import_is_bit_identical(tmp_path, bias):
  Tensor.manual_seed(3)
  model = GPT(GPTConfig(**TEST_SHAPE, bias=bias))
  for t in get_state_dict(model).values(): t.assign(Tensor.randn(*t.shape) * 0.3).realize()  # not the init's ones and zeros
  hf.save(model, tmp_path / "out", gpt2())
  config = json.loads((tmp_path / "out" / "config.json").read_text())
  assert (config["n_layer"], config["n_embd"], config["vocab_size"], config["n_positions"]) == (2, 32, 97, 16)
  stored = read_safetensors_numpy(tmp_path / "out" / "model.safetensors")
  assert stored["h.0.attn.c_attn.weight"].shape == (32, 96)  # Conv1D: (in, out)
  assert ("h.1.mlp.c_fc.bias" in stored) and (bias or not stored["h.1.mlp.c_fc.bias"].any())  # GPT-2 needs biases
  back = hf.load_weights(tmp_path / "out")
  originals, loaded = get_state_dict(model), get_state_dict(back)
  for name, t in loaded.items():
    if name in originals: assert np.array_equal(t.numpy(), originals[name].numpy()), name
    else: assert not bias and not t.numpy().any(), name
  ids = Tensor(np.arange(16)[None] % 97)
  assert np.array_equal(back(ids).numpy(), model(ids).numpy())


@pytest.mark.parametrize("size,expected", [("gpt2", 124_439_808), ("gpt2-medium", 354_823_168),
                                           ("gpt2-large", 774_030_080), ("gpt2-xl", 1_557_611_200)])
def test_every_gpt2_size_config_reads_as_published(tmp_path, size, expected):
  """OpenAI's four configs (as on the Hugging Face hub) give models with GPT-2's published parameter counts."""
  dims = {"gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024), "gpt2-large": (36, 20, 1280), "gpt2-xl": (48, 25, 1600)}[size]
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": dims[0], "n_head": dims[1], "n_embd": dims[2],
    "n_positions": 1024, "n_ctx": 1024, "vocab_size": 50257, "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5}))
  assert num_params(GPT(hf.read_config(tmp_path))) == expected  # lazy: nothing is allocated


def test_loaded_gpt2_grows_its_vocabulary_for_the_chat_tokens(tmp_path):
  tensors = hf_tensors(**HF_SHAPE)
  model, tokenizer, record = checkpoint.load_model(write_hf_folder(tmp_path / "gpt2", tensors))
  wte = model.wte.weight.numpy()
  assert model.cfg.vocab_size == tokenizer.n_vocab == wte.shape[0] == 50261 and record.stage == "gpt2"
  np.testing.assert_array_equal(wte[:50], tensors["wte.weight"])
  np.testing.assert_allclose(wte[50:], np.broadcast_to(tensors["wte.weight"].mean(0), (50261 - 50, 16)), rtol=1e-5, atol=1e-6)


def torch_save(tensors: dict[str, np.ndarray], path):
  """What torch.save writes, made with the standard library (so the test runs without PyTorch): a zip of
  archive/data.pkl, whose tensors are torch._utils._rebuild_tensor_v2 calls on storages named by persistent ids,
  and archive/data/<id> with each storage's little-endian bytes."""
  torch_module, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
  def _rebuild_tensor_v2(*args): raise AssertionError("only pickled, never called")
  _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
  FloatStorage = type("FloatStorage", (), {"__module__": "torch"})
  torch_module.FloatStorage, torch_module._utils, utils._rebuild_tensor_v2 = FloatStorage, utils, _rebuild_tensor_v2
  class Storage:
    def __init__(self, key, array): self.key, self.array = key, array
  class TorchTensor:
    def __init__(self, storage): self.storage = storage
    def __reduce__(self):
      shape = self.storage.array.shape
      strides = tuple(s // self.storage.array.itemsize for s in self.storage.array.strides)
      return _rebuild_tensor_v2, (self.storage, 0, shape, strides, False, collections.OrderedDict())
  class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
      return ("storage", FloatStorage, obj.key, "cpu", obj.array.size) if isinstance(obj, Storage) else None
  storages = {name: Storage(str(i), np.ascontiguousarray(v, dtype="<f4")) for i, (name, v) in enumerate(tensors.items())}
  buffer = io.BytesIO()
  saved = {name: sys.modules.get(name) for name in ("torch", "torch._utils")}
  sys.modules.update({"torch": torch_module, "torch._utils": utils})  # pickle names globals by their import path
  try: Pickler(buffer, protocol=2).dump(collections.OrderedDict((name, TorchTensor(s)) for name, s in storages.items()))
  finally:
    for name, module in saved.items():
      if module is None: sys.modules.pop(name)
      else: sys.modules[name] = module
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", buffer.getvalue())
    for s in storages.values(): z.writestr(f"archive/data/{s.key}", s.array.tobytes())
    z.writestr("archive/version", "3\n")


def test_pytorch_bin_loads_like_safetensors(tmp_path):
  tensors = hf_tensors(**HF_SHAPE)
  folder = tmp_path / "bin"
  folder.mkdir()
  (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", **HF_SHAPE}))
  torch_save(tensors, folder / "pytorch_model.bin")
  reference = hf.load_weights(write_hf_folder(tmp_path / "st", tensors))
  loaded = hf.load_weights(folder)
  for name, t in get_state_dict(reference).items(): np.testing.assert_array_equal(get_state_dict(loaded)[name].numpy(), t.numpy())


def bad_folders(tmp_path):
  good = hf_tensors(**HF_SHAPE)
  yield "not GPT-2", write_hf_folder(tmp_path / "llama", good, model_type="llama"), "not a GPT-2 checkpoint"
  yield "other activation", write_hf_folder(tmp_path / "relu", good, activation_function="relu"), "activation_function"
  yield "config lacks a size", write_hf_folder(tmp_path / "nolayers", good, shape={k: v for k, v in HF_SHAPE.items() if k != "n_layer"}), "lacks n_layer"
  yield "missing tensor", write_hf_folder(tmp_path / "missing", {k: v for k, v in good.items() if k != "h.1.mlp.c_fc.weight"}), "h.1.mlp.c_fc.weight"
  wrong = dict(good, **{"h.0.attn.c_attn.weight": good["h.0.attn.c_attn.weight"].T.copy()})  # Linear's layout, not Conv1D's
  yield "shape mismatch", write_hf_folder(tmp_path / "shape", wrong), "h.0.attn.c_attn.weight has shape (48, 16)"
  truncated = write_hf_folder(tmp_path / "truncated", good)
  data = (truncated / "model.safetensors").read_bytes()
  (truncated / "model.safetensors").write_bytes(data[:len(data) // 2])
  yield "truncated safetensors", truncated, "truncated"
  bin_folder = tmp_path / "badbin"
  bin_folder.mkdir()
  (bin_folder / "config.json").write_text(json.dumps({"model_type": "gpt2", **HF_SHAPE}))
  (bin_folder / "pytorch_model.bin").write_bytes(b"PK\x03\x04 cut short")
  yield "truncated pytorch_model.bin", bin_folder, "pytorch_model.bin is truncated or corrupt"
  no_weights = tmp_path / "noweights"
  no_weights.mkdir()
  (no_weights / "config.json").write_text(json.dumps({"model_type": "gpt2", **HF_SHAPE}))
  yield "no weights", no_weights, "neither model.safetensors nor pytorch_model.bin"
  yield "no config", (tmp_path / "empty").mkdir() or tmp_path / "empty", "no checkpoint at"


def test_bad_folders_fail_with_one_clear_line(tmp_path):
  for what, folder, message in bad_folders(tmp_path):
    with pytest.raises(UserError) as e: checkpoint.load_model(folder)
    assert message in str(e.value) and "\n" not in str(e.value), f"{what}: {e.value}"
