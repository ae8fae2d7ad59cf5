"""The stages after pretraining, on the same Trainer: chat SFT (full or with frozen lower layers), LoRA (over a float
or a quantized base: QLoRA), adapter layers, preference tuning (DPO) and knowledge distillation from a teacher."""
from typing import Callable
import numpy as np
from tinygrad import Tensor, TinyJit, nn
from aurora_tg import UserError, adapters, lora, qlora
from aurora_tg.formats import checkpoint
from aurora_tg.config import AdapterStageConfig, DistillConfig, DPOConfig, LoRAStageConfig, SFTConfig
from aurora_tg.data.shards import TokenData
from aurora_tg.data.prepare import token_data
from aurora_tg.model import GPT, IGNORE_INDEX, cross_entropy
from aurora_tg.data.chat_data import ChatData, default_conversations, read_conversations
from aurora_tg.data.preference_data import PreferenceData, default_pairs, read_pairs
from aurora_tg.data.tokenizer import Tokenizer
from aurora_tg.optim import adamw
from aurora_tg.trainer import Trainer

ChatStage = SFTConfig | LoRAStageConfig | AdapterStageConfig | DPOConfig


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, alpha: float, temperature: float) -> Tensor:
  """alpha T^2 KL(teacher_T || student_T) + (1 - alpha) CE(student, targets), KL averaged over positions. T^2 keeps
  the soft term's gradient scale independent of T (Hinton et al. 2015)."""
  log_student = (student_logits / temperature).log_softmax(-1)
  log_teacher = (teacher_logits.detach() / temperature).log_softmax(-1)
  kl = (log_teacher.exp() * (log_teacher - log_student)).sum(-1).mean()
  ce = cross_entropy(student_logits, targets)
  return alpha * temperature ** 2 * kl + (1 - alpha) * ce


def answer_logprobs(logits: Tensor, targets: Tensor) -> Tensor:
  """Each row's log probability of its answer: the sum over the positions whose target is not IGNORE_INDEX."""
  return -logits.float().sparse_categorical_crossentropy(targets, ignore_index=IGNORE_INDEX, reduction="none").sum(-1)


def dpo_rewards(policy_logits: Tensor, reference_logits: Tensor, targets: Tensor, beta: float) -> tuple[Tensor, Tensor]:
  """DPO's implicit rewards, beta (log p(answer) - log p_ref(answer)), of the chosen answers (the rows' first half)
  and of the rejected ones (the second half, in the same order)."""
  rewards = beta * (answer_logprobs(policy_logits, targets) - answer_logprobs(reference_logits.detach(), targets))
  return rewards.chunk(2)


def dpo_loss(policy_logits: Tensor, reference_logits: Tensor, targets: Tensor, beta: float, rpo_alpha: float = 0.0) -> Tensor:
  """Direct Preference Optimization (Rafailov et al. 2023): -log sigmoid(chosen reward - rejected reward), over pairs;
  plus rpo_alpha times the chosen answers' mean token loss (RPO, Pang et al. 2024; Llama 3 adds it too), which keeps
  DPO from lowering the likelihood of the answers it prefers along with the others'."""
  chosen, rejected = dpo_rewards(policy_logits, reference_logits, targets, beta)
  loss = -(chosen - rejected).logsigmoid().mean()
  if not rpo_alpha: return loss
  half = policy_logits.shape[0] // 2
  return loss + rpo_alpha * cross_entropy(policy_logits[:half], targets[:half])


def frozen_below(model: GPT, n_blocks: int) -> list[Tensor]:
  """Partial fine-tuning: the parameters left to train when the embeddings and the lowest n_blocks blocks freeze."""
  if not 0 <= n_blocks <= len(model.h): raise UserError(f"--freeze must be between 0 and {len(model.h)} (the model's blocks), got {n_blocks}")
  if n_blocks == 0: return nn.state.get_parameters(model)
  frozen = {id(t) for t in nn.state.get_parameters([model.wte, model.wpe, model.h[:n_blocks]])}
  return [t for t in nn.state.get_parameters(model) if id(t) not in frozen]


def prepare(cfg: ChatStage | DistillConfig, workers: int = 0) -> tuple[Trainer, Tokenizer, ChatData | PreferenceData | TokenData]:
  """The trainer for a fine-tuning stage, with the tokenizer and data it trains on (workers: see run.run_stage)."""
  Tensor.manual_seed(cfg.train.seed)  # new weights (LoRA adapters, a new student) start alike in every run of a config
  if isinstance(cfg, DistillConfig): return prepare_distill(cfg, workers)
  model, tokenizer, _ = checkpoint.load_model(cfg.init)
  if isinstance(cfg, DPOConfig): return prepare_dpo(cfg, model, tokenizer)
  conversations = read_conversations(cfg.data, warn=lambda line: print(f"warning: {line}")) if cfg.data else default_conversations()
  data = ChatData(conversations, tokenizer, model.cfg.block_size)
  optimizer, saved_state = trained_part(cfg, model)
  return Trainer(model, data, cfg.train, optimizer, saved_state=saved_state), tokenizer, data


def trained_part(cfg: ChatStage, model: GPT) -> tuple[nn.optim.OptimizerGroup, Callable[[], dict] | None]:
  """The optimizer over what a chat stage trains, and what its checkpoints save of the model (None: all of it):
  LoRA's adapters (over a base quantized first, for QLoRA), adapter layers, or the weights above --freeze."""
  s = cfg.train
  if getattr(cfg, "lora", None):
    if cfg.base_quantize: qlora.quantize_base(model, cfg.base_quantize)
    return adamw(lora.add_adapters(model, cfg.lora), s.lr, 0.0), lambda: lora.adapter_state(model)
  if isinstance(cfg, AdapterStageConfig):
    return adamw(adapters.add_adapters(model, cfg.adapter_size), s.lr, 0.0), lambda: adapters.adapter_state(model)
  return adamw(frozen_below(model, getattr(cfg, "freeze", 0)), s.lr, s.weight_decay), None


def prepare_dpo(cfg: DPOConfig, model: GPT, tokenizer: Tokenizer) -> tuple[Trainer, Tokenizer, PreferenceData]:
  """DPO of the --init model against a frozen copy of itself (quantized alike for QLoRA), computed in the same step."""
  reference, _, _ = checkpoint.load_model(cfg.init)
  if cfg.lora and cfg.base_quantize: qlora.quantize_base(reference, cfg.base_quantize)
  pairs = read_pairs(cfg.data, warn=lambda line: print(f"warning: {line}")) if cfg.data else default_pairs()
  data = PreferenceData(pairs, tokenizer, model.cfg.block_size)
  loss = lambda x, y: dpo_loss(model(x), reference(x), y, cfg.dpo_beta, cfg.rpo_alpha)
  optimizer, saved_state = trained_part(cfg, model)
  trainer = Trainer(model, data, cfg.train, optimizer, loss=loss, saved_state=saved_state)
  reference.compute_dtype = model.compute_dtype  # as the trainer set it: the rewards start at exactly 0
  trainer.extra_eval = preference_eval(model, reference, data, cfg.dpo_beta, cfg.train.batch_size, trainer.tensor)
  return trainer, tokenizer, data


def preference_eval(model: GPT, reference: GPT, data: PreferenceData, beta: float, batch_size: int, to_tensor) -> Callable[[int], dict]:
  """extra_eval for DPO, over every held-out pair: the DPO loss, the reward accuracy (the share of pairs whose chosen
  answer has the higher reward, a tie counting half: at the start every reward is 0, and the accuracy is chance's
  50%), the mean reward margin, and the chosen answers' loss per token. The reference's log probabilities are
  computed once."""
  n = len(data.val)
  order = [i % n for i in range(-(-n // batch_size) * batch_size)]  # whole batches, the last filled from the start
  batches = [data.rows([data.val[i] for i in order[s:s + batch_size]]) for s in range(0, len(order), batch_size)]
  chosen_tokens = sum(t != IGNORE_INDEX for (_, targets), _ in data.val for t in targets[1:])  # what the rows' y holds

  policy_step, reference_step = (TinyJit(lambda x, y, net=net: answer_logprobs(net(x), y).realize()) for net in (model, reference))

  def logprobs(step) -> tuple[np.ndarray, np.ndarray]:
    rows = [step(to_tensor(x), to_tensor(y)).numpy() for x, y in batches]
    return (np.concatenate([r[:batch_size] for r in rows])[:n].astype(np.float64),
            np.concatenate([r[batch_size:] for r in rows])[:n].astype(np.float64))

  reference_logprobs = []
  def run(step: int) -> dict[str, float]:
    if not reference_logprobs: reference_logprobs.extend(logprobs(reference_step))
    (chosen, rejected), (ref_chosen, ref_rejected) = logprobs(policy_step), reference_logprobs
    margin = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
    return {"dpo_loss": float(np.logaddexp(0, -margin).mean()), "reward_acc": float((margin > 0).mean() + (margin == 0).mean() / 2),
            "reward_margin": float(margin.mean()), "chosen_loss": float(-chosen.sum() / chosen_tokens)}
  return run


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
