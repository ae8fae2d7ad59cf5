"""Serving throughput: `chat.py --serve` on one model (random weights in a preset's shape), driven by 1, 4 and 8
concurrent streaming clients (the official openai package, a thread each), in one run. Prints aggregate tokens/s and
time to the first token (median and 95th percentile), each against one client's.

  python bench/serve.py [--size small] [--requests 4] [--tokens 64] [--device CL]
"""
import argparse, socket, subprocess, sys, tempfile, threading, time
from pathlib import Path
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from decode import make_run  # bench/decode.py's: the preset's shape with random weights, saved as a run


def client_round(client, clients: int, requests: int, tokens: int) -> tuple[float, list[float], int]:
  """`clients` threads, each streaming `requests` completions one after another: (wall seconds, each request's
  time to its first token, tokens generated in all)."""
  firsts, counts = [], []

  def one_client(i: int):
    for r in range(requests):
      start, first, n = time.perf_counter(), None, 0
      stream = client.completions.create(model="bench", prompt=f"The {i} module {r} provides", max_tokens=tokens, temperature=0,
                                         stream=True, stream_options={"include_usage": True})
      for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].text: first = time.perf_counter() - start
        if chunk.usage: n = chunk.usage.completion_tokens
      firsts.append(first if first is not None else time.perf_counter() - start)
      counts.append(n)

  threads = [threading.Thread(target=one_client, args=(i,)) for i in range(clients)]
  start = time.perf_counter()
  for t in threads: t.start()
  for t in threads: t.join()
  return time.perf_counter() - start, firsts, sum(counts)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--size", default="small")
  p.add_argument("--requests", type=int, default=4, help="requests per client, one after another")
  p.add_argument("--tokens", type=int, default=64, help="max_tokens of each request")
  p.add_argument("--device", help="tinygrad backend for the server")
  args = p.parse_args()
  import openai
  with tempfile.TemporaryDirectory() as tmp:
    run = make_run(Path(tmp), args.size)
    # the bench model is "bench": the run folder's name
    (Path(tmp) / "bench").symlink_to(run)
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      port = s.getsockname()[1]
    command = [sys.executable, "chat.py", "--serve", "--checkpoint", str(Path(tmp) / "bench"), "--port", str(port),
               "--slots", "8", "--max-tokens", str(args.tokens)] + (["--device", args.device] if args.device else [])
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
      start = time.perf_counter()
      for line in server.stdout:
        if line.startswith("serving"): break
      else: raise SystemExit("the server did not start")
      threading.Thread(target=server.stdout.read, daemon=True).start()
      print(f"server ready in {time.perf_counter() - start:.1f} s (loading and compiling), preset {args.size}, 8 slots, "
            f"{args.requests} streamed requests of {args.tokens} tokens per client")
      client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
      client_round(client, 1, 1, 4)  # one request through HTTP first
      print("| clients | aggregate tokens/s | x one client | time to first token, median (ms) | p95 (ms) | median x one client |")
      print("|---|---|---|---|---|---|")
      base = None
      for clients in (1, 4, 8):
        wall, firsts, n = client_round(client, clients, args.requests, args.tokens)
        rate, median, p95 = n / wall, float(np.median(firsts)) * 1e3, float(np.percentile(firsts, 95)) * 1e3
        base = base or (rate, median)
        print(f"| {clients} | {rate:.0f} | {rate / base[0]:.2f}x | {median:.0f} | {p95:.0f} | {median / base[1]:.2f}x |", flush=True)
    finally:
      server.terminate()
      server.wait(timeout=30)


if __name__ == "__main__":
  main()
