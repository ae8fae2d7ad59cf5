import pytest
from aurora_tg import UserError
from aurora_tg.data.tokenizer import Tokenizer, gpt2, train_bpe, SPECIAL_TOKENS
from conftest import sample_text

UNICODE = "Grüße, 世界! naïve café — emoji 🙂🚀, math ∑x², tabs\tand\nnewlines  "


def test_gpt2_round_trips_unicode():
  tok = gpt2()
  assert tok.decode(tok.encode(UNICODE)) == UNICODE
  assert tok.encode("Hello world") == [15496, 995]  # GPT-2's published ids
  assert tok.eot == 50256


def test_gpt2_chat_tokens_extend_the_vocabulary():
  tok = gpt2()
  ids = [tok.special(t) for t in SPECIAL_TOKENS[1:]]
  assert ids == list(range(50257, 50257 + len(ids))) and tok.n_vocab == 50257 + len(ids)


def test_trained_bpe_round_trips_and_reloads(tmp_path):
  tok = train_bpe([sample_text(3000)], 300)
  assert tok.n_vocab == 300
  assert tok.decode(tok.encode(UNICODE)) == UNICODE
  text = sample_text(50, seed=5)
  assert len(tok.encode(text)) < len(text.encode()) / 2  # merges learned from the corpus compress it
  tok.save(str(tmp_path / "tokenizer.json"))
  again = Tokenizer.load(str(tmp_path / "tokenizer.json"))
  assert again.encode(text) == tok.encode(text) and again.fingerprint() == tok.fingerprint()
  assert again.special("<|assistant|>") == tok.special("<|assistant|>")


def test_special_token_text_in_data_stays_plain_text():
  tok = train_bpe([sample_text(1000)], 300)
  ids = tok.encode("<|endoftext|>")
  assert tok.eot not in ids and tok.decode(ids) == "<|endoftext|>"


def test_too_small_vocabulary_is_a_user_error():
  with pytest.raises(UserError, match="too small"):
    train_bpe(["abc"], 100)


def test_unreadable_tokenizer_file(tmp_path):
  (tmp_path / "t.json").write_text("{not json")
  with pytest.raises(UserError, match="cannot read tokenizer"):
    Tokenizer.load(str(tmp_path / "t.json"))


def test_chat_template_marks_only_assistant_turns():
  tok = train_bpe([sample_text(1000)], 300)
  messages = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "the cat?"},
              {"role": "assistant", "content": "sat on a mat"}]
  ids, is_assistant = tok.render_chat(messages, add_generation_prompt=False)
  end = tok.special("<|end|>")
  assert ids[0] == tok.special("<|system|>") and ids.count(end) == 3 and ids[-1] == end
  answer = [i for i, a in zip(ids, is_assistant) if a]
  assert tok.decode(answer) == "sat on a mat<|end|>"
  prompt, _ = tok.render_chat(messages[:2], add_generation_prompt=True)
  assert prompt == ids[:len(prompt)] and prompt[-1] == tok.special("<|assistant|>")
  with pytest.raises(ValueError, match="role"):
    tok.render_chat([{"role": "robot", "content": "x"}])
