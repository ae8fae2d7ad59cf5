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
SERVER_LOG: list[str] = []  # what the server process printed (its uvicorn log included), line by line


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
  lines = SERVER_LOG
  for line in proc.stdout:  # compiling the batched step comes first
    lines.append(line)
    if line.startswith("serving"): break
  assert proc.poll() is None, "".join(lines)
  threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()  # keep draining (and keeping) its output
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


# the malformed requests no client library would send, as raw bytes over HTTP: each must get OpenAI's error body with
# a 4xx (never a 500), leave no traceback in the server's log, and leave the server answering good requests
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
DEEP = 100_000  # far past Python's recursion limit: the json module's recursive decoder raised RecursionError (a 500)


def post(base, path: str, body: bytes | str, **headers):
  return httpx.post(base + path, content=body.encode() if isinstance(body, str) else body, headers={**AUTH, **headers}, timeout=60)


def assert_api_error(r, status: int = 400, param: str | None = "any"):
  """OpenAI's error body, exactly its four fields, with the given status (and param, where one is given)."""
  assert r.status_code == status, (r.status_code, r.text[:300])
  error = r.json()["error"]
  assert set(r.json()) == {"error"} and set(error) == {"message", "type", "param", "code"}, r.text[:300]
  assert error["type"] == "invalid_request_error" and isinstance(error["message"], str) and len(error["message"]) < 300
  if param != "any": assert error["param"] == param, error


def still_serving(server, log_from: int):
  """A good request still gets its answer, and nothing since log_from logged a traceback."""
  _, client, model, tokenizer = server
  _, answer = reference(model, tokenizer, QUESTIONS[4], 8)
  assert ask(client, QUESTIONS[4], max_tokens=8).choices[0].message.content == tokenizer.decode(answer)
  time.sleep(0.2)  # uvicorn logs an exception after its 500 went out
  log = "".join(SERVER_LOG[log_from:])
  assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_deeply_nested_bodies_get_a_400_not_a_500(server, path):
  base, log_from = server[0], len(SERVER_LOG)
  nested = lambda n, inner="": "[" * n + inner + "]" * n
  bodies = [nested(DEEP), '{"a": ' * DEEP + "1" + "}" * DEEP,
            json.dumps({"model": "served", "messages": []})[:-2] + nested(DEEP) + "}",
            '{"model": "served", "prompt": ' + nested(DEEP, '"the cat"') + "}",
            '{"model": "served", "messages": [{"role": "user", "content": ' + nested(DEEP) + "}]}",
            '{"model": "served", "prompt": "a", "temperature": ' + nested(500) + "}",  # under the recursion limit: the same rule
            '{"model": "served", "n": ' + nested(500) + "}"]  # its value was quoted whole in the message
  for body in bodies:
    assert_api_error(post(base, path, body), 400, None)
  still_serving(server, log_from)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_bodies_that_are_not_a_json_object_get_a_400(server, path):
  base, log_from = server[0], len(SERVER_LOG)
  for body in ["[]", '[{"model": "served", "prompt": "a"}]', '"served"', "42", "-1.5", "null", "true", "", " ", "{", '{"model": "served",}',
               b'{"model": "served", "prompt": "\xff\xfe caf\xe9"}', b"\xff\xfe\xfd", b"\x00" * 8]:
    assert_api_error(post(base, path, body), 400, None)
  still_serving(server, log_from)


def test_numbers_out_of_a_floats_range_get_a_400_naming_their_field(server):
  """JSON's numbers have no bound: 1e400 parses as inf, NaN and Infinity as Python reads them, and an integer of
  hundreds of digits as an int that float() cannot convert (an OverflowError: a 500). Past 4300 digits Python's int
  parsing itself refuses (a ValueError), which is not valid JSON to this server either."""
  base, log_from = server[0], len(SERVER_LOG)
  huge = "9" * 400
  for field, value in [("temperature", "1e400"), ("temperature", "-1e400"), ("temperature", huge), ("temperature", "-" + huge),
                       ("top_p", "Infinity"), ("top_p", "NaN"), ("repetition_penalty", huge), ("repetition_penalty", "-Infinity"),
                       ("seed", huge), ("seed", "1e400"), ("top_k", huge), ("max_tokens", huge), ("max_tokens", "1e400")]:
    for path, ask_for in [("/v1/completions", '"prompt": "a"'), ("/v1/chat/completions", '"messages": [{"role": "user", "content": "a"}]')]:
      assert_api_error(post(base, path, f'{{"model": "served", {ask_for}, "{field}": {value}}}'), 400, field)
  assert_api_error(post(base, "/v1/completions", '{"model": "served", "prompt": "a", "seed": ' + "1" * 5000 + "}"), 400, None)
  assert_api_error(post(base, "/v1/completions", '{"model": "served", "prompt": "a", "n": 1e400}'), 400, "n")
  still_serving(server, log_from)


def test_fields_of_the_wrong_type_get_a_400(server):
  base, client, model, tokenizer = server
  log_from = len(SERVER_LOG)
  chat = lambda **fields: json.dumps({"model": "served", "messages": [{"role": "user", "content": "the cat"}], **fields})
  with_message = lambda message: json.dumps({"model": "served", "messages": [message]})
  for body, param in [(with_message({"role": "user", "content": 5}), "messages"), (with_message({"role": "user", "content": None}), "messages"),
                      (with_message({"role": "user", "content": {"text": "a"}}), "messages"),
                      (with_message({"role": "user", "content": [{"type": "text", "text": 5}]}), "messages"),
                      (with_message({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}), "messages"),
                      (with_message({"role": "user", "content": ["the cat"]}), "messages"),
                      (with_message({"role": ["user"], "content": "a"}), "messages"), (with_message({"role": {"a": 1}, "content": "a"}), "messages"),
                      (with_message("the cat"), "messages"), (with_message(None), "messages"), (with_message([["user", "a"]]), "messages"),
                      (json.dumps({"model": "served", "messages": {"role": "user", "content": "a"}}), "messages"),
                      (json.dumps({"model": "served", "messages": "the cat"}), "messages"),
                      (chat(stop={"a": 1}), "stop"), (chat(stop=[["a"]]), "stop"), (chat(stop=[5]), "stop"),
                      (chat(stream="yes"), "stream"), (chat(stream="false"), "stream"), (chat(stream=[]), "stream"),  # "false" was read as true
                      (chat(stream_options=[1]), "stream_options"), (chat(stream=True, stream_options={"include_usage": "no"}), "stream_options"),
                      (chat(temperature="0.5"), "temperature"), (chat(max_tokens=True), "max_tokens"), (chat(seed=[1]), "seed"),
                      (chat(n={"a": 1}), "n"), (chat(n=[[1]] * 100_000), "n"), (chat(**{"x" * 100_000: 1}), "x" * 100_000)]:
    assert_api_error(post(base, "/v1/chat/completions", body), 400, param)
  for prompt in [{"a": 1}, [1, 2, 3], [["the cat"]], 5, None, ""]:
    assert_api_error(post(base, "/v1/completions", json.dumps({"model": "served", "prompt": prompt})), 400, "prompt")
  for name in [["served"], {"id": "served"}, 5, None]:  # a model that is no string is a model this server does not have
    assert_api_error(post(base, "/v1/completions", json.dumps({"model": name, "prompt": "a"})), 404, "model")
  # what is valid stays valid: content as a list of text parts reads as its text
  _, answer = reference(model, tokenizer, "the cat", 8)
  parts = client.chat.completions.create(model="served", max_tokens=8, temperature=0, stream=False,
                                         messages=[{"role": "user", "content": [{"type": "text", "text": "the "}, {"type": "text", "text": "cat"}]}])
  assert parts.choices[0].message.content == tokenizer.decode(answer)
  still_serving(server, log_from)


def test_paths_and_methods_no_route_has_get_an_openai_error(server):
  base, log_from = server[0], len(SERVER_LOG)
  for method, path, status in [("GET", "/v1/nope", 404), ("POST", "/v1/nope", 404), ("POST", "/v1/models", 405),
                               ("GET", "/v1/chat/completions", 405), ("DELETE", "/v1/completions", 405), ("POST", "/", 405)]:
    assert_api_error(httpx.request(method, base + path, headers=AUTH, content=b"{}" if method == "POST" else None), status, None)
  still_serving(server, log_from)


def test_a_client_that_leaves_mid_body_leaves_no_traceback(server):
  """The body promised 1000 bytes and the client left after 20: reading it raised starlette's ClientDisconnect."""
  base, log_from = server[0], len(SERVER_LOG)
  host, port = base.removeprefix("http://").split(":")
  for path in ["/v1/chat/completions", "/v1/completions"]:
    with socket.create_connection((host, int(port))) as s:
      s.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
                f"Content-Length: 1000\r\n\r\n{{\"model\": \"served\", ".encode())
      time.sleep(0.3)  # the server is reading the body when the client goes
  time.sleep(0.5)
  still_serving(server, log_from)
