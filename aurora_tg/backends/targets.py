"""GPUs Aurora plans and compiles for without having one: each named target is a tinygrad renderer, which tinygrad's
NULL device (it compiles every kernel and runs none) takes as DEV=NULL:<renderer>, with the memory a run may fill
and the peak that MFU is measured against. NVIDIA targets compile with NVIDIA's own compiler library, NVRTC, which
installs from PyPI without a GPU or a driver (nvidia-cuda-nvrtc-cu12, in the test extra)."""
import glob, os, re, site
from dataclasses import dataclass
from tinygrad.helpers import getenv
from aurora_tg import UserError


@dataclass(frozen=True)
class Target:
  name: str
  renderer: str          # tinygrad's renderer (and architecture) for the NULL device: DEV=NULL:<renderer>
  memory_gb: float       # what a run may fill: the card's memory, or on Apple the GPU's share of unified memory
  bf16_tflops: float     # dense bfloat16 tensor-core peak (NVIDIA's data sheets), for MFU

  @property
  def null_device(self) -> str: return f"NULL:{self.renderer}" if self.renderer else "NULL"


TARGETS = {t.name: t for t in (
  Target("h100", "CUDA:sm_90", 80, 989), Target("h200", "CUDA:sm_90", 141, 989),
  Target("a100-80gb", "CUDA:sm_80", 80, 312), Target("a100-40gb", "CUDA:sm_80", 40, 312),
  Target("l4", "CUDA:sm_89", 24, 121), Target("rtx4090", "CUDA:sm_89", 24, 165), Target("rtx3090", "CUDA:sm_86", 24, 71),
  # Metal's compiler exists only on macOS: Apple targets plan on the NULL device's own renderer, whose kernels
  # allocate what Metal's would (both take the embedding's public lookup, scatter.py). macOS lets the GPU use
  # about two thirds of a 16 GB machine's memory and three quarters of a larger one's.
  Target("m2-16gb", "", 10.7, 0), Target("m3-max-64gb", "", 48, 0),
)}
SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(MB|GB)", re.IGNORECASE)


def target(name: str) -> Target:
  """A named target, or a memory size (24GB, 512MB) for a device of the backend in use."""
  if name.lower() in TARGETS: return TARGETS[name.lower()]
  if m := SIZE.fullmatch(name.strip()):
    return Target(name, "", float(m[1]) / (1000 if m[2].upper() == "MB" else 1), 0)
  raise UserError(f"unknown --plan-for {name!r}; choose from {', '.join(TARGETS)}, or give a memory size such as 24GB")


def use_nvidia_compiler() -> str | None:
  """Point tinygrad at NVRTC from NVIDIA's PyPI wheels (NVRTC_PATH, NVJITLINK_PATH) unless the user set them or a
  CUDA toolkit provides it; None when found, else why not. tinygrad looks in /usr/local/cuda and /opt/cuda only."""
  if os.environ.get("NVRTC_PATH") or glob.glob("/usr/local/cuda*/targets/*/lib/libnvrtc.so*"): return None
  roots = [*site.getsitepackages(), site.getusersitepackages()]
  found = lambda pattern: next((p for root in roots for p in sorted(glob.glob(os.path.join(root, "nvidia", pattern)))), None)
  nvrtc, jitlink = found("cuda_nvrtc/lib/libnvrtc.so.*[0-9]"), found("nvjitlink/lib/libnvJitLink.so.*[0-9]")
  if nvrtc is None: return "NVIDIA's compiler is not installed: pip install -e \".[gpu-plan]\" (nvidia-cuda-nvrtc-cu12)"
  os.environ["NVRTC_PATH"] = nvrtc
  if jitlink: os.environ.setdefault("NVJITLINK_PATH", jitlink)
  getenv.cache_clear()  # tinygrad caches what it read of the environment
  return None
