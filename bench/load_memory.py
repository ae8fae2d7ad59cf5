"""Memory of loading a Hugging Face GPT-2 folder: peak resident memory while hf.load_weights reads it, against the
size of its weights, and against loading the whole file into memory first (a baseline in the same run).

  python bench/load_memory.py [--size gpt2|gpt2-medium|gpt2-large|gpt2-xl] [--device CPU]

It writes a folder of random weights with that size's shapes to a temporary directory (GPT-2 124M: 0.5 GB)."""
import argparse, json, os, subprocess, sys, tempfile
from pathlib import Path
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DIMS = {"gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024), "gpt2-large": (36, 20, 1280), "gpt2-xl": (48, 25, 1600)}

# run in a fresh process each, so one way's peak does not hide the other's. Prints the peak resident memory above
# the imports' (it includes the file's pages while they are mapped, which the OS can drop), the memory held
# afterwards (the model's own), and seconds.
MEASURE = """
import sys, time
sys.path.insert(0, {root!r})
from tinygrad import Tensor
from tinygrad.nn.state import get_state_dict
from aurora_tg.formats import huggingface as hf
import numpy as np
def status_mb(key):  # VmHWM (peak resident): unlike ru_maxrss, it does not carry the parent's peak across exec
  return int(open("/proc/self/status").read().split(key + ":")[1].split()[0]) / 1024
def held_mb(): return status_mb("RssAnon") + status_mb("RssShmem")  # tinygrad's CPU buffers are shared memory
baseline, held_before = status_mb("VmHWM"), held_mb()
start = time.perf_counter()
if {whole_file}:  # baseline: every tensor read into numpy, then copied into the model
  from safetensors_by_hand import read_all
  arrays = read_all({path!r})
  model = hf.GPT(hf.read_config(__import__('pathlib').Path({folder!r})))
  for name, t in get_state_dict(model).items():
    a = arrays[name]
    t.replace(Tensor(np.ascontiguousarray(a.T if name.endswith(hf.CONV1D) else a))).realize()
else: model = hf.load_weights({folder!r})
Tensor.realize(*get_state_dict(model).values())
print(status_mb("VmHWM") - baseline, held_mb() - held_before, time.perf_counter() - start)
"""

READER = '''
import json, struct, numpy as np
def read_all(path):
  raw = open(path, "rb").read()
  n = struct.unpack("<Q", raw[:8])[0]
  header = json.loads(raw[8:8 + n])
  return {k: np.frombuffer(raw[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]], np.float32).reshape(v["shape"]).copy()
          for k, v in header.items() if k != "__metadata__"}
'''


def write_folder(folder: Path, n_layer: int, n_head: int, n_embd: int):
  from tinygrad import Tensor
  from tinygrad.nn.state import safe_save
  C, rng = n_embd, np.random.default_rng(0)
  shapes = {"wte.weight": (50257, C), "wpe.weight": (1024, C), "ln_f.weight": (C,), "ln_f.bias": (C,)}
  for i in range(n_layer):
    shapes |= {f"h.{i}.ln_1.weight": (C,), f"h.{i}.ln_1.bias": (C,), f"h.{i}.attn.c_attn.weight": (C, 3 * C),
               f"h.{i}.attn.c_attn.bias": (3 * C,), f"h.{i}.attn.c_proj.weight": (C, C), f"h.{i}.attn.c_proj.bias": (C,),
               f"h.{i}.ln_2.weight": (C,), f"h.{i}.ln_2.bias": (C,), f"h.{i}.mlp.c_fc.weight": (C, 4 * C),
               f"h.{i}.mlp.c_fc.bias": (4 * C,), f"h.{i}.mlp.c_proj.weight": (4 * C, C), f"h.{i}.mlp.c_proj.bias": (C,)}
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": n_layer, "n_head": n_head, "n_embd": C,
                                                  "n_positions": 1024, "vocab_size": 50257}))
  safe_save({k: Tensor(rng.standard_normal(s, dtype=np.float32) * 0.02) for k, s in shapes.items()}, str(folder / "model.safetensors"))
  (folder / "safetensors_by_hand.py").write_text(READER)


def measure(folder: Path, device: str, whole_file: bool) -> tuple[float, float, float]:
  code = MEASURE.format(root=str(ROOT), whole_file=whole_file, path=str(folder / "model.safetensors"), folder=str(folder))
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=folder, env=os.environ | {"DEV": device})
  if proc.returncode: sys.exit(f"measuring failed:\n{proc.stderr}")
  return tuple(float(x) for x in proc.stdout.split()[-3:])


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--size", default="gpt2", choices=DIMS)
  p.add_argument("--device", default="CPU")
  args = p.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    folder = Path(tmp) / args.size
    write_folder(folder, *DIMS[args.size])
    weights_mb = (folder / "model.safetensors").stat().st_size / 2**20
    print(f"{args.size}: {weights_mb:,.0f} MB of float32 weights, device {args.device}")
    print("| loading | peak resident (x weights) | held after loading (x weights) | seconds |\n|---|---|---|---|")
    for label, whole in (("hf.load_weights (memory-mapped, tensor by tensor)", False), ("whole file into numpy first", True)):
      peak, held, seconds = measure(folder, args.device, whole)
      print(f"| {label} | {peak:,.0f} MB ({peak / weights_mb:.2f}x) | {held:,.0f} MB ({held / weights_mb:.2f}x) | {seconds:.1f} |")


if __name__ == "__main__":
  main()
