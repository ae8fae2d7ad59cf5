"""`aurora chat` (and `python chat.py`): talk to a trained model; `aurora serve` (and `chat.py --serve`): serve it over
an OpenAI-compatible API with a web chat page."""
import argparse, sys
from aurora_tg import UserError
from aurora_tg.cli.errors import run


def parser(prog: str = "aurora chat", serving: bool = False) -> argparse.ArgumentParser:
  """chat's flags; serving: `aurora serve`'s, which are chat's without the conversation's and with --serve implied."""
  p = argparse.ArgumentParser(prog=prog, description="Serve an Aurora model over an OpenAI-compatible API and a web chat page."
                              if serving else "Chat with an Aurora model.")
  p.add_argument("--checkpoint", help="a run folder, a checkpoint file, a Hugging Face GPT-2 folder, or a hub model id such as gpt2 "
                 "(default: the newest under runs/)")
  p.add_argument("--device", help="tinygrad backend: CPU, CL, CUDA, METAL, ... (default: tinygrad's pick); without a GPU, "
                 "CL (PoCL) decodes fastest at most sizes (README)")
  if not serving:
    p.add_argument("-p", "--prompt", nargs="?", const="-", help="answer one question and exit; without TEXT, read it from stdin")
    p.add_argument("--complete", metavar="TEXT", help="continue raw text instead of chatting (for base models)")
    p.add_argument("--system", help="system prompt")
  defaults = " (a request's default)" if serving else ""
  p.add_argument("--temperature", type=float, default=0.7, help="0 picks the most likely token (greedy)" + defaults)
  p.add_argument("--top-k", type=int, default=50, help="sample from the k most likely tokens (0: all)" + defaults)
  p.add_argument("--top-p", type=float, default=0.95, help="sample from the smallest set with this much probability" + defaults)
  p.add_argument("--repetition-penalty", type=float, default=1.1, help="divide the logits of tokens already used (1: off)" + defaults)
  p.add_argument("--max-tokens", type=int, default=256, help="longest answer, in tokens" + (" (bounds a request's max_tokens)" if serving else ""))
  p.add_argument("--seed", type=int, help="make sampling reproducible")
  p.add_argument("--quantize", help="float16 or int8: decode with quantized weights (fewer bytes read per token)")
  p.add_argument("--beam", type=int, default=0, metavar="N", help="search N kernel variants per decoding kernel as it first "
                 "compiles (tinygrad's BEAM): minutes the first time, cached after; decoding is then faster (see "
                 "bench/results/decode.md for the gains measured)")
  if not serving:
    p.add_argument("--serve", action="store_true", help="serve an OpenAI-compatible API and a web chat page instead, as `aurora serve` "
                   "does (the sampling flags become the defaults of requests that leave them out; --max-tokens bounds a request's max_tokens)")
  p.add_argument("--host", default="127.0.0.1", help="address to serve on (another than this machine's needs --api-key)")
  p.add_argument("--port", type=int, default=8000, help="port to serve on")
  p.add_argument("--api-key", help="require this key (Authorization: Bearer KEY) on every API request")
  p.add_argument("--slots", type=int, default=8, help="requests decoded together; more wait, up to as many again")
  if serving: p.set_defaults(serve=True, prompt=None, complete=None, system=None)
  return p


def sampling_from(args):
  from aurora_tg.inference.sampling import Sampling
  if args.temperature < 0: raise UserError(f"--temperature must be 0 or more, got {args.temperature}")
  if args.top_k < 0: raise UserError(f"--top-k must be 0 or more, got {args.top_k}")
  if not 0 < args.top_p <= 1: raise UserError(f"--top-p must be in (0, 1], got {args.top_p}")
  if args.repetition_penalty <= 0: raise UserError(f"--repetition-penalty must be positive, got {args.repetition_penalty}")
  if args.max_tokens < 1: raise UserError(f"--max-tokens must be at least 1, got {args.max_tokens}")
  return Sampling(args.temperature, args.top_k, args.top_p, args.repetition_penalty, args.max_tokens, args.seed)


def chat_command(args) -> int:
  from aurora_tg.backends import cpu_queue
  cpu_queue.use_for_decoding(args.device)  # before tinygrad is imported, which reads it once
  from aurora_tg.backends import devices  # tinygrad after parsing, so --help stays instant
  from aurora_tg.formats import checkpoint
  from aurora_tg.inference import conversation
  from aurora_tg.inference.loading import load_model
  sampling = sampling_from(args)
  if args.beam < 0: raise UserError(f"--beam must be 0 (off) or more, got {args.beam}")
  if args.serve:
    from aurora_tg.inference import server
    server.check(args.host, args.api_key, args.slots)
  device = devices.select_device(args.device)
  devices.tune_for_decoding()
  path = checkpoint.resolve(checkpoint.locate(args.checkpoint)) if args.checkpoint else checkpoint.newest()
  model, tokenizer, record = load_model(path, args.quantize)
  model.wte.pad_rows()  # for the LM head's matvec kernel; this model is never trained or saved
  if args.beam: print(f"searching {args.beam} kernel variants per decoding kernel as they compile (once: tinygrad caches them) ...", file=sys.stderr, flush=True)
  if args.serve:
    name = checkpoint.run_folder(path).name
    return server.serve(model, tokenizer, name, sampling, args.host, args.port, args.api_key, args.slots, args.beam)
  if args.complete is not None: return conversation.complete(model, tokenizer, args.complete, sampling, args.beam)
  session = conversation.ChatSession(model, tokenizer, sampling, args.system, args.beam)
  if args.prompt is not None: return conversation.one_shot(session, args.prompt)
  note = ("\nnote: this model is only pretrained: it continues text rather than answers. Use --complete, or fine-tune "
          f"it for chat: python train.py --stage sft --init {checkpoint.run_folder(path)}" if record.stage in ("pretrain", "gpt2") else "")
  conversation.interactive(session, f"Aurora chat | {path} | {device} | context {model.cfg.block_size} tokens | /help for commands{note}")
  return 0


def main(argv=None, prog: str = "aurora chat", serving: bool = False) -> int:
  args = parser(prog, serving).parse_args(argv)
  sys.stdout.reconfigure(errors="replace")  # a terminal that cannot show a character gets "?", not a crash
  return run(lambda: chat_command(args))


def serve_main(argv=None, prog: str = "aurora serve") -> int:
  return main(argv, prog, serving=True)
