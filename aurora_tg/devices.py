"""Backend selection: tinygrad's DEV picks the device; this module only validates the user's choice."""
import contextlib
from tinygrad import Device, Tensor
from tinygrad.helpers import DEV
from aurora_tg import UserError

BACKENDS = ("CUDA", "NV", "AMD", "METAL", "CL", "CPU", "WEBGPU")


def works(device: str) -> bool:
  """Open the device and run one tiny kernel on it: opening alone succeeds on some half-installed backends."""
  with contextlib.suppress(Exception):
    return (Tensor([1.0, 2.0], device=device) * 2).tolist() == [2.0, 4.0]
  return False


def working_devices() -> list[str]:
  return [d for d in BACKENDS if works(d)]


def select_device(name: str | None) -> str:
  """Make `name` (e.g. CPU, CL, CUDA, METAL, CUDA:1) tinygrad's default device; None keeps tinygrad's own pick."""
  if name is None: return Device.DEFAULT
  name = name.upper()
  if name.split(":")[0] not in BACKENDS:
    raise UserError(f"unknown device {name!r}; choose from {', '.join(BACKENDS)} (working here: {', '.join(working_devices())})")
  if not works(name):
    raise UserError(f"device {name} is not available on this machine; working here: {', '.join(working_devices()) or 'none'}")
  DEV.value = name
  return Device.DEFAULT
