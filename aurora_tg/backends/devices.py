"""Backend selection: tinygrad's DEV picks the device (DEV.value is how tinygrad asks to set it at run time); this module
validates the user's choice, and tunes decoding on an OpenCL CPU through tinygrad's internals (fenced, fence.py)."""
import ctypes, functools, os
from tinygrad import Device, Tensor, dtypes
from tinygrad.helpers import DEV, getenv
from aurora_tg import UserError
from aurora_tg.backends import fence

BACKENDS = ("CUDA", "NV", "AMD", "METAL", "CL", "CPU", "WEBGPU")
INSTALL_HINT = ("install one: clang for the CPU (apt install clang), an OpenCL driver for CL (apt install pocl-opencl-icd "
                "runs it on the CPU), NVIDIA's driver for CUDA; METAL comes with macOS")
# PoCL (OpenCL on CPUs) compiles every kernel with its built-in clang, which prints "1 warning generated." to the
# process's stderr for some of tinygrad's kernels: -w turns the compiler's warnings off at the source.
os.environ.setdefault("POCL_EXTRA_BUILD_FLAGS", "-w")


def problem(device: str) -> str | None:
  """Why the device does not work (None: it does). It is opened and runs one tiny kernel: opening alone succeeds on
  some half-installed backends. A wrong result is a problem too, named as such."""
  try: result = (Tensor([1.0, 2.0], device=device) * 2).tolist()
  except Exception as e: return f"{type(e).__name__}: {next(iter(str(e).strip().splitlines()), '')}"
  return None if result == [2.0, 4.0] else f"computed {result} for [2.0, 4.0] (a wrong result)"


def works(device: str) -> bool: return problem(device) is None


@functools.cache  # a new run asks twice (the preset's default, then the machine check); the answer does not change
def dtype_problem(device: str, dtype: str) -> str | None:
  """Why the device cannot store and compute in dtype (None: it can), tried once: renderers' own claims are not
  enough (tinygrad's CPU renderer offers bfloat16 on x86, but older clang cannot compile it). The compiler's
  complaint goes to /dev/null. float32 is every backend's own dtype: no probe (it would cost a kernel at every
  start). A kernel that compiles and computes wrongly is named apart from one that does not compile."""
  if dtype == "float32": return None
  saved_stderr = os.dup(2)
  try:
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    stored = (Tensor([1.5, 2.5], device=device).contiguous() * 2).cast(getattr(dtypes, dtype)).realize()
    result = (stored * 2).float().tolist()
  except Exception as e: return f"cannot compile {dtype} kernels ({type(e).__name__})"
  finally: os.dup2(saved_stderr, 2)
  return None if result == [6.0, 10.0] else f"computes {result} in {dtype} for [6.0, 10.0] (a wrong result)"


def supports_dtype(device: str, dtype: str) -> bool: return dtype_problem(device, dtype) is None


def working_devices() -> list[str]:
  return [d for d in BACKENDS if works(d)]


def opencl_on_cpu() -> bool:
  """Whether tinygrad's CL device is a CPU (PoCL) rather than a GPU."""
  from tinygrad.runtime.autogen import opencl as cl
  kind = cl.cl_device_type()
  failed = cl.clGetDeviceInfo(Device["CL"].cl_dev, cl.CL_DEVICE_TYPE, ctypes.sizeof(kind), ctypes.byref(kind), None)
  return not failed and bool(kind.value & cl.CL_DEVICE_TYPE_CPU)


def replay_jitted_steps():
  """On CL, jitted steps (training's, evaluation's and decoding's) replay as prepared kernel launches
  (aurora_tg/backends/cl_graph.py), 3 us a launch instead of 30 on a 2-core CPU (bench/cl_launch.py): a train step
  of the small preset has several hundred kernels, and is about 9% faster. Other backends keep tinygrad's own graph."""
  if Device.DEFAULT.split(":")[0] != "CL": return
  from aurora_tg.backends import cl_graph  # here: it loads tinygrad's OpenCL runtime, which other backends' machines may lack
  cl_graph.install(Device.DEFAULT)


def tune_for_decoding():
  """Decoding spends its time in matrix-vector products, which tinygrad's heuristic lays out for GPUs: each output's
  sum is split over 8 work-items that meet in local memory. An OpenCL CPU (PoCL) runs work-items in turn, and there
  one work-item per output makes each of GPT-2 124M's matvecs 1.4-3x faster (README). chat.py calls this once the
  device is selected; training keeps tinygrad's layout (the setting made its steps about 3% slower, within noise).
  A value the user set stays. Jitted steps replay as prepared launches (replay_jitted_steps)."""
  if Device.DEFAULT.split(":")[0] != "CL" or not fence.allows("decoding's tuning for OpenCL"): return
  replay_jitted_steps()
  if "MV_THREADS_PER_ROW" not in os.environ and opencl_on_cpu():
    os.environ["MV_THREADS_PER_ROW"] = "1"
    getenv.cache_clear()  # tinygrad caches what it read of the environment


def select_device(name: str | None) -> str:
  """Make the backend `name` (CPU, CL, CUDA, METAL, ...) tinygrad's default device; None keeps tinygrad's own pick."""
  if name is None:
    try: return Device.DEFAULT
    except RuntimeError: raise UserError(f"no tinygrad backend works on this machine; {INSTALL_HINT}") from None
  name = name.upper()
  if ":" in name:  # tinygrad's DEV reads what follows a colon as a renderer, not a device index
    raise UserError(f"--device takes a backend such as {name.split(':')[0]}, not {name}; pick devices by index with --devices")
  if name.split(":")[0] not in BACKENDS:
    raise UserError(f"unknown device {name!r}; choose from {', '.join(BACKENDS)} (working here: {', '.join(working_devices())})")
  if not works(name):
    working = ", ".join(working_devices())
    raise UserError(f"device {name} is not available on this machine; " + (f"working here: {working}" if working else f"none works here: {INSTALL_HINT}"))
  DEV.value = name
  return Device.DEFAULT


def parse_devices(spec: str | None) -> tuple[str, ...]:
  """--devices for data parallelism: a list (CUDA:0,CUDA:1) or a count of the default backend's devices (8).
  () means one device, the default."""
  if spec is None: return ()
  spec = spec.strip().upper()
  if spec.isdigit(): names = [f"{Device.DEFAULT.split(':')[0]}:{i}" for i in range(int(spec))]
  else: names = [name.strip() for name in spec.split(",") if name.strip()]
  if not names: raise UserError(f"--devices needs a device list or a count, got {spec!r}")
  if len(set(names)) < len(names): raise UserError(f"--devices lists a device twice: {spec}")
  for name in names:
    if name.split(":")[0] not in BACKENDS: raise UserError(f"unknown device {name!r} in --devices; backends: {', '.join(BACKENDS)}")
    if not works(name): raise UserError(f"device {name} in --devices is not available on this machine")
  if len(names) == 1 and not spec.isdigit(): raise UserError(f"--devices {spec}: data parallel needs two or more devices")
  select_device(names[0].split(":")[0])  # tensors made before they are split start on the first device's backend
  return tuple(names) if len(names) > 1 else ()


def like(t: Tensor, other: Tensor) -> Tensor:
  """t on other's device: copied to it, or replicated over the devices of a data-parallel (multi-device) tensor."""
  return t.shard(other.device) if isinstance(other.device, tuple) else t.to(other.device)
