"""`python chat.py --serve` as clients see it: a live server in its own process on a free port, driven by the
official openai package (raw HTTP only where no client would send it: broken JSON, an oversized body) and by a real
headless Chromium for the web page. Answers are checked against greedy decoding recomputed here in full."""
import json, shutil, socket, subprocess, sys, threading, time
import pytest
from aurora_tg.inference.conversation import stop_tokens
from aurora_tg.data.tokenizer import train_bpe
import chat as chat_script
from conftest import ROOT, run_main, sample_text
from test_chat import greedy_tokens, make_model, save_run
from test_train import assert_one_line_error

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
KEY, MAX_TOKENS, BLOCK = "test-key-123", 40, 128
QUESTIONS = ["the cat sat", "a bird sang on a mat", "dogs ran past the café", "naïve cat", "the mat", "while dogs ran",
             "🙂 and a bird", "sat on a mat while"]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  """The server process, with greedy defaults (so the web page's answers are deterministic) and an API key."""
  tokenizer = train_bpe([sample_text()], 300)
  model = make_model(tokenizer, BLOCK)  # a context long enough that an answer runs for a while
  run = save_run(tmp_path_factory.mktemp("serve") / "served", model, tokenizer, "sft")
  port = free_port()
  proc = subprocess.Popen([sys.executable, "chat.py", "--serve", "--checkpoint", str(run), "--port", str(port), "--api-key", KEY,
                           "--temperature", "0", "--repetition-penalty", "1", "--max-tokens", str(MAX_TOKENS)],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  lines = []
  for line in proc.stdout:  # compiling the batched step comes first
    lines.append(line)
    if line.startswith("serving"): break
  assert proc.poll() is None, "".join(lines)
  threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep draining its output
  base = f"http://127.0.0.1:{port}"
  yield base, openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0), model, tokenizer
  proc.terminate()
  assert proc.wait(timeout=30) == 0


def reference(model, tokenizer, question: str, max_tokens: int = MAX_TOKENS) -> tuple[list[int], list[int]]:
  """(prompt ids, greedy answer ids) for a one-question chat, recomputed without a cache or a batch."""
  ids, _ = tokenizer.render_chat([{"role": "user", "content": question}], add_generation_prompt=True)
  return ids, greedy_tokens(model, ids, max_tokens, stop_tokens(tokenizer))


def ask(client, question: str, **kw):
  return client.chat.completions.create(model="served", messages=[{"role": "user", "content": question}], temperature=0, **kw)


def test_models_and_a_chat_completion(server):
  _, client, model, tokenizer = server
  assert [m.id for m in client.models.list().data] == ["served"]
  ids, answer = reference(model, tokenizer, QUESTIONS[0])
  r = ask(client, QUESTIONS[0])
  assert r.choices[0].message.content == tokenizer.decode(answer) and r.choices[0].message.role == "assistant"
  assert r.choices[0].finish_reason == ("length" if len(answer) == MAX_TOKENS else "stop")
  assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (len(ids), len(answer), len(ids) + len(answer))


def test_a_streamed_chat_completion(server):
  _, client, model, tokenizer = server
  ids, answer = reference(model, tokenizer, QUESTIONS[1], 12)
  chunks = list(ask(client, QUESTIONS[1], max_tokens=12, stream=True, stream_options={"include_usage": True}))
  deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
  assert "".join(deltas) == tokenizer.decode(answer) and sum(bool(d) for d in deltas) > 1  # it came in pieces
  assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
  assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12 and chunks[-1].usage.prompt_tokens == len(ids)


def test_a_text_completion_and_stop(server):
  _, client, model, tokenizer = server
  prompt = tokenizer.encode("the cat sat on")
  text = tokenizer.decode(greedy_tokens(model, prompt, 20, stop_tokens(tokenizer)))
  r = client.completions.create(model="served", prompt="the cat sat on", max_tokens=20, temperature=0)
  assert r.choices[0].text == text and r.usage.prompt_tokens == len(prompt)
  stop = text[len(text) // 2:len(text) // 2 + 2]  # two characters from the middle
  r = client.completions.create(model="served", prompt="the cat sat on", max_tokens=20, temperature=0, stop=[stop, "\x00never"])
  assert r.choices[0].text == text[:text.find(stop)] and r.choices[0].finish_reason == "stop"
  streamed = client.completions.create(model="served", prompt="the cat sat on", max_tokens=20, temperature=0, stop=stop, stream=True)
  assert "".join(c.choices[0].text for c in streamed) == text[:text.find(stop)]


def test_seeded_sampling_replays(server):
  _, client, _, _ = server
  answers = [client.chat.completions.create(model="served", messages=[{"role": "user", "content": QUESTIONS[2]}], max_tokens=16,
                                            temperature=1.0, top_p=0.9, seed=s, extra_body={"top_k": 20}).choices[0].message.content
             for s in (7, 7, 8, 9)]
  assert answers[0] == answers[1] and len(set(answers)) > 1


def test_eight_concurrent_requests_each_answer_as_alone(server):
  _, client, _, _ = server
  alone = [ask(client, q).choices[0].message.content for q in QUESTIONS]
  together = [None] * len(QUESTIONS)
  def one(i): together[i] = ask(client, QUESTIONS[i]).choices[0].message.content
  threads = [threading.Thread(target=one, args=(i,)) for i in range(len(QUESTIONS))]
  for t in threads: t.start()
  for t in threads: t.join()
  assert together == alone and len(set(alone)) > 1


def status(base):
  return httpx.get(base + "/v1/status", headers={"Authorization": f"Bearer {KEY}"}).json()


def test_a_disconnect_mid_stream_frees_its_slot(server):
  """The server notices a client that left and frees its slot before the answer ends. An answer of MAX_TOKENS takes
  only tens of milliseconds here, and on a busy machine it can end before the server looks (every 16 tokens, or
  while waiting), so the client leaves up to five times: a server that never notices fails every one."""
  base = server[0]
  for _ in range(5):
    before = status(base)["cancelled"]
    with httpx.stream("POST", base + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=30,
                      json={"model": "served", "prompt": "the", "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True}) as r:
      next(r.iter_lines())  # the first token arrived; the client leaves
    deadline = time.time() + 10
    while (now := status(base))["active"]:
      assert time.time() < deadline, now
      time.sleep(0.05)
    if now["cancelled"] == before + 1: return
  pytest.fail(f"five clients left after their first token and the server counted none of them cancelled: {now}")


def test_errors_get_their_status_and_an_error_body(server):
  base, client, _, _ = server
  with pytest.raises(openai.NotFoundError) as e: client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}])
  assert e.value.body["code"] == "model_not_found"
  with pytest.raises(openai.BadRequestError) as e: ask(client, "x", top_p=1.5)
  assert e.value.body["param"] == "top_p"
  with pytest.raises(openai.BadRequestError) as e: ask(client, "x", n=2)
  assert "n=2" in e.value.body["message"]
  with pytest.raises(openai.BadRequestError) as e: ask(client, "x", max_tokens=MAX_TOKENS + 1)
  assert e.value.body["param"] == "max_tokens"
  with pytest.raises(openai.BadRequestError) as e: client.completions.create(model="served", prompt="the cat " * 200, max_tokens=5)
  assert e.value.body["code"] == "context_length_exceeded"
  other = openai.OpenAI(base_url=base + "/v1", api_key="wrong-key", max_retries=0)
  with pytest.raises(openai.AuthenticationError) as e: other.models.list()
  assert e.value.body["code"] == "invalid_api_key"
  r = httpx.get(base + "/v1/models")  # no key at all: the openai client refuses to send that
  assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
  auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
  r = httpx.post(base + "/v1/chat/completions", content=b'{"model": "served", "messages": [', headers=auth)
  assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
  r = httpx.post(base + "/v1/completions", content=json.dumps({"model": "served", "prompt": "x" * (2 << 20)}), headers=auth)
  assert r.status_code == 413 and r.json()["error"]["message"]
  chunked = iter([b'{"model": "served", "prompt": "', b"x" * (2 << 20), b'"}'])  # no Content-Length to go by
  assert httpx.post(base + "/v1/completions", content=chunked, headers=auth).status_code == 413
  r = httpx.post(base + "/v1/completions", content=b'{"model": "served", "prompt": "a", "temperature": NaN}', headers=auth)
  assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"
  with pytest.raises(openai.BadRequestError) as e: ask(client, "x", seed=-1)
  assert e.value.body["param"] == "seed"
  r = httpx.post(base + "/v1/completions", content=json.dumps({"model": "served", "prompt": "a"}), headers={**auth, "Content-Type": "text/plain"})
  assert r.status_code == 415  # what a foreign web page could send to localhost without a preflight


def test_a_long_conversation_is_trimmed_as_the_terminal_chat_does(server):
  _, client, _, tokenizer = server
  long = [{"role": "user", "content": sample_text(60, seed=i)} for i in range(6)]
  turns = [m for pair in zip(long, [{"role": "assistant", "content": "ok"}] * 6) for m in pair] + [{"role": "user", "content": "the cat"}]
  r = client.chat.completions.create(model="served", messages=turns, max_tokens=10, temperature=0)
  assert r.usage.prompt_tokens <= BLOCK - 10  # the oldest turns made way


@pytest.mark.parametrize("flags, fragment", [(["--host", "0.0.0.0"], "--api-key"), (["--slots", "0"], "--slots"), (["--beam", "-1"], "--beam")])
def test_unsafe_or_impossible_servers_are_refused(flags, fragment):
  proc = run_main(chat_script.main, ["--serve", *flags, "--checkpoint", "does-not-matter"])
  assert_one_line_error(proc, fragment)


@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")), reason="needs Debian's chromium and chromium-driver")
def test_the_web_page_streams_an_answer_in_a_real_browser(server):
  """Type a question in the page (with the API key), and the model's greedy answer appears in the log."""
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import WebDriverWait
  base, _, model, tokenizer = server
  _, answer = reference(model, tokenizer, QUESTIONS[3])
  options = webdriver.ChromeOptions()
  for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"): options.add_argument(flag)
  options.binary_location = shutil.which("chromium")
  driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
  try:
    driver.get(base + "/")
    driver.find_element(By.ID, "key").send_keys(KEY)
    driver.execute_script("document.getElementById('key').dispatchEvent(new Event('change'))")
    WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "model").text == "model: served")
    driver.find_element(By.ID, "question").send_keys(QUESTIONS[3] + "\n")
    answered = lambda d: d.find_element(By.ID, "send").is_enabled() and d.find_elements(By.CSS_SELECTOR, ".assistant")
    WebDriverWait(driver, 60).until(answered)
    texts = lambda selector: driver.execute_script(f"return [...document.querySelectorAll('{selector}')].map(e => e.textContent)")
    assert texts(".user") == [QUESTIONS[3]] and texts(".assistant") == [tokenizer.decode(answer)]
  finally: driver.quit()
