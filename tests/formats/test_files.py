"""Crash-safe files: atomic replacement under concurrent writers, safetensors with checksums, the run folder's lock."""
import errno, json, os
import numpy as np
import pytest
from tinygrad import Tensor
from tinygrad.nn.state import safe_load_metadata
from aurora_tg import UserError
from aurora_tg.formats import files


def test_concurrent_writers_of_one_file_never_share_a_temporary(tmp_path):
  """Two writers of one path (two runs, a shared token cache): each has its own temporary; the last rename wins."""
  target = tmp_path / "shared.txt"
  def outer(tmp):
    open(tmp, "w").write("outer")
    files.write_atomically(target, lambda inner_tmp: open(inner_tmp, "w").write("inner"))  # lands mid-write
  files.write_atomically(target, outer)
  assert target.read_text() == "outer" and sorted(p.name for p in tmp_path.iterdir()) == ["shared.txt"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
  target = tmp_path / "f.txt"
  target.write_text("old")
  def broken(tmp):
    open(tmp, "w").write("half")
    raise OSError(errno.ENOSPC, "No space left on device")
  with pytest.raises(UserError, match=r"cannot write .*f.txt: No space left on device \(needed 0.0 MB, .* MB free\)"):
    files.write_atomically(target, broken, size=10)
  assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_safetensors_round_trip_and_a_flipped_byte_names_its_tensor(tmp_path):
  rng = np.random.default_rng(0)
  arrays = {"a": rng.standard_normal((3, 5)).astype(np.float32), "b": np.arange(7, dtype=np.int32), "c": rng.standard_normal(4).astype(np.float16)}
  path = tmp_path / "x.safetensors"
  files.write_safetensors(path, {k: Tensor(v) for k, v in arrays.items()}, {"note": "hello"})
  tensors, metadata = files.read_safetensors(path)
  assert metadata["note"] == "hello" and set(json.loads(metadata[files.CHECKSUMS])) == set(arrays)
  for k, v in arrays.items(): np.testing.assert_array_equal(tensors[k].numpy(), v)
  _, data_start, header = safe_load_metadata(str(path))
  raw = bytearray(path.read_bytes())
  raw[data_start + header["b"]["data_offsets"][0] + 5] ^= 0x10  # one bit of tensor b
  path.write_bytes(bytes(raw))
  with pytest.raises(UserError, match="tensor b do not match their checksum"): files.read_safetensors(path)
  path.write_bytes(bytes(raw[:-3]))
  with pytest.raises(ValueError, match="truncated"): files.read_safetensors(path)


def test_a_run_folder_has_one_owner_at_a_time(tmp_path):
  with files.RunLock(tmp_path / "run"):
    with pytest.raises(UserError, match=rf"run is in use by process {os.getpid()} \("): files.RunLock(tmp_path / "run")
  with files.RunLock(tmp_path / "run"): pass  # released with its owner


def test_stale_temporaries_go(tmp_path):
  for name in ("checkpoint.safetensors.tmp-123-abcdef", "tokenizer.json.tmp", "checkpoint.safetensors", "metrics.jsonl"):
    (tmp_path / name).write_text("x")
  files.remove_stale_temporaries(tmp_path)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.safetensors", "metrics.jsonl"]
