"""`python chat.py --serve`: an OpenAI-compatible HTTP API (models, chat completions, text completions; streamed as
server-sent events or not) and a web chat page, over the batched engine (aurora_tg/inference/engine.py). FastAPI and
uvicorn (the `serve` extra) do HTTP; this module maps the OpenAI protocol onto Aurora's tokens and sampling."""
import asyncio, codecs, hmac, itertools, json, math, sys, threading, time, uuid
from dataclasses import dataclass, replace
from pathlib import Path
from aurora_tg import UserError
from aurora_tg.inference.engine import Busy, Engine, Request
from aurora_tg.inference.conversation import fit_context, stop_tokens
from aurora_tg.inference.sampling import Sampling
from aurora_tg.data.tokenizer import Tokenizer

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_BODY = 1 << 20    # bytes of a request body
MAX_STOPS = 4         # stop strings per request, as OpenAI allows
MAX_DEPTH = 32        # nesting of a request body; OpenAI's deepest field, messages[i].content[j].text, is 4 down
# fields the protocol defines that Aurora accepts only at the value that means "off"; anything else is a 400
NEUTRAL = {"n": 1, "presence_penalty": 0, "frequency_penalty": 0, "logprobs": None, "echo": False, "best_of": 1,
           "suffix": None, "logit_bias": None, "top_logprobs": None, "tools": None, "tool_choice": None,
           "response_format": None, "parallel_tool_calls": None}
COMMON = {"model", "max_tokens", "temperature", "top_p", "stop", "seed", "stream", "stream_options", "user",
          "top_k", "repetition_penalty"}  # top_k and repetition_penalty: Aurora's sampler (as vLLM accepts them)
FIELDS = {"chat": COMMON | {"messages", "max_completion_tokens"}, "text": COMMON | {"prompt"}}
PAGE = Path(__file__).with_name("chat_page.html")


class ApiError(Exception):
  def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None, kind: str = "invalid_request_error"):
    super().__init__(message)
    self.status, self.body = status, {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclass(frozen=True)
class Job:
  """One validated request: its prompt, how to sample, where to stop."""
  ids: list[int]
  sampling: Sampling
  stops: tuple[str, ...]
  stream: bool
  usage_in_stream: bool


def shown(value) -> str:
  """A client's value quoted in an error message, cut short: the body it came in may be a megabyte."""
  text = repr(value)
  return text if len(text) <= 80 else text[:77] + "..."


def too_deep(value, limit: int) -> bool:
  """Whether lists and objects nest over `limit` deep, walked a level at a time: recursion is what deep JSON breaks."""
  level = [value]
  for _ in range(limit):
    level = [v for c in level if isinstance(c, (list, dict)) for v in (c.values() if isinstance(c, dict) else c)]
  return any(isinstance(c, (list, dict)) for c in level)


def load(raw: bytes) -> dict:
  """The request body: a JSON object, nested no deeper than MAX_DEPTH. Python's json decodes by recursion, so a body
  nested about a thousand deep raises RecursionError (not ValueError); one limit below that, whatever the stack's
  depth, gives every deep body the same 400 and keeps what follows (repr() in error messages) off the edge."""
  deep = ApiError(400, f"the request body nests lists and objects over {MAX_DEPTH} deep")
  try: body = json.loads(raw)
  except RecursionError: raise deep from None
  except ValueError as e: raise ApiError(400, f"the request body is not valid JSON: {e}") from None  # bad UTF-8 and 10**5000 too
  if too_deep(body, MAX_DEPTH): raise deep
  if not isinstance(body, dict): raise ApiError(400, "the request body must be a JSON object")
  return body


def number(body: dict, name: str, default, kind=float, low=None, high=None, low_open=False):
  value = body.get(name)
  if value is None: return default
  # JSON's numbers are unbounded: 1e400 parses as inf, and 10**400 as an int that no float holds (float() would raise)
  finite = (isinstance(value, float) and math.isfinite(value)) or (type(value) is int and abs(value) <= sys.float_info.max)
  if not finite or (kind is int and value != int(value)):
    raise ApiError(400, f"{name} must be {'an integer' if kind is int else 'a number'}, got {shown(value)}", name)
  if (low is not None and (value <= low if low_open else value < low)) or (high is not None and value > high):
    raise ApiError(400, f"{name} must be {'above' if low_open else 'at least'} {low}{f' and at most {high}' if high is not None else ''}, got {value}", name)
  return kind(value)


def flag(body: dict, name: str, param: str) -> bool:
  """A true/false field: truthiness would read "false" (a string) as true."""
  value = body.get(name)
  if value is not None and not isinstance(value, bool): raise ApiError(400, f"{name} must be true or false, got {shown(value)}", param)
  return bool(value)


def text_of(content, where: str) -> str:
  """A message's content: a string, or OpenAI's list of text parts."""
  if isinstance(content, str): return content
  if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
    return "".join(p["text"] for p in content)
  raise ApiError(400, f"{where} must be a string or a list of text parts (Aurora reads text only)", "messages")


class Protocol:
  """The OpenAI request and response formats for one served model."""
  def __init__(self, tokenizer: Tokenizer, block_size: int, name: str, defaults: Sampling):
    self.tokenizer, self.block, self.name, self.defaults = tokenizer, block_size, name, defaults
    self.stop_ids = stop_tokens(tokenizer)

  def parse(self, raw: bytes, kind: str) -> Job:
    body = load(raw)
    for name, value in body.items():
      off = value is None or value == NEUTRAL.get(name) or (NEUTRAL.get(name) is None and not value)  # logprobs: false is off too
      if name in NEUTRAL and not off: raise ApiError(400, f"{name}={shown(value)} is not supported by this server", name, "unsupported_parameter")
      if name not in NEUTRAL and name not in FIELDS[kind]: raise ApiError(400, f"unknown or unsupported parameter {shown(name)}", name, "unsupported_parameter")
    if body.get("model") != self.name: raise ApiError(404, f"the model {shown(body.get('model'))} does not exist; this server has {self.name!r}", "model", "model_not_found")
    d = self.defaults
    limit = d.max_tokens
    max_tokens = number(body, "max_completion_tokens", None, int, 1, limit)
    max_tokens = number(body, "max_tokens", max_tokens or (limit if kind == "chat" else min(16, limit)), int, 1, limit)
    seed = number(body, "seed", None, int, 0, 2 ** 63 - 1)
    sampling = replace(d, temperature=number(body, "temperature", d.temperature, float, 0, 2),
                       top_p=number(body, "top_p", d.top_p, float, 0, 1, low_open=True), top_k=number(body, "top_k", d.top_k, int, 0, self.tokenizer.n_vocab),
                       repetition_penalty=number(body, "repetition_penalty", d.repetition_penalty, float, 0, low_open=True),
                       max_tokens=max_tokens, seed=seed if seed is not None else d.seed)
    stops = body.get("stop") or []
    if isinstance(stops, str): stops = [stops]
    if not isinstance(stops, list) or len(stops) > MAX_STOPS or not all(isinstance(s, str) and s for s in stops):
      raise ApiError(400, f"stop must be a non-empty string or a list of at most {MAX_STOPS} of them", "stop")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict): raise ApiError(400, "stream_options must be an object", "stream_options")
    ids = self.chat_prompt(body, max_tokens) if kind == "chat" else self.text_prompt(body)
    return Job(ids, sampling, tuple(stops), flag(body, "stream", "stream"), flag(options, "include_usage", "stream_options"))

  def chat_prompt(self, body: dict, max_tokens: int) -> list[int]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages: raise ApiError(400, "messages must be a non-empty list", "messages")
    turns = []
    for i, m in enumerate(messages):
      role = m.get("role") if isinstance(m, dict) else None
      if role not in ("system", "user", "assistant"): raise ApiError(400, f"messages[{i}].role must be system, user or assistant, got {shown(role)}", "messages")
      turns.append({"role": role, "content": text_of(m.get("content"), f"messages[{i}].content")})
    # the terminal chat's rule: the answer keeps at least half the context (or max_tokens); the oldest turns make way
    try: return fit_context(self.tokenizer, turns, self.block - min(max_tokens, self.block // 2))
    except UserError as e: raise ApiError(400, str(e), "messages", "context_length_exceeded") from None

  def text_prompt(self, body: dict) -> list[int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1: prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt: raise ApiError(400, "prompt must be a non-empty string (one prompt per request)", "prompt")
    ids = self.tokenizer.encode(prompt)
    if len(ids) >= self.block:
      raise ApiError(400, f"the prompt is {len(ids)} tokens; the model's context holds {self.block}, with room for the answer", "prompt", "context_length_exceeded")
    return ids


class StopText:
  """Tokens to text as they come, cut at the first stop string. Text that could still begin a stop string is held
  back until it cannot; a character split across tokens waits for its last byte."""
  def __init__(self, tokenizer: Tokenizer, stops: tuple[str, ...]):
    self.tokenizer, self.stops = tokenizer, stops
    self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    self.pending, self.stopped = "", False

  def feed(self, token: int | None) -> str:
    """The text that is now safe to send; token None flushes the rest (the answer ended)."""
    self.pending += self.decoder.decode(self.tokenizer.decode_bytes([token])) if token is not None else self.decoder.decode(b"", final=True)
    hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
    if hits:
      self.stopped, out, self.pending = True, self.pending[:min(hits)], ""
      return out
    keep = 0 if token is None else max((n for s in self.stops for n in range(1, len(s)) if self.pending.endswith(s[:n])), default=0)
    out, self.pending = self.pending[:len(self.pending) - keep], self.pending[len(self.pending) - keep:]
    return out


def create_app(engine: Engine, protocol: Protocol, api_key: str | None):
  from fastapi import FastAPI, Request as HttpRequest
  from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
  from starlette.exceptions import HTTPException
  from starlette.requests import ClientDisconnect
  app = FastAPI(title="Aurora", docs_url=None, redoc_url=None, openapi_url=None)
  page_html = PAGE.read_text()

  def error(e: ApiError, headers=None): return JSONResponse(e.body, status_code=e.status, headers=headers)

  @app.exception_handler(HTTPException)
  async def routing_error(request: HttpRequest, e: HTTPException):
    """FastAPI's own 404 and 405 (a path or method no route has), in OpenAI's error body rather than {"detail": ...}."""
    return error(ApiError(e.status_code, f"{e.detail}: {request.method} {request.url.path}"), e.headers)

  @app.middleware("http")
  async def guard(request: HttpRequest, call_next):
    if request.url.path.startswith("/v1/"):
      if api_key is not None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), api_key.encode()):
          return error(ApiError(401, "a valid API key is required (Authorization: Bearer KEY)", code="invalid_api_key"))
      if int(request.headers.get("content-length") or 0) > MAX_BODY:
        return error(ApiError(413, f"the request body is over {MAX_BODY} bytes"))
      # a JSON body only: a web page on another site can send text/plain to localhost without asking, not JSON
      if request.method == "POST" and not request.headers.get("content-type", "").startswith("application/json"):
        return error(ApiError(415, "the request body must be JSON (Content-Type: application/json)"))
    return await call_next(request)

  @app.get("/", response_class=HTMLResponse)
  def page(): return page_html

  @app.get("/v1/models")
  def models(): return {"object": "list", "data": [{"id": protocol.name, "object": "model", "created": 0, "owned_by": "aurora"}]}

  @app.get("/v1/status")
  def status(): return engine.status()

  async def tokens(job: Job, http: HttpRequest):
    """Submit the job and yield (token, None) ... (None, finish reason). Leaving early (a client gone, a stop
    string) marks the request cancelled: the engine frees its slot before its next step."""
    loop, queue = asyncio.get_running_loop(), asyncio.Queue()
    request = Request(job.ids, job.sampling, protocol.stop_ids, lambda t, f: loop.call_soon_threadsafe(queue.put_nowait, (t, f)))
    engine.submit(request)
    try:
      for count in itertools.count():
        try: item = await asyncio.wait_for(queue.get(), timeout=1.0)
        except asyncio.TimeoutError: item = None
        # a client that left frees its slot: checked while waiting, and every 16 tokens
        if (item is None or count % 16 == 15) and await http.is_disconnected(): return
        if item is None: continue
        yield item
        if item[0] is None: return
    finally: request.cancelled = True

  async def complete(http: HttpRequest, kind: str):
    try:
      raw = b""
      async for part in http.stream():  # counted as it arrives: a body without Content-Length is bounded too
        raw += part
        if len(raw) > MAX_BODY: raise ApiError(413, f"the request body is over {MAX_BODY} bytes")
      job = protocol.parse(raw, kind)
      stream = tokens(job, http)
      first = await anext(stream)  # submits now, so a busy server answers 429 before any stream begins
    except ApiError as e: return error(e)
    except Busy as e: return error(ApiError(429, str(e), code="server_busy", kind="rate_limit_error"))
    except (StopAsyncIteration, ClientDisconnect): return error(ApiError(499, "the client closed the request"))  # nobody reads it
    ident, created = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}", int(time.time())
    text, produced = StopText(protocol.tokenizer, job.stops), 0

    async def pieces():
      nonlocal produced
      item = first
      while True:
        token, reason = item
        piece = text.feed(token)
        if token is not None: produced += 1
        if text.stopped: reason = "stop"
        elif reason is not None and reason.startswith("error"): raise RuntimeError(reason)
        yield piece, (None if reason is None else ("length" if reason == "length" else "stop"))
        if reason is not None or text.stopped: return
        item = await anext(stream)

    def usage(): return {"prompt_tokens": len(job.ids), "completion_tokens": produced, "total_tokens": len(job.ids) + produced}

    def choice(piece, reason, delta: bool):
      if kind == "text": return {"index": 0, "text": piece, "logprobs": None, "finish_reason": reason}
      if delta: return {"index": 0, "delta": {"content": piece} if piece else {}, "logprobs": None, "finish_reason": reason}
      return {"index": 0, "message": {"role": "assistant", "content": piece}, "logprobs": None, "finish_reason": reason}

    obj = "chat.completion" if kind == "chat" else "text_completion"
    head = {"id": ident, "created": created, "model": protocol.name, "system_fingerprint": None}
    if not job.stream:
      parts, finish = [], None
      try:
        async for piece, reason in pieces(): parts.append(piece); finish = reason
      except RuntimeError as e: return error(ApiError(500, str(e), kind="server_error"))
      finally: await stream.aclose()
      return {**head, "object": obj, "choices": [choice("".join(parts), finish, False)], "usage": usage()}

    async def events():
      chunk = obj + ".chunk" if kind == "chat" else obj
      try:
        if kind == "chat":
          yield f"data: {json.dumps({**head, 'object': chunk, 'choices': [{'index': 0, 'delta': {'role': 'assistant', 'content': ''}, 'finish_reason': None}]})}\n\n"
        async for piece, reason in pieces():
          if piece or reason: yield f"data: {json.dumps({**head, 'object': chunk, 'choices': [choice(piece, reason, True)]})}\n\n"
        if job.usage_in_stream: yield f"data: {json.dumps({**head, 'object': chunk, 'choices': [], 'usage': usage()})}\n\n"
        yield "data: [DONE]\n\n"
      except RuntimeError as e: yield f"data: {json.dumps(ApiError(500, str(e), kind='server_error').body)}\n\n"
      finally: await stream.aclose()
    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

  @app.post("/v1/chat/completions")
  async def chat_completions(http: HttpRequest): return await complete(http, "chat")

  @app.post("/v1/completions")
  async def completions(http: HttpRequest): return await complete(http, "text")

  return app


def check(host: str, api_key: str | None, slots: int):
  """Refuse a server that cannot run or should not, before the model loads."""
  try: import fastapi, uvicorn  # noqa: F401
  except ImportError: raise UserError("serving needs FastAPI and uvicorn: pip install 'aurora-tg[serve]'") from None
  if host not in LOCAL_HOSTS and not api_key: raise UserError(f"--host {host} opens the server to other machines; give it an --api-key")
  if slots < 1: raise UserError(f"--slots must be at least 1, got {slots}")


def serve(model, tokenizer: Tokenizer, name: str, defaults: Sampling, host: str, port: int, api_key: str | None, slots: int, beam: int = 0):
  """Serve until Ctrl-C or SIGTERM: uvicorn answers HTTP in a thread, and this thread decodes (Engine.run)."""
  import uvicorn  # chat.py ran check() before loading the model
  engine = Engine(model, slots, beam=beam)
  print(f"compiling the batched decode step for {slots} slots (tinygrad caches it for the next start) ...", flush=True)
  engine.warm_up()
  app = create_app(engine, Protocol(tokenizer, model.cfg.block_size, name, defaults), api_key)
  server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5))
  server.install_signal_handlers = lambda: None  # in a thread; the main thread's handlers stop the engine instead
  web = threading.Thread(target=server.run, name="aurora-http", daemon=True)
  web.start()
  while not server.started:
    if not web.is_alive(): raise UserError(f"cannot serve on {host}:{port} (is the port taken?)")
    time.sleep(0.05)
  shown = f"[{host}]" if ":" in host else host
  print(f"serving {name} at http://{shown}:{port}/ (web chat) and http://{shown}:{port}/v1 (OpenAI API) | {slots} slots | Ctrl-C stops", flush=True)
  import signal
  signal.signal(signal.SIGTERM, lambda *_: engine.stop())
  try: engine.run()
  except KeyboardInterrupt: pass
  server.should_exit = True
  web.join(timeout=5)
  return 0
