"""Pretrain an Aurora model: `python train.py` trains a small model on Python's own documentation."""
import argparse, sys

from aurora_tg import UserError


def parse_args(argv=None):
  p = argparse.ArgumentParser(description="Train an Aurora GPT model. Without --stage (and --data): pretrain, then "
                                          "chat fine-tune on conversations built from Python's documentation.")
  p.add_argument("--stage", help="run one stage: pretrain, sft (chat fine-tuning), lora, distill")
  p.add_argument("--init", help="the model fine-tuning starts from: an Aurora run folder or checkpoint, a Hugging Face GPT-2 folder "
                 "(config.json + model.safetensors or pytorch_model.bin), or a hub model id (gpt2, gpt2-medium, ...); "
                 "without --stage, chat fine-tunes it")
  p.add_argument("--device", help="tinygrad backend: CPU, CL, CUDA, METAL, ... (default: tinygrad's pick)")
  p.add_argument("--dtype", help="compute dtype: float32, or bfloat16/float16 for mixed precision (float32 weights "
                 "and optimizer state); default float32, bfloat16 for the gpt2 presets where the backend has it")
  p.add_argument("--devices", help="data parallel: a device list (CUDA:0,CUDA:1) or a count of --device's devices (8); "
                 "each takes an equal share of every batch")
  p.add_argument("--data", help="pretrain/distill: a text file, a folder, .jsonl(.gz/.zst) or .parquet with a text field, "
                                "hf:REPO[:FILES] (a Hugging Face dataset), fineweb-edu, tinystories, or a folder "
                                "python -m aurora_tg.prepare wrote (default: Python's bundled documentation); tokenized once "
                                "into cached shards; sft/lora: chat data, JSON lines or parquet in OpenAI messages, ShareGPT "
                                "or Alpaca format, a local file, hf:REPO[:FILES] or smoltalk (default: conversations built "
                                "from that documentation)")
  p.add_argument("--text-field", help="pretrain/distill: the JSON or parquet field holding the text (default text)")
  p.add_argument("--max-tokens", type=int, help="pretrain/distill: take only the first N tokens of --data")
  p.add_argument("--data-order", choices=("random", "sequential"), help="pretrain/distill: random windows (default), or a "
                 "sequential pass over the data in a seeded shard order, continued exactly by --resume")
  p.add_argument("--workers", type=int, help="processes that tokenize --data the first time (default: one per core)")
  p.add_argument("--out", help="run folder for checkpoint, tokenizer and metrics (default: runs/<size>)")
  p.add_argument("--size", help="model preset: tiny, small (default), medium, gpt2, gpt2-medium, gpt2-large, gpt2-xl")
  p.add_argument("--steps", type=int, help="optimizer steps (default: the preset's)")
  p.add_argument("--batch-size", type=int, help="sequences per micro-batch")
  p.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step")
  p.add_argument("--optimizer", help="aurora, aurora-riemannian, muon (hidden matrices; AdamW trains the rest), adamw "
                                     "(default), adam, amsgrad, lamb, sgd, rmsprop, adagrad, adadelta, adamax, nadam")
  p.add_argument("--lr", type=float, help="peak learning rate (default: the optimizer's and preset's)")
  p.add_argument("--weight-decay", type=float, help="decoupled weight decay (default: AdamW 0.1; a matrix optimizer's "
                 "matrices 0.025, the reference's); given, it applies to every decayed weight")
  p.add_argument("--eval-every", type=int, help="steps between validation evaluations and checkpoints")
  p.add_argument("--tokenizer", choices=("bpe", "gpt2"), help="own BPE trained on the data, or GPT-2's (default: by preset)")
  p.add_argument("--bpe-sample-mb", type=float, help="the own BPE trains on this many MB from the start of the data (default 100)")
  p.add_argument("--norm", choices=("layernorm", "rmsnorm"))
  p.add_argument("--pos", choices=("learned", "rope"))
  p.add_argument("--mlp", choices=("gelu", "swiglu", "relu2"), help="MLP activation: gelu (GPT-2, default), swiglu "
                 "(LLaMA's gated SiLU, 2/3 the hidden width), relu2 (squared ReLU, relu(x)^2, as modded-nanogpt and nanochat)")
  p.add_argument("--freeze", type=int, help="sft: freeze the embeddings and the lowest N blocks (default 0)")
  p.add_argument("--lora-rank", type=int, help="lora: adapter rank (default 8)")
  p.add_argument("--lora-alpha", type=float, help="lora: adapter scale numerator, scale = alpha / rank (default 16)")
  p.add_argument("--lora-dropout", type=float, help="lora: dropout on the adapters' input (default 0)")
  p.add_argument("--lora-targets", help="lora: projections that get adapters (default c_attn,c_proj,c_fc,c_gate)")
  p.add_argument("--teacher", help="distill: the teacher checkpoint (the student is --init, or a new --size model)")
  p.add_argument("--distill-alpha", type=float, help="distill: weight of the teacher's soft targets against the data's (default 0.5)")
  p.add_argument("--distill-temperature", type=float, help="distill: softmax temperature of both models (default 2)")
  p.add_argument("--wandb", metavar="PROJECT", help="also log the metrics to this Weights & Biases project (pip install wandb)")
  p.add_argument("--keep", type=int, help="also keep the last N checkpoints as checkpoint-<step>.safetensors (default 0)")
  p.add_argument("--eval-hellaswag-every", type=int, help="also measure HellaSwag accuracy (its first 1,000 validation items) at "
                 "the evaluations whose step is a multiple of N; the data is downloaded once (python -m aurora_tg.eval)")
  p.add_argument("--keep-best", action="store_true", help="keep the checkpoint of the lowest validation loss as best.safetensors")
  p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint, with its own settings")
  p.add_argument("--seed", type=int, help="random seed of initialisation and batch sampling (default 1337)")
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  # the flags the user gave, and only those: every default comes from aurora_tg/config.py's table
  flags = {name: value for name, value in vars(args).items() if value is not None and value is not False}
  try:
    from aurora_tg import run  # imports tinygrad: after argument parsing, so --help stays instant
    return run.train(flags)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:  # before training starts (tokenizing, compiling): nothing to save yet
    print("interrupted before training started; nothing was saved", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
