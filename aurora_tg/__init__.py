"""Aurora: a compact GPT-2-style language model training stack on tinygrad.

The core lies here, readable alone: model.py (the GPT), optim.py (Aurora, Muon and the classic optimizers),
trainer.py (the jitted training loop), finetune.py, lora.py, qlora.py and adapters.py (the stages after pretraining)
and config.py (every training default, typed; the flags are built from it). prepare.py, export.py, eval.py and
plot.py only keep `python -m aurora_tg.X` working: the commands live in cli/. Around the core: data/, formats/, inference/, backends/
(every use of tinygrad's internals), tools/ and cli/. The core imports nothing of inference/ or cli/."""


class UserError(Exception):
  """Bad input from the user: the command line prints the message on one line and exits non-zero."""
