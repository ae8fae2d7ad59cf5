"""The fence around tinygrad's private internals. Each use in backends/ names itself here and runs only on the tinygrad
version it was written and tested for (pyproject.toml pins it); on any other, its caller takes tinygrad's public path
and the user is told once. Every other module of Aurora uses tinygrad's public API alone.

What stands behind the fence, and why each is worth it (docs/architecture.md has the figures):
- host_copy.py: a decode step's few values copied through the backend's allocator, not a copy graph (CPU, CL).
- cl_graph.py: jitted steps on OpenCL replayed as prepared kernel launches (tinygrad has no graph runner for CL).
- cpu_queue.py: decoding on the CPU backend through its command queue (the HCQ2 switch).
- devices.py: one work-item per matrix-vector output on an OpenCL CPU (MV_THREADS_PER_ROW, getenv's cache).
- scatter.py: the token embedding's gradient as an atomic scatter-add kernel built from UOps (CPU, CL, CUDA, AMD).
- kernel_search.py: BEAM's progress bar, drawn by replacing the tqdm tinygrad's compiler looks up.
- memory.py: a step's peak memory, read where tinygrad's buffers allocate (the memory plan, `train.py --plan`), and
  CUDA's free memory through tinygrad's driver bindings (`--batch-size auto`).
- kernel_costs.py: each launched kernel's FLOPs and bytes, read where tinygrad adds them up (the roofline)."""
import functools, importlib.metadata, sys

WRITTEN_FOR = "0.14.0"


@functools.cache
def version() -> str:
  """The installed tinygrad's version, read without importing it (cpu_queue.py must act before tinygrad loads)."""
  return importlib.metadata.version("tinygrad")


def allows(use: str) -> bool:
  """Whether `use` (a short name of a private-API use) may run: the installed tinygrad is the one it was written for.
  Otherwise, the first time a use is refused, one note on stderr says which path is taken instead."""
  if version() == WRITTEN_FOR: return True
  _note(use)
  return False


@functools.cache
def _note(use: str):
  print(f"note: {use} was written for tinygrad {WRITTEN_FOR}; with tinygrad {version()} Aurora takes tinygrad's public "
        "path instead (slower, not wrong)", file=sys.stderr)
