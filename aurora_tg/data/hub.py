"""The Hugging Face hub, through huggingface_hub: its cache (HF_HOME), progress bars, tokens and offline mode
(HF_HUB_OFFLINE=1). Nothing here speaks HTTP itself."""
import fnmatch
from pathlib import Path
from aurora_tg import UserError


def _hub():
  try: import huggingface_hub, huggingface_hub.constants, huggingface_hub.errors
  except ImportError: raise UserError("the Hugging Face hub needs huggingface_hub: pip install 'aurora-tg[data]'") from None
  return huggingface_hub


def offline() -> bool:
  return _hub().constants.HF_HUB_OFFLINE  # read from HF_HUB_OFFLINE when huggingface_hub is imported


def dataset_files(repo: str, pattern: str) -> tuple[str, list[tuple[str, int]]]:
  """The commit of a dataset repository's main branch and its files (name, size) that match pattern, in order.
  Offline, both come from the cache."""
  hh = _hub()
  fetch = f"hf download {repo} --repo-type dataset --include '{pattern}'"
  try:
    if offline():
      folder = Path(hh.snapshot_download(repo, repo_type="dataset", allow_patterns=pattern, local_files_only=True))
      names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
      files, revision = [(n, (folder / n).stat().st_size) for n in names if fnmatch.fnmatch(n, pattern)], folder.name
    else:
      info = hh.HfApi().dataset_info(repo, files_metadata=True)
      files = sorted((s.rfilename, s.size or 0) for s in info.siblings if fnmatch.fnmatch(s.rfilename, pattern))
      revision = info.sha
  except (hh.errors.LocalEntryNotFoundError, hh.errors.OfflineModeIsEnabled, FileNotFoundError):
    raise UserError(f"hf:{repo} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; on a connected machine run: {fetch}") from None
  except hh.errors.RepositoryNotFoundError: raise UserError(f"no dataset {repo} on the Hugging Face hub (or it is private: hf auth login)") from None
  except hh.errors.HfHubHTTPError as e: raise UserError(f"the Hugging Face hub refused hf:{repo}: {e}") from None
  except OSError as e: raise UserError(f"cannot reach the Hugging Face hub for hf:{repo} ({e}); offline, set HF_HUB_OFFLINE=1 to use the cache") from None
  if not files: raise UserError(f"hf:{repo} has no files matching {pattern!r}{' in the cache' if offline() else ''}")
  return revision, files


def dataset_file(repo: str, name: str, revision: str) -> Path:
  """One file of a dataset repository at a commit, downloaded into the cache unless it is there."""
  hh = _hub()
  try: return Path(hh.hf_hub_download(repo, name, repo_type="dataset", revision=revision))
  except (hh.errors.LocalEntryNotFoundError, hh.errors.OfflineModeIsEnabled):
    raise UserError(f"{name} of hf:{repo} is not in the Hugging Face cache; on a connected machine run: "
                    f"hf download {repo} {name} --repo-type dataset") from None
  except (hh.errors.HfHubHTTPError, OSError) as e: raise UserError(f"cannot download {name} of hf:{repo}: {e}") from None


def model_folder(repo: str) -> Path:
  """A GPT-2-layout model by hub id (gpt2, gpt2-medium, openai-community/gpt2-xl, ...): its config.json and weights
  (model.safetensors, else pytorch_model.bin) in the hub cache, downloaded unless they are there."""
  hh = _hub()
  fetch = f"hf download {repo} config.json model.safetensors"
  try:
    folder = Path(hh.snapshot_download(repo, allow_patterns=["config.json", "model.safetensors"]))
    if not (folder / "model.safetensors").exists():  # older repositories hold PyTorch's format only
      folder = Path(hh.snapshot_download(repo, allow_patterns=["config.json", "pytorch_model.bin"]))
  except (hh.errors.LocalEntryNotFoundError, hh.errors.OfflineModeIsEnabled):
    raise UserError(f"no checkpoint at {repo}, and no model {repo} in the Hugging Face cache; on a connected machine run: {fetch}") from None
  except (hh.errors.RepositoryNotFoundError, hh.errors.HFValidationError):
    raise UserError(f"no checkpoint at {repo}, and no model {repo} on the Hugging Face hub") from None
  except (hh.errors.HfHubHTTPError, OSError) as e: raise UserError(f"cannot download {repo} from the Hugging Face hub: {e}") from None
  if not (folder / "config.json").exists(): raise UserError(f"hub model {repo} has no config.json: not a GPT-2-layout model")
  return folder
