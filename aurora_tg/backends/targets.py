"""GPUs Aurora plans and compiles for without having one: each named target is a tinygrad renderer, which tinygrad's
NULL device (it compiles every kernel and runs none) takes as DEV=NULL:<renderer>, with the memory a run may fill.
NVIDIA targets compile with NVIDIA's own compiler library, NVRTC, which installs from PyPI without a GPU or a driver
(nvidia-cuda-nvrtc-cu12: the gpu-plan extra)."""
import ctypes.util, glob, os, re, site
from dataclasses import dataclass
from tinygrad.helpers import getenv
from aurora_tg import UserError

GIB = 2 ** 30


@dataclass(frozen=True)
class Target:
  name: str
  renderer: str          # tinygrad's renderer (and architecture) for the NULL device: DEV=NULL:<renderer>
  memory: float          # bytes a run may fill: the card's memory, or on Apple the GPU's share of unified memory
  # the vendor's peaks, for the roofline (tools/roofline.py): dense half-precision FLOP/s on matrix units (tensor
  # cores, float32 accumulation), float32 FLOP/s elsewhere, memory bandwidth in bytes/s; 0 where unknown (a size)
  matrix_flops: float = 0.0
  vector_flops: float = 0.0
  bandwidth: float = 0.0

  @property
  def null_device(self) -> str: return f"NULL:{self.renderer}" if self.renderer else "NULL"


# Cards' memory in GiB, as their drivers report it; peaks from the vendors' data sheets (H100 and H200: SXM; A100:
# SXM; RTX cards: bfloat16 with float32 accumulation, as tinygrad's CUDA matmuls accumulate). Metal's compiler exists
# only on macOS: Apple targets plan on the NULL device's own renderer, whose kernels allocate what Metal's would (both
# take the embedding's public lookup, scatter.py). macOS lets the GPU use about two thirds of a 16 GB machine's memory
# and three quarters of a larger one's; Apple GPUs' matrix units run at their float32 rate.
T, GB_S = 1e12, 1e9
TARGETS = {t.name: t for t in (
  Target("h100", "CUDA:sm_90", 80 * GIB, 989 * T, 67 * T, 3350 * GB_S), Target("h200", "CUDA:sm_90", 141 * GIB, 989 * T, 67 * T, 4800 * GB_S),
  Target("a100-80gb", "CUDA:sm_80", 80 * GIB, 312 * T, 19.5 * T, 2039 * GB_S),
  Target("a100-40gb", "CUDA:sm_80", 40 * GIB, 312 * T, 19.5 * T, 1555 * GB_S),
  Target("l4", "CUDA:sm_89", 24 * GIB, 121 * T, 30.3 * T, 300 * GB_S), Target("rtx4090", "CUDA:sm_89", 24 * GIB, 165 * T, 82.6 * T, 1008 * GB_S),
  Target("rtx3090", "CUDA:sm_86", 24 * GIB, 71 * T, 35.6 * T, 936 * GB_S),
  Target("m2-16gb", "", 16 * GIB * 2 / 3, 3.6 * T, 3.6 * T, 100 * GB_S), Target("m3-max-64gb", "", 64 * GIB * 3 / 4, 14.2 * T, 14.2 * T, 400 * GB_S),
)}
SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(MB|GB|MiB|GiB)", re.IGNORECASE)
UNITS = {"mb": 1e6, "gb": 1e9, "mib": 2 ** 20, "gib": GIB}


def target(name: str) -> Target:
  """A named target, or a memory size (24GB, 24GiB, 512MB) for a device of the backend in use."""
  if name.lower() in TARGETS: return TARGETS[name.lower()]
  if (m := SIZE.fullmatch(name.strip())) and float(m[1]) > 0: return Target(name, "", float(m[1]) * UNITS[m[2].lower()])
  raise UserError(f"unknown --plan-for {name!r}; choose from {', '.join(TARGETS)}, or give a memory size such as 24GB or 24GiB")


def use_nvidia_compiler() -> str | None:
  """Point tinygrad at NVRTC from NVIDIA's PyPI wheels (NVRTC_PATH, NVJITLINK_PATH) unless the user set them; None
  when NVRTC is found (there, or where tinygrad looks itself: the library path, /usr/local/cuda, /opt/cuda), else why not."""
  if os.environ.get("NVRTC_PATH"): return None
  roots = [*site.getsitepackages(), site.getusersitepackages()]
  found = lambda pattern: next((p for root in roots for p in sorted(glob.glob(os.path.join(root, "nvidia", pattern)))), None)
  nvrtc, jitlink = found("cuda_nvrtc/lib/libnvrtc.so.*[0-9]"), found("nvjitlink/lib/libnvJitLink.so.*[0-9]")
  if nvrtc is None:
    toolkit = [p for cuda in ("/usr/local/cuda", "/opt/cuda") for p in glob.glob(f"{cuda}/targets/*/lib/libnvrtc.so*")]
    if toolkit or ctypes.util.find_library("nvrtc"): return None
    return "NVIDIA's compiler is not installed: pip install -e \".[gpu-plan]\" (nvidia-cuda-nvrtc-cu12)"
  os.environ["NVRTC_PATH"] = nvrtc
  if jitlink: os.environ.setdefault("NVJITLINK_PATH", jitlink)
  getenv.cache_clear()  # tinygrad caches what it read of the environment
  return None
