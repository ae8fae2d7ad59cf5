"""Jitted steps on OpenCL replayed as prepared kernel launches: tinygrad's graph runner for CL, which tinygrad 0.14
has for CUDA, Metal and its HCQ runtimes but not for OpenCL.

Without a graph, TinyJit launches each kernel of a step through tinygrad's general path, which works out the
kernel's buffers, arguments and launch size from the captured step every time: 30 us of Python per kernel on a
2-core CPU, where PoCL takes a prepared launch in 3 (bench/cl_launch.py). GPT-2's decode step has about 200 kernels.
CLGraph prepares each kernel once, as a cl_kernel of its own whose buffer arguments stay set; a replay sets only
what changes (the step's input buffers, the symbolic variables such as the decoding position, and the launch sizes
that follow them) and enqueues the kernels in order on the device's in-order queue."""
import ctypes, time
from tinygrad import Device
from tinygrad.engine.jit import GraphRunner
from tinygrad.helpers import IMAGE
from tinygrad.runtime.autogen import opencl as cl
from tinygrad.runtime.ops_cl import check, checked
from aurora_tg.backends import fence


class CLGraph(GraphRunner):
  def __init__(self, linear, input_uops=()):
    super().__init__(linear, input_uops)
    self.device_name = self.calls[0][2][0].device
    self.dev = Device[self.device_name]
    self.kernels, self.sizes, self.inputs, self.variables = [], [], [], []
    for j, ((_, program, bufs, device_vars), runtime) in enumerate(zip(self.calls, self.runtimes)):
      info = program.arg
      kernel = checked(cl.clCreateKernel(runtime.program, info.function_name.encode(), status := ctypes.c_int32()), status)
      self.kernels.append(kernel)
      args = [bufs[position] for position in info.globals]  # the kernel's buffers, as tinygrad's launch passes them
      replaced = dict(self.uop_replace[j])  # call argument position -> the step's input it takes
      for index, (_, slot, dtype, _) in enumerate(runtime.signature):
        if slot < len(args):
          if (position := info.globals[slot]) in replaced: self.inputs.append((kernel, index, replaced[position]))
          else: self._set(kernel, index, args[slot].get_buf(self.device_name))
        else:
          variable, kind = info.vars[slot - len(args)].expr, getattr(ctypes, f"c_int{dtype.bitsize}")
          if variable in device_vars: self._set(kernel, index, kind(device_vars[variable]))
          else: self.variables.append((kernel, index, variable, kind))
      # a launch size that follows a variable is worked out at every replay (updated_launch_dims)
      self.sizes.append(None if j in self.launch_dims_replace else self._launch_size(*info.launch_dims({})))

  @staticmethod
  def _set(kernel, index: int, value): check(cl.clSetKernelArg(kernel, index, ctypes.sizeof(value), ctypes.byref(value)))

  @staticmethod
  def _launch_size(global_size, local_size) -> tuple:
    """OpenCL's total work-items per axis, and the work-group's (None: the driver picks)."""
    if local_size is None: return (ctypes.c_size_t * len(global_size))(*global_size), None
    total = [int(g * l) for g, l in zip(global_size, local_size)]
    return (ctypes.c_size_t * len(total))(*total), (ctypes.c_size_t * len(local_size))(*local_size)

  def __call__(self, input_uops, var_vals: dict[str, int], wait=False) -> float | None:
    for kernel, index, slot in self.inputs: self._set(kernel, index, input_uops[slot].buffer.get_buf(self.device_name))
    for kernel, index, variable, kind in self.variables: self._set(kernel, index, kind(var_vals[variable]))
    for j, global_size, local_size in self.updated_launch_dims(var_vals): self.sizes[j] = self._launch_size(global_size, local_size)
    started = time.perf_counter()
    for kernel, (total, group) in zip(self.kernels, self.sizes):
      check(cl.clEnqueueNDRangeKernel(self.dev.queue, kernel, len(total), None, total, group, 0, None, None))
    if not wait: return None
    self.dev.synchronize()
    return time.perf_counter() - started

  def __del__(self):
    try:
      for kernel in self.kernels: cl.clReleaseKernel(kernel)
    except (TypeError, AttributeError): pass  # as tinygrad's CLProgram: at interpreter exit the library may be gone


def install(device: str) -> bool:
  """Make jitted steps on `device` (a CL device) run through CLGraph; False where it does not apply: another backend,
  a graph already set, tinygrad's IMAGE mode, whose image arguments this runner does not prepare, or another tinygrad
  than the one it was written for (fence.py). The graph is the device's for the rest of the process (a training run,
  chat, the server, bench/decode.py)."""
  if device.split(":")[0] != "CL" or IMAGE or not fence.allows("the CL graph runner"): return False
  dev = Device[device]
  if dev.graph is None: dev.graph = CLGraph
  return dev.graph is CLGraph
