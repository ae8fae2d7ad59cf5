"""The stages after pretraining, on the same Trainer: chat SFT (full or with frozen lower layers), LoRA, and
knowledge distillation from a teacher checkpoint."""
from tinygrad import Tensor, nn
from aurora_tg import UserError, lora
from aurora_tg.formats import checkpoint
from aurora_tg.config import DistillConfig, LoRAStageConfig, SFTConfig
from aurora_tg.data.shards import TokenData
from aurora_tg.data.prepare import token_data
from aurora_tg.model import GPT, IGNORE_INDEX, cross_entropy
from aurora_tg.data.chat_data import ChatData, default_conversations, read_conversations
from aurora_tg.data.tokenizer import Tokenizer
from aurora_tg.optim import adamw
from aurora_tg.trainer import Trainer


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


def prepare(cfg: SFTConfig | LoRAStageConfig | DistillConfig, workers: int = 0) -> tuple[Trainer, Tokenizer, ChatData | TokenData]:
  """The trainer for a fine-tuning stage, with the tokenizer and data it trains on (workers: see run.run_stage)."""
  Tensor.manual_seed(cfg.train.seed)  # new weights (LoRA adapters, a new student) start alike in every run of a config
  if isinstance(cfg, DistillConfig): return prepare_distill(cfg, workers)
  model, tokenizer, _ = checkpoint.load_model(cfg.init)
  conversations = read_conversations(cfg.data, warn=lambda line: print(f"warning: {line}")) if cfg.data else default_conversations()
  data, s = ChatData(conversations, tokenizer, model.cfg.block_size), cfg.train
  if isinstance(cfg, LoRAStageConfig):
    params = lora.add_adapters(model, cfg.lora)
    return Trainer(model, data, s, adamw(params, s.lr, 0.0), saved_state=lambda: lora.adapter_state(model)), tokenizer, data
  params = frozen_below(model, cfg.freeze)
  return Trainer(model, data, s, adamw(params, s.lr, s.weight_decay)), tokenizer, data


def prepare_distill(cfg: DistillConfig, workers: int) -> tuple[Trainer, Tokenizer, TokenData]:
  teacher, tokenizer, _ = checkpoint.load_model(cfg.teacher)
  if cfg.init:
    student, student_tokenizer, _ = checkpoint.load_model(cfg.init)
    if student_tokenizer.fingerprint() != tokenizer.fingerprint():
      raise UserError(f"teacher {cfg.teacher} and student {cfg.init} use different tokenizers; distillation compares "
                      "their next-token distributions, so they must share one")
  else: student = GPT(cfg.model_config(tokenizer.n_vocab))
  if student.cfg.block_size > teacher.cfg.block_size:
    raise UserError(f"the student's context ({student.cfg.block_size}) is longer than the teacher's ({teacher.cfg.block_size})")
  data, s = token_data(cfg, tokenizer, student.cfg.block_size, workers), cfg.train
  loss = lambda x, y: distillation_loss(student(x), teacher(x), y, cfg.distill_alpha, cfg.distill_temperature)
  return (Trainer(student, data, s, adamw(nn.state.get_parameters(student), s.lr, s.weight_decay), loss=loss,
                  token_bytes=tokenizer.token_bytes()), tokenizer, data)
