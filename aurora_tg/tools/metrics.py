"""A run's metrics log: metrics.jsonl in the run folder (one JSON object per log line or evaluation) and, when asked
for, the same metrics in Weights & Biases."""
import json, secrets
from pathlib import Path
from aurora_tg import UserError

METRICS_NAME = "metrics.jsonl"


def read_metrics(run_dir: str | Path) -> list[dict]:
  path = Path(run_dir) / METRICS_NAME
  if not path.is_file(): raise UserError(f"{run_dir} has no {METRICS_NAME}: not a run folder, or a run that never logged")
  lines = [line for line in path.read_text().splitlines() if line.strip()]
  try: metrics = [json.loads(line) for line in lines[:-1]]
  except ValueError as e: raise UserError(f"{path} is not JSON lines ({e})") from None
  try: return metrics + [json.loads(lines[-1])] if lines else metrics
  except ValueError: return metrics  # the last line of a run killed while writing it


def new_wandb_id() -> str: return secrets.token_hex(4)


class RunLog:
  """Appends metrics; a resumed run (from step > 0) first drops what the stopped run logged after its checkpoint,
  so the file agrees with the weights. With a W&B project, every dict also goes to that run (wandb_id), resumed
  where it stopped."""
  def __init__(self, run_dir: Path, step: int, wandb_project: str | None = None, wandb_id: str | None = None, wandb_config: dict | None = None):
    path = Path(run_dir) / METRICS_NAME
    kept = [m for m in read_metrics(run_dir) if m["step"] <= step] if step and path.is_file() else []
    self.file = open(path, "w")
    for m in kept: self.file.write(json.dumps(m) + "\n")
    self.wandb = start_wandb(run_dir, wandb_project, wandb_id, wandb_config) if wandb_project else None

  def __call__(self, metrics: dict):
    self.file.write(json.dumps(metrics) + "\n")
    self.file.flush()
    if self.wandb: self.wandb.log(flat(metrics), step=metrics["step"])

  def close(self):
    self.file.close()
    if self.wandb: self.wandb.finish()


def flat(metrics: dict) -> dict:
  """W&B charts numbers: per-layer lists become one number per layer (dead_fraction/0, ...)."""
  out = {}
  for k, v in metrics.items():
    if isinstance(v, list): out |= {f"{k}/{i}": x for i, x in enumerate(v)}
    elif v is not None and k != "step": out[k] = v
  return out


def require_wandb():
  """W&B is optional: imported only for runs that ask for it, and checked before they start."""
  try: import wandb
  except ImportError: raise UserError("--wandb needs Weights & Biases: pip install wandb") from None
  return wandb


def start_wandb(run_dir: Path, project: str, run_id: str, config: dict):
  """WANDB_MODE=offline logs into run_dir/wandb, without an account. A resumed run logs into the same W&B run; W&B
  keeps what the stopped run logged after its last checkpoint (metrics.jsonl drops it)."""
  wandb = require_wandb()
  try: return wandb.init(project=project, id=run_id, resume="allow", name=Path(run_dir).name, dir=str(run_dir), config=config)
  except Exception as e: raise UserError(f"Weights & Biases did not start ({type(e).__name__}: {e}); log in with `wandb login`, or set WANDB_MODE=offline") from None
