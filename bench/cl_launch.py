"""What launching one kernel costs on OpenCL, in one run: a jitted chain of small kernels launched by tinygrad's own
path (a kernel at a time from Python), the same chain replayed through aurora_tg/backends/cl_graph.py, and, as the floor,
the OpenCL driver taking a prepared launch with nothing else around it.

  python bench/cl_launch.py [--kernels 200] [--calls 50]
"""
import argparse, ctypes, time
from tinygrad import Device, Tensor, TinyJit
from tinygrad.helpers import to_char_p_p
from tinygrad.runtime.autogen import opencl as cl
from tinygrad.runtime.ops_cl import BP_CB, check, checked


def jitted_chain(kernels: int):
  """A step of `kernels` tiny elementwise kernels (64 floats each), so the time is launching, not computing."""
  start = Tensor.zeros(64, device="CL").contiguous().realize()

  @TinyJit
  def step():
    x = start
    for _ in range(kernels): x = (x + 1).contiguous()
    return x.realize()
  return step


def per_kernel_us(step, kernels: int, calls: int) -> float:
  for _ in range(3): step()  # compile, capture, and a first replay
  Device["CL"].synchronize()
  started = time.perf_counter()
  for _ in range(calls): step()
  Device["CL"].synchronize()
  return (time.perf_counter() - started) / calls / kernels * 1e6


def driver_us(launches: int) -> float:
  """One kernel, its argument set once, enqueued `launches` times: the driver's own cost per launch."""
  dev = Device["CL"]
  source = b"__kernel void add_one(__global float* a) { a[get_global_id(0)] += 1.0f; }"
  program = checked(cl.clCreateProgramWithSource(dev.context, 1, to_char_p_p([source]), None, status := ctypes.c_int32()), status)
  check(cl.clBuildProgram(program, 1, dev.cl_dev, None, BP_CB(), None))
  kernel = checked(cl.clCreateKernel(program, b"add_one", status), status)
  buffer = checked(cl.clCreateBuffer(dev.context, cl.CL_MEM_READ_WRITE, 256, None, status), status)
  check(cl.clSetKernelArg(kernel, 0, ctypes.sizeof(buffer), ctypes.byref(buffer)))
  size = (ctypes.c_size_t * 1)(64)
  for _ in range(2):  # the first round compiles for the launch size; the second is the one timed
    started = time.perf_counter()
    for _ in range(launches): check(cl.clEnqueueNDRangeKernel(dev.queue, kernel, 1, None, size, None, 0, None, None))
    dev.synchronize()
  seconds = time.perf_counter() - started
  for release, handle in ((cl.clReleaseMemObject, buffer), (cl.clReleaseKernel, kernel), (cl.clReleaseProgram, program)): release(handle)
  return seconds / launches * 1e6


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--kernels", type=int, default=200, help="kernels per jitted step (GPT-2 124M decodes a token in about 200)")
  p.add_argument("--calls", type=int, default=50, help="timed calls of the step")
  args = p.parse_args()
  from aurora_tg.backends.cl_graph import install
  dev = Device["CL"]
  print(f"OpenCL device: {dev.device_name} ({dev.driver_version}); a step of {args.kernels} kernels, {args.calls} calls timed")
  saved, dev.graph = dev.graph, None
  tinygrad = per_kernel_us(jitted_chain(args.kernels), args.kernels, args.calls)
  dev.graph = saved
  install("CL")
  graph = per_kernel_us(jitted_chain(args.kernels), args.kernels, args.calls)
  floor = driver_us(args.kernels * args.calls)
  print("| launch path | us per kernel | vs tinygrad's |\n|---|---|---|")
  for label, us in (("tinygrad, kernel by kernel", tinygrad), ("CLGraph replay (aurora_tg/backends/cl_graph.py)", graph),
                    ("the driver alone, one prepared kernel", floor)):
    print(f"| {label} | {us:.1f} | {tinygrad / us:.1f}x |")


if __name__ == "__main__":
  main()
