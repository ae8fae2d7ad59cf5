"""The stages after pretraining, on the same Trainer: chat SFT (full or with frozen lower layers), LoRA, and
knowledge distillation from a teacher checkpoint."""
from tinygrad import Tensor, nn
from aurora_tg import UserError, checkpoint, lora
from aurora_tg.chat import stop_tokens, stream_text
from aurora_tg.data import read_texts, tokenize_cached, TokenData
from aurora_tg.generate import Generator, Sampling
from aurora_tg.model import GPT, IGNORE_INDEX, cross_entropy
from aurora_tg.sft import ChatData, default_conversations, read_conversations
from aurora_tg.tokenizer import Tokenizer
from aurora_tg.optim import adamw
from aurora_tg.trainer import Trainer, TrainSettings

STAGES = ("pretrain", "sft", "lora", "distill")
# Fine-tuning defaults: a fraction of pretraining's steps, at a lower rate (LoRA's few weights take a higher one).
STAGE_DEFAULTS = {"sft": dict(steps=300, lr=1e-3), "lora": dict(steps=300, lr=3e-3), "distill": dict(steps=500, lr=3e-3)}


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, alpha: float, temperature: float) -> Tensor:
  """alpha T^2 KL(teacher_T || student_T) + (1 - alpha) CE(student, targets), KL averaged over positions. T^2 keeps
  the soft term's gradient scale independent of T (Hinton et al. 2015)."""
  log_student = (student_logits / temperature).log_softmax(-1)
  log_teacher = (teacher_logits.detach() / temperature).log_softmax(-1)
  kl = (log_teacher.exp() * (log_teacher - log_student)).sum(-1).mean()
  ce = cross_entropy(student_logits, targets)
  return alpha * temperature ** 2 * kl + (1 - alpha) * ce


def frozen_below(model: GPT, n_blocks: int) -> list[Tensor]:
  """Partial fine-tuning: the parameters left to train when the embeddings and the lowest n_blocks blocks freeze."""
  if not 0 <= n_blocks <= len(model.h): raise UserError(f"--freeze must be between 0 and {len(model.h)} (the model's blocks), got {n_blocks}")
  if n_blocks == 0: return nn.state.get_parameters(model)
  frozen = {id(t) for t in nn.state.get_parameters([model.wte, model.wpe, model.h[:n_blocks]])}
  return [t for t in nn.state.get_parameters(model) if id(t) not in frozen]


def prepare(stage: str, args, settings: TrainSettings):
  """-> (trainer, tokenizer, record, data) for a fine-tuning stage, from --init (and --teacher for distillation)."""
  if stage == "distill": return prepare_distill(args, settings)
  if not args.init: raise UserError(f"--stage {stage} needs --init CHECKPOINT: the pretrained run folder or checkpoint to start from")
  model, tokenizer, _ = checkpoint.load_model(args.init)
  conversations = read_conversations(args.data, warn=lambda line: print(f"warning: {line}")) if args.data else default_conversations()
  data = ChatData(conversations, tokenizer, model.cfg.block_size)
  record = {"config": model.cfg.to_dict(), "tokenizer": tokenizer.fingerprint(), "stage": stage, "init": str(checkpoint.resolve(args.init))}
  if stage == "lora":
    cfg = lora.LoRAConfig(args.lora_rank, args.lora_alpha, args.lora_dropout, tuple(args.lora_targets.split(",")))
    try: params = lora.add_adapters(model, cfg)
    except ValueError as e: raise UserError(str(e)) from None
    record |= {"lora": cfg.to_dict(), "base": str(checkpoint.resolve(args.init))}
    trainer = Trainer(model, data, settings, adamw(params, settings.lr, 0.0), saved_state=lambda: lora.adapter_state(model))
  else:
    params = frozen_below(model, args.freeze or 0)
    trainer = Trainer(model, data, settings, adamw(params, settings.lr, settings.weight_decay))
  return trainer, tokenizer, record, data


def prepare_distill(args, settings: TrainSettings):
  if not args.teacher: raise UserError("--stage distill needs --teacher CHECKPOINT")
  teacher, tokenizer, _ = checkpoint.load_model(args.teacher)
  if args.init:
    student, student_tokenizer, _ = checkpoint.load_model(args.init)
    if student_tokenizer.fingerprint() != tokenizer.fingerprint():
      raise UserError(f"teacher {args.teacher} and student {args.init} use different tokenizers; distillation compares "
                      "their next-token distributions, so they must share one")
  else:
    from aurora_tg.run import model_config
    student = GPT(model_config(args, tokenizer.n_vocab))
  if student.cfg.block_size > teacher.cfg.block_size:
    raise UserError(f"the student's context ({student.cfg.block_size}) is longer than the teacher's ({teacher.cfg.block_size})")
  data = TokenData(tokenize_cached(read_texts(args.data), tokenizer), student.cfg.block_size)
  loss = lambda x, y: distillation_loss(student(x), teacher(x), y, args.distill_alpha, args.distill_temperature)
  trainer = Trainer(student, data, settings, adamw(nn.state.get_parameters(student), settings.lr, settings.weight_decay), loss=loss)
  record = {"config": student.cfg.to_dict(), "tokenizer": tokenizer.fingerprint(), "stage": "distill", "teacher": str(checkpoint.resolve(args.teacher))}
  return trainer, tokenizer, record, data


def sample_answers(model: GPT, tokenizer: Tokenizer, data: ChatData, n: int = 3) -> list[tuple[str, str]]:
  """Greedy answers to the first n held-out questions, stopping where chat.py stops."""
  out, generator, stop, user = [], Generator(model), stop_tokens(tokenizer), tokenizer.special("<|user|>")
  for ids, targets in data.val[:n]:
    prompt_len = next(i for i, t in enumerate(targets) if t != IGNORE_INDEX)
    asked = max(i for i, t in enumerate(ids[:prompt_len]) if t == user) + 1
    question = tokenizer.decode([t for t in ids[asked:prompt_len] if t < tokenizer.eot])  # without role tokens
    answer = "".join(stream_text(generator, tokenizer, ids[:prompt_len], Sampling(temperature=0, max_tokens=48), stop))
    out.append((question.strip(), answer.strip()))
  return out
