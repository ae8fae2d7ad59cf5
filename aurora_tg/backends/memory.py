"""Memory: the high-water mark of a piece of work, and how much memory a device offers.

tinygrad counts the bytes its buffers hold (GlobalCounters.mem_used) as a running total only; the high-water mark is
read at each allocation, where the total rises (Buffer.allocate, a private API: fenced, fence.py). On another tinygrad
there is no public way to read it, and the memory plan refuses with one line rather than under-count."""
import contextlib, gc, os
from pathlib import Path
from typing import Callable, Iterator
from tinygrad import Device
from tinygrad.helpers import GlobalCounters
from aurora_tg import UserError
from aurora_tg.backends import devices, fence


def held(backend: str) -> int:
  """Bytes tinygrad's buffers hold on the backend's devices (NULL, NULL:1, ...)."""
  return sum(n for device, n in GlobalCounters.mem_used_per_device.items() if device.split(":")[0] == backend)


@contextlib.contextmanager
def peak(backend: str) -> Iterator[Callable[[], int]]:
  """Within the block, peak() gives the most bytes held at once on the backend since the block began, less what
  was held then (buffers no longer referenced are collected first, so that they are not freed inside the block)."""
  if not fence.allows("the peak memory count"):
    raise UserError(f"the memory plan reads tinygrad's allocations, written for tinygrad {fence.WRITTEN_FOR} (installed: "
                    f"{fence.version()}); give --batch-size N instead")
  gc.collect()
  start = high = held(backend)
  from tinygrad.device import Buffer
  original = Buffer.allocate
  def allocate(self, *args, **kwargs):
    nonlocal high
    out = original(self, *args, **kwargs)
    high = max(high, held(backend))
    return out
  Buffer.allocate = allocate
  try: yield lambda: max(high, held(backend)) - start
  finally: Buffer.allocate = original


def available(device: str) -> int:
  """Bytes a run may fill on the device: free memory as the CUDA driver reports it, or on CPUs (CPU, and CL through
  PoCL) the memory the operating system says is available, within the container's limit. Elsewhere the user names a
  size (--plan-for 24GB)."""
  backend = device.split(":")[0]
  if (backend == "CPU" or backend == "CL" and devices.opencl_on_cpu()) and os.path.exists("/proc/meminfo"):
    with open("/proc/meminfo") as f: info = dict(line.split(":", 1) for line in f)
    free = int(info["MemAvailable"].split()[0]) * 1024
    cgroup = Path("/sys/fs/cgroup/memory.max")  # cgroup v2: a container's limit, or "max"
    limit = cgroup.read_text().strip() if cgroup.exists() else ""
    return min(free, int(limit)) if limit.isdigit() else free
  if backend == "CUDA" and fence.allows("asking CUDA its free memory"):
    import ctypes
    from tinygrad.runtime.autogen import cuda
    gc.collect()  # what earlier work left to the collector, and tinygrad's cache of freed buffers, count as free
    Device[device].allocator.free_cache()
    Device[device].synchronize()  # opens the device's context, which the query needs
    free, total = ctypes.c_size_t(), ctypes.c_size_t()
    if cuda.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total)) == 0: return free.value
  raise UserError(f"cannot ask {device} how much memory it has; give it: --plan-for SIZE (24GB, say) or a GPU's name")
