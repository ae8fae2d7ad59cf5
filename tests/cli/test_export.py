"""GPT-2 interop end to end: fine-tune a Hugging Face GPT-2 folder through train.py, export it, read it back."""
import json
import numpy as np
import pytest
from tinygrad import Tensor
from tinygrad.nn.state import get_state_dict
from aurora_tg.formats import checkpoint
from aurora_tg.cli.export import main as export
from aurora_tg.model import GPT, GPTConfig
from aurora_tg.data.tokenizer import gpt2, train_bpe
from conftest import TEST_SHAPE, sample_text
from test_huggingface import CONV1D as HF_CONV1D, HF_SHAPE, hf_tensors, numpy_gpt2, read_safetensors_numpy, write_hf_folder
from test_chat import chat, greedy_tokens, make_model, save_run
from test_train import assert_one_line_error, train


def test_lora_fine_tuning_a_gpt2_folder_then_exporting_it(tmp_path):
  """The chat tokens grow GPT-2's vocabulary; the export keeps the grown one, and reads back as the same model."""
  shape = dict(HF_SHAPE, n_positions=64)
  base = write_hf_folder(tmp_path / "gpt2", hf_tensors(**shape), shape=shape)
  train("--stage", "lora", "--init", base, "--steps", "2", "--batch-size", "2", "--eval-every", "2", check_code=0)
  tuned = tmp_path / "gpt2-lora"
  assert export([str(tuned), str(tmp_path / "exported")]) == 0
  config = json.loads((tmp_path / "exported" / "config.json").read_text())
  assert config["vocab_size"] == 50261 and config["n_positions"] == 64
  merged, tokenizer, _ = checkpoint.load_model(tuned)
  back, back_tokenizer, _ = checkpoint.load_model(tmp_path / "exported")
  assert back_tokenizer.fingerprint() == tokenizer.fingerprint()
  for name, t in get_state_dict(merged).items(): assert np.array_equal(get_state_dict(back)[name].numpy(), t.numpy()), name


def test_init_from_a_gpt2_folder_without_a_stage_chat_fine_tunes_it(tmp_path):
  """`train.py --init FOLDER` (README: "Without --stage, train.py --init FOLDER chat fine-tunes it"), with --freeze 1:
  an SFT run beside the folder with GPT-2's tokenizer; the embeddings (grown for the chat tokens) and block 0 are the
  folder's weights bit for bit, block 1 and the final norm trained."""
  shape = dict(HF_SHAPE, n_positions=64)
  tensors = hf_tensors(**shape)
  folder = write_hf_folder(tmp_path / "gpt2", tensors, shape=shape)
  proc = train("--init", folder, "--freeze", "1", "--steps", "2", "--batch-size", "2", "--eval-every", "2", check_code=0)
  run = tmp_path / "gpt2-sft"
  assert proc.stdout.startswith("sft |") and f"checkpoint: {run / checkpoint.CHECKPOINT_NAME}" in proc.stdout
  record = checkpoint.read_record(run)
  assert (record.stage, record.run.init, record.model.vocab_size, record.step) == ("sft", str(folder), 50261, 2)
  assert record.tokenizer == gpt2().fingerprint()
  saved = {k.removeprefix("model."): v for k, v in read_safetensors_numpy(run / checkpoint.CHECKPOINT_NAME).items() if k.startswith("model.")}
  wte = tensors["wte.weight"]
  np.testing.assert_array_equal(saved["wte.weight"][:len(wte)], wte)
  np.testing.assert_allclose(saved["wte.weight"][len(wte):], np.broadcast_to(wte.mean(0), (50261 - len(wte), wte.shape[1])), rtol=1e-5, atol=1e-6)
  for name, value in tensors.items():
    if name == "wte.weight" or name.endswith(".attn.bias"): continue  # the mask buffer is no weight
    ours = saved[name].T if name.endswith(HF_CONV1D) else saved[name]
    if name.startswith(("wpe.", "h.0.")): np.testing.assert_array_equal(ours, value, err_msg=name)
    else: assert not np.array_equal(ours, value), name


@pytest.mark.parametrize("arch", [dict(pos="rope"), dict(norm="rmsnorm"), dict(mlp="swiglu"), dict(mlp="relu2")])
def test_export_refuses_what_gpt2_cannot_express(tmp_path, capsys, arch):
  model = GPT(GPTConfig(**TEST_SHAPE, **arch))
  tokenizer = gpt2()
  checkpoint.save(tmp_path / "run", get_state_dict(model), {}, checkpoint.RunRecord("pretrain", model.cfg, tokenizer.fingerprint()))
  tokenizer.save(str(tmp_path / "run" / checkpoint.TOKENIZER_NAME))
  assert export([str(tmp_path / "run"), str(tmp_path / "out")]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: GPT-2's layout cannot express") and next(iter(arch.values())) in err and "\n" not in err
  assert not (tmp_path / "out" / "model.safetensors").exists()


def test_chat_completes_from_a_gpt2_folder(tmp_path):
  """The continuation is the greedy one of GPT-2's forward pass computed in numpy from the folder's tensors, with the
  vocabulary grown for the chat tokens as README.md says (new rows: the mean embedding)."""
  tensors = hf_tensors(**HF_SHAPE)
  folder = write_hf_folder(tmp_path / "gpt2", tensors)
  proc = chat("--checkpoint", folder, "--complete", "Hello", "--max-tokens", "6", "--temperature", "0", "--repetition-penalty", "1")
  assert proc.returncode == 0, proc.stdout + proc.stderr
  tokenizer = gpt2()
  wte = tensors["wte.weight"].astype(np.float64)
  grown = dict(tensors, **{"wte.weight": np.concatenate([wte, np.broadcast_to(wte.mean(0), (tokenizer.n_vocab - len(wte), wte.shape[1]))])})
  ids, continuation = tokenizer.encode("Hello"), []
  while len(continuation) < 6:
    token = int(numpy_gpt2(grown, np.array(ids), HF_SHAPE["n_layer"], HF_SHAPE["n_head"])[-1].argmax())
    if token == tokenizer.eot: break
    continuation.append(token)
    ids.append(token)
  assert continuation and proc.stdout == "Hello" + tokenizer.decode(continuation) + "\n", proc.stdout


def test_an_own_bpe_model_exports_and_reads_back_with_its_tokenizer(tmp_path):
  """An Aurora model with its own BPE (what --tokenizer bpe trains), exported and loaded again: the same tokenizer
  and the same logits, and chat.py continues text with it exactly as with the run it came from."""
  tokenizer = train_bpe([sample_text()], 300)
  model = make_model(tokenizer)
  run = save_run(tmp_path / "run", model, tokenizer, "pretrain")
  assert export([str(run), str(tmp_path / "exported")]) == 0
  assert (tmp_path / "exported" / "aurora_tokenizer.json").is_file()
  back, back_tokenizer, record = checkpoint.load_model(tmp_path / "exported")
  assert record.stage == "gpt2" and back_tokenizer.fingerprint() == tokenizer.fingerprint() and back.cfg.vocab_size == tokenizer.n_vocab
  ids = Tensor([tokenizer.encode("the cat sat on a mat while dogs ran past naïve café 🙂")])
  np.testing.assert_array_equal(back(ids).numpy(), model(ids).numpy())
  greedy = ["--complete", "the cat", "--temperature", "0", "--repetition-penalty", "1", "--max-tokens", "8"]
  exported, original = chat("--checkpoint", tmp_path / "exported", *greedy), chat("--checkpoint", run, *greedy)
  assert exported.returncode == 0 and original.returncode == 0, exported.stderr + original.stderr
  continuation = tokenizer.decode(greedy_tokens(model, tokenizer.encode("the cat"), 8, {tokenizer.eot}))
  assert continuation and exported.stdout == original.stdout == f"the cat{continuation}\n"


def test_chat_and_train_report_a_bad_gpt2_folder_in_one_line(tmp_path):
  folder = write_hf_folder(tmp_path / "llama", hf_tensors(**HF_SHAPE), model_type="llama")
  assert_one_line_error(train("--stage", "sft", "--init", folder), "not a GPT-2 checkpoint")
  assert_one_line_error(chat("--checkpoint", folder), "not a GPT-2 checkpoint")
