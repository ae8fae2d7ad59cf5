"""bench/qlora.py runs end to end on a short run and prints a row for the base asked for, whose bytes shrink as the
paper's format says they must (a speed or loss figure is the bench's to report, not a test's to assert)."""
import os, subprocess, sys
from conftest import ROOT


def test_the_qlora_bench_prints_a_row_per_base(finished_run, tmp_path):
  out = tmp_path / "qlora.md"
  done = subprocess.run([sys.executable, str(ROOT / "bench" / "qlora.py"), "--init", str(finished_run[0]), "--steps", "3",
                         "--kinds", "nf4", "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, "DEV": "CPU"})
  assert done.returncode == 0, done.stderr[-3000:]
  rows = {line.split("|")[1].strip(): line.split("|") for line in out.read_text().splitlines() if line.startswith("| ") and "base" not in line}
  assert list(rows) == ["nf4"]  # one base keeps the test short; the ratio is to the checkpoint's float32 bytes
  ratio = {kind: float(row[3].strip().rstrip("x")) for kind, row in rows.items()}
  assert 0.13 < ratio["nf4"] < 0.2, ratio  # 4.5 bits a weight; biases and norms stay float32
  assert all(0 < float(row[6]) < 10 and 0 < float(row[8]) < 10 for row in rows.values())  # trained to a finite held-out loss
