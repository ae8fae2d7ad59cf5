"""bench/walltime.py runs end to end on a tiny budget and prints its table: every run asked for, its steps and its
bits per byte (a speed figure is the bench's to report, not a test's to assert)."""
import os, re, subprocess, sys
from conftest import ROOT


def test_the_quick_walltime_bench_prints_a_row_per_run():
  done = subprocess.run([sys.executable, str(ROOT / "bench" / "walltime.py"), "--quick", "--runs", "aurora,torch-adamw"],
                        capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, "DEV": "CPU"})
  assert done.returncode == 0, done.stderr[-3000:]
  rows = [line for line in done.stdout.splitlines() if line.startswith("| Aurora") or line.startswith("| nanoGPT")]
  assert [row.split("|")[1].split(",")[1].strip() for row in rows if row.startswith("| Aurora")] == ["aurora"]
  for row in rows:
    steps, bpb = int(row.split("|")[2]), float(row.split("|")[6])
    assert steps >= 2 and 0 < bpb < 12, row  # trained, and a finite bits per byte below a uniform guess over 512 tokens
  try: import torch  # noqa: F401
  except ImportError: assert "no nanoGPT rows" in done.stdout
  else: assert any(row.startswith("| nanoGPT") for row in rows)
