"""GPT-2 interop end to end: fine-tune a Hugging Face GPT-2 folder through train.py, export it, read it back."""
import json
import numpy as np
import pytest
from tinygrad.nn.state import get_state_dict
from aurora_tg import checkpoint
from aurora_tg.export import main as export
from aurora_tg.model import GPT, GPTConfig
from aurora_tg.tokenizer import gpt2
from conftest import TEST_SHAPE
from test_hf import HF_SHAPE, hf_tensors, write_hf_folder
from test_chat import chat
from test_train_cli import assert_one_line_error, train


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


@pytest.mark.parametrize("arch", [dict(pos="rope"), dict(norm="rmsnorm"), dict(mlp="swiglu")])
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
  folder = write_hf_folder(tmp_path / "gpt2", hf_tensors(**HF_SHAPE))
  proc = chat("--checkpoint", folder, "--complete", "Hello", "--max-tokens", "4", "--temperature", "0")
  assert proc.returncode == 0 and proc.stdout.startswith("Hello"), proc.stdout + proc.stderr


def test_chat_and_train_report_a_bad_gpt2_folder_in_one_line(tmp_path):
  folder = write_hf_folder(tmp_path / "llama", hf_tensors(**HF_SHAPE), model_type="llama")
  assert_one_line_error(train("--stage", "sft", "--init", folder), "not a GPT-2 checkpoint")
  assert_one_line_error(chat("--checkpoint", folder), "not a GPT-2 checkpoint")
