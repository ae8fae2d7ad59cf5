"""`aurora`: one command for every job. Each job's module is imported only when it runs, so `aurora --help` and a
job's --help stay instant."""
import importlib, sys

JOBS = {  # name: (module under aurora_tg.cli, its entry point, what it does)
  "train": ("train", "main", "pretrain a model, or fine-tune one (SFT, LoRA, distillation)"),
  "chat": ("chat", "main", "talk to a trained model"),
  "serve": ("chat", "serve_main", "serve a model over an OpenAI-compatible API with a web chat page"),
  "prepare": ("prepare", "main", "tokenize a corpus into token shards for training"),
  "eval": ("eval", "main", "evaluate a model: HellaSwag accuracy or bits per byte"),
  "export": ("export", "main", "write a model as a Hugging Face GPT-2 folder, a quantized checkpoint or a GGUF file"),
  "plot": ("plot", "main", "overlay several runs' loss curves in one PNG"),
}
USAGE = "usage: aurora {" + ",".join(JOBS) + "} [--help] ...\n\njobs:\n" + \
        "\n".join(f"  {name:<8} {what}" for name, (_, _, what) in JOBS.items()) + "\n\n`aurora JOB --help` lists a job's flags."


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if not argv or argv[0] in ("-h", "--help"):
    print(USAGE)
    return 0 if argv else 2
  if argv[0] not in JOBS:
    print(f"{USAGE}\n\nerror: unknown job {argv[0]!r}; choose from {', '.join(JOBS)}", file=sys.stderr)
    return 2
  module, entry, _ = JOBS[argv[0]]
  return getattr(importlib.import_module(f"aurora_tg.cli.{module}"), entry)(argv[1:], prog=f"aurora {argv[0]}")


if __name__ == "__main__": sys.exit(main())
