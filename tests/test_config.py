"""The run configuration: flags of another stage are refused, every default in the table is what a run uses (read
back from its checkpoint's record), and a record survives its round trip with paths relative to the run folder."""
from dataclasses import asdict, fields, replace
from pathlib import Path
import pytest
from aurora_tg import config
from aurora_tg.formats import checkpoint
from aurora_tg.config import DEFAULTS, STAGE_FLAGS, STAGES, TrainSettings
from aurora_tg.cli.train import given_flags, machine, plan
CPU = machine("CPU")  # what the config asks of the machine, answered here by tinygrad's CPU backend
from test_train import assert_one_line_error, train

FLAG_VALUES = {"size": "tiny", "tokenizer": "gpt2", "norm": "rmsnorm", "pos": "rope", "mlp": "swiglu", "optimizer": "muon",
               "init": "runs/x", "freeze": "1", "lora_rank": "4", "lora_alpha": "8", "lora_dropout": "0.1",
               "lora_targets": "c_fc", "teacher": "runs/t", "distill_alpha": "0.3", "distill_temperature": "3",
               "bpe_sample_mb": "5", "text_field": "body", "max_tokens": "1000", "data_order": "sequential",
               "adapter_size": "16", "dpo_beta": "0.2", "rpo_alpha": "0.5", "base_quantize": "nf4"}
FOREIGN = [(stage, flag) for stage in STAGES for flag in sorted({f for fs in STAGE_FLAGS.values() for f in fs} - set(STAGE_FLAGS[stage]))]


@pytest.mark.parametrize("stage, flag", FOREIGN, ids=[f"{s}-{f}" for s, f in FOREIGN])
def test_a_flag_of_another_stage_is_refused_naming_its_stage(stage, flag, tmp_path):
  owners = [s for s in STAGES if flag in STAGE_FLAGS[s]]
  proc = train("--stage", stage, f"--{flag.replace('_', '-')}", FLAG_VALUES[flag], "--out", tmp_path / "o")
  assert_one_line_error(proc, f"--{flag.replace('_', '-')} applies to --stage {', '.join(owners)}, not to {stage}")


def test_the_default_pipeline_refuses_fine_tuning_flags(tmp_path):
  assert_one_line_error(train("--lora-rank", "4", "--out", tmp_path / "o"), "--lora-rank applies to --stage lora, dpo, not to pretrain")


def expected_settings(preset: str, row: str, **given) -> dict:
  """The table read by hand: TrainSettings' own values, the preset's row, the optimizer's or stage's row, then flags."""
  s = {**asdict(TrainSettings()), **DEFAULTS[preset], "adam_lr": DEFAULTS[preset]["lr"], **DEFAULTS.get(row, {}), **given}
  s["warmup"] = min(s["warmup"], max(1, s["steps"] // 10))
  s["devices"] = ()
  return s


def recorded_settings(run: Path) -> dict:
  return asdict(checkpoint.read_record(run).run.train)


def test_every_default_in_the_table_is_what_runs_use(finished_run, tmp_path):
  """Each stage with only --steps (and the stage's required flags) given, resolved as `aurora train` resolves it; two
  real runs (a pretraining and a LoRA stage) show that their checkpoint's record holds what was resolved. That every
  stage's record gives back the settings it ran with is tests/cli/test_train.py's resume tests."""
  base, corpus, _ = finished_run
  # pretraining's default optimizer is config.PRETRAIN_OPTIMIZER, with its row
  assert recorded_settings(base) == expected_settings("tiny", "aurora", steps=4, eval_every=2, batch_size=4, optimizer="aurora")
  def resolved(*flags): return plan(given_flags(["--steps", "2", *map(str, flags)]), CPU)[0][0]
  pre = resolved("--stage", "pretrain", "--size", "tiny", "--optimizer", "muon", "--data", corpus)
  assert asdict(pre.train) == expected_settings("tiny", "muon", steps=2, optimizer="muon")
  for stage in ("sft", "lora"):
    assert asdict(resolved("--stage", stage, "--init", base).train) == expected_settings("tiny", stage, steps=2)
  distill = resolved("--stage", "distill", "--teacher", base, "--data", corpus)
  assert asdict(distill.train) == expected_settings("tiny", "distill", steps=2)
  assert (distill.distill_alpha, distill.distill_temperature, distill.size, distill.init) == (0.5, 2.0, "tiny", None)
  train("--stage", "lora", "--init", base, "--steps", "2", "--out", tmp_path / "lora", check_code=0)
  assert recorded_settings(tmp_path / "lora") == expected_settings("tiny", "lora", steps=2)
  lora_run = checkpoint.read_record(tmp_path / "lora").run
  assert lora_run.lora == config.LoRAConfig() and lora_run.init == str(base)


@pytest.mark.parametrize("preset", ["tiny", "small", "medium", "gpt2", "gpt2-xl"])
@pytest.mark.parametrize("optimizer", ["adamw", "aurora", "sgd"])
def test_presets_and_optimizers_resolve_through_the_table(preset, optimizer):
  cfg = config.new_run("pretrain", {"size": preset, "optimizer": optimizer, "dtype": "float32"}, CPU)
  assert asdict(cfg.train) == expected_settings(preset, optimizer, optimizer=optimizer, dtype="float32")
  assert cfg.out == f"runs/{preset}" and cfg.tokenizer == ("gpt2" if preset.startswith("gpt2") else "bpe")


@pytest.mark.parametrize("flags, expected", [  # a few rows written out, so a changed table shows here too
  ({"size": "small"}, dict(steps=360, batch_size=8, grad_accum=1, optimizer="aurora", lr=0.05, adam_lr=3e-3, warmup=20, eval_every=100)),
  ({"size": "small", "optimizer": "adamw"}, dict(steps=360, batch_size=8, lr=3e-3, adam_lr=3e-3, diagnostics=False)),
  ({"size": "tiny", "optimizer": "aurora"}, dict(steps=200, batch_size=16, lr=0.05, adam_lr=3e-3, warmup=20, eval_every=50)),
  ({"size": "gpt2", "dtype": "float32"}, dict(steps=5000, batch_size=16, grad_accum=32, lr=0.05, adam_lr=6e-4, warmup=300, eval_every=250)),
  ({"size": "tiny", "steps": 30, "lr": 0.01}, dict(steps=30, lr=0.01, warmup=3, batch_size=16)),
])
def test_known_rows(flags, expected):
  train = asdict(config.new_run("pretrain", flags, CPU).train)
  assert {k: train[k] for k in expected} == expected


def test_the_default_pipeline_is_pretraining_then_chat_fine_tuning(text_file):
  (pre, resume_pre), (sft, resume_sft) = plan({"size": "tiny", "batch_size": 4, "seed": 5}, CPU)
  assert pre.chat_after and not resume_pre and not resume_sft
  assert (sft.init, sft.out, sft.train.batch_size, sft.train.seed, sft.train.steps) == ("runs/tiny", "runs/tiny-sft", 4, 5, 300)
  assert [len(plan(f, CPU)) for f in ({"size": "tiny", "stage": "pretrain"}, {"size": "tiny", "data": str(text_file)})] == [1, 1]


def test_resuming_the_pipeline_resumes_each_stage_from_its_own_record(tmp_path):
  out = tmp_path / "runs" / "tiny"
  (pre, _), (sft, _) = plan({"size": "tiny", "out": str(out)}, CPU)
  record = lambda cfg: checkpoint.RunRecord(cfg.stage, config.GPTConfig(), "tok", cfg, step=1)
  checkpoint.save(out, {}, {}, record(pre))
  assert [(c.stage, resume) for c, resume in plan({"resume": True, "out": str(out)}, CPU)] == [("pretrain", True), ("sft", False)]
  checkpoint.save(sft.out, {}, {}, record(replace(sft, train=replace(sft.train, lr=0.123))))
  (_, _), (again, resume) = plan({"resume": True, "out": str(out)}, CPU)
  assert resume and again.train.lr == 0.123  # the SFT run's own record, not the pipeline's defaults
  alone = plan({"size": "tiny", "stage": "pretrain", "out": str(tmp_path / "alone")}, CPU)[0][0]
  checkpoint.save(alone.out, {}, {}, record(alone))
  assert len(plan({"resume": True, "out": alone.out}, CPU)) == 1  # --stage pretrain stays one stage on resume
  with pytest.raises(config.UserError, match="fewer than the 1 the run has done"): plan({"resume": True, "out": alone.out, "steps": 0}, CPU)


def test_a_run_of_the_old_default_resumes_with_its_own_recorded_optimizer(tmp_path):
  """Before PRETRAIN_OPTIMIZER was aurora, a flagless pretraining ran AdamW: resumed without flags, it stays AdamW
  at its own rate, and a new flagless run takes the new default."""
  out = tmp_path / "runs" / "small"
  old = config.new_run("pretrain", {"out": str(out), "optimizer": "adamw"}, CPU)  # what no flags resolved to then
  checkpoint.save(out, {}, {}, checkpoint.RunRecord("pretrain", config.GPTConfig(), "tok", old, step=1))
  resumed = plan({"resume": True, "out": str(out), "stage": "pretrain"}, CPU)[0][0]
  assert (resumed.train.optimizer, resumed.train.lr, resumed.train.diagnostics) == ("adamw", 3e-3, False)
  assert config.new_run("pretrain", {}, CPU).train.optimizer == config.PRETRAIN_OPTIMIZER == "aurora"


def test_a_fine_tuning_stage_takes_the_rows_of_its_starting_models_preset():
  cfg = config.new_run("sft", {"init": "runs/gpt2", "dtype": "float32"}, CPU, init_preset="gpt2")
  assert asdict(cfg.train) == expected_settings("gpt2", "sft", dtype="float32")
  assert cfg.out == "runs/gpt2-sft" and cfg.train.grad_accum == 1


def test_the_record_round_trips_with_lineage_relative_to_the_run_folder(tmp_path):
  (tmp_path / "runs" / "base").mkdir(parents=True)
  cfg = config.new_run("lora", {"init": str(tmp_path / "runs" / "base"), "lora_rank": 4}, CPU, init_preset="tiny")
  cfg = replace(cfg, out=str(tmp_path / "runs" / "base-lora"))
  stored = cfg.to_dict(cfg.out)
  assert stored["init"] == "../base" and "out" not in stored
  moved = tmp_path / "elsewhere" / "base-lora"
  back = config.from_dict(stored, moved)
  assert back.init == str(tmp_path / "elsewhere" / "base") and back.out == str(moved)
  assert {f.name: getattr(back, f.name) for f in fields(back) if f.name not in ("init", "out")} == \
         {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in ("init", "out")}
