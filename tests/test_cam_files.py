"""cam / CRF score files (ppc_jax/data/cam_io.py): ppc_jax's npz format (no pickle), the
reference's pickled .npy format only on request, and conversion between the two."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest

import e2e_fixtures as e2e
from ppc_jax import untrusted
from ppc_jax.data import cam_io

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cams(seed=0, shape=(5, 7), present=(0, 6, 19)):
  rng = np.random.default_rng(seed)
  norm = rng.random(shape + (20,), dtype=np.float32)
  norm[0, 0] = [np.float32(1e-38), np.float32(-0.0), np.nextafter(np.float32(1), 0)] + [0.5] * 17
  labels = np.zeros(20, np.float32)
  labels[list(present)] = 1
  return norm, labels


class _TouchPayload:
  """Unpickled by an unrestricted loader, it creates `marker`."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f"touch '{self.marker}'",)


def test_npz_round_trip_is_bit_identical(tmp_path):
  norm, labels = _cams()
  path = cam_io.save_cam_dict(tmp_path / "a", norm, labels)
  assert path == str(tmp_path / "a.npz")
  got = cam_io.load_cam_dict(path)
  assert list(got) == [0, 6, 19]
  for k, v in got.items():
    assert v.dtype == np.float32 and v.shape == (5, 7)
    assert v.tobytes() == np.ascontiguousarray(norm[..., k]).tobytes()  # bit for bit (-0.0 too)
  # What is on disk: two numeric arrays, readable without pickles.
  with np.load(path, allow_pickle=False) as z:
    assert sorted(z.files) == ["keys", "maps"]
    assert z["keys"].dtype == np.int64 and z["maps"].dtype == np.float32
  # No class present: an empty dict, the maps' size kept in the file.
  empty = cam_io.save_cam_dict(tmp_path / "e.npz", norm, np.zeros(20))
  assert cam_io.load_cam_dict(empty) == {}
  with np.load(empty) as z:
    assert z["maps"].shape == (0, 5, 7)
  assert sorted(os.listdir(tmp_path)) == ["a.npz", "e.npz"]  # no temp files left behind


def test_extensions_follow_the_format(tmp_path):
  norm, labels = _cams()
  assert cam_io.save_cam_dict(tmp_path / "r", norm, labels, fmt="reference_npy").endswith("r.npy")
  with pytest.raises(ValueError, match=r"x.npy: a 'npz' file must end with .npz"):
    cam_io.save_cam_dict(tmp_path / "x.npy", norm, labels)
  with pytest.raises(ValueError, match=r"must be one of \['npz', 'reference_npy'\]"):
    cam_io.save_cam_dict(tmp_path / "x", norm, labels, fmt="pickle")
  assert cam_io.file_path("d", "2007_000032") == os.path.join("d", "2007_000032.npz")
  assert cam_io.file_name("2007_000032", "reference_npy") == "2007_000032.npy"


def test_export_is_what_the_reference_writes_and_reads(tmp_path):
  norm, labels = _cams()
  path = cam_io.save_cam_dict(tmp_path / "2007_000032", norm, labels, fmt="reference_npy")
  # The reference's eval.py idiom reads it.
  ref = np.load(path, allow_pickle=True).item()
  assert isinstance(ref, dict) and list(ref) == [0, 6, 19] and all(type(k) is int for k in ref)
  for k, v in ref.items():
    assert v.dtype == np.float32
    np.testing.assert_array_equal(v, norm[..., k])
  # The same bytes as the reference's own `np.save(path, cam_dict)` of that dict.
  expected = io.BytesIO()
  np.save(expected, {k: np.ascontiguousarray(norm[..., k]) for k in (0, 6, 19)},
          allow_pickle=True)
  with open(path, "rb") as f:
    assert f.read() == expected.getvalue()


def test_pickled_npy_is_refused_unless_the_reference_format_is_asked_for(tmp_path):
  norm, labels = _cams()
  path = cam_io.save_cam_dict(tmp_path / "c", norm, labels, fmt="reference_npy")
  with pytest.raises(untrusted.UntrustedFileError, match=r"c.npy: is an .npy file, not the .npz.*"
                                                         r"reference_npy"):
    cam_io.load_cam_dict(path)
  # Renamed to .npz: still refused on its content, not trusted on its name.
  renamed = tmp_path / "renamed.npz"
  with open(path, "rb") as f:
    renamed.write_bytes(f.read())
  with pytest.raises(untrusted.UntrustedFileError, match="renamed.npz: is an .npy file"):
    cam_io.load_cam_dict(renamed)
  got = cam_io.load_cam_dict(path, fmt="reference_npy")
  for k, v in got.items():
    np.testing.assert_array_equal(v, norm[..., k])


def test_reference_format_goes_through_the_restricted_reader(tmp_path):
  marker = tmp_path / "pwned"
  path = tmp_path / "evil.npy"
  np.save(path, {0: np.zeros((2, 2), np.float32), 3: _TouchPayload(str(marker))},
          allow_pickle=True)
  np.load(path, allow_pickle=True)  # the control: an unrestricted loader runs the payload
  assert marker.exists()
  marker.unlink()
  for fmt in ("npz", "reference_npy"):
    with pytest.raises(untrusted.UntrustedFileError, match="evil.npy"):
      cam_io.load_cam_dict(path, fmt=fmt)
  with pytest.raises(untrusted.UnsafeFileError, match="evil.npy: refused pickled global"):
    cam_io.load_cam_dict(path, fmt="reference_npy")
  assert not marker.exists()


@pytest.mark.parametrize("arrays,match", [
    (dict(keys=np.array([3]), maps=np.zeros((1, 2, 2), np.float32), extra=np.zeros(1)),
     r"holds the arrays \['extra', 'keys', 'maps'\], not \['keys', 'maps'\]"),
    (dict(maps=np.zeros((1, 2, 2), np.float32)), r"holds the arrays \['maps'\]"),
    (dict(keys=np.array([[3]]), maps=np.zeros((1, 2, 2), np.float32)), r"'keys' is int64 \(1, 1\)"),
    (dict(keys=np.array([3.0]), maps=np.zeros((1, 2, 2), np.float32)), r"'keys' is float64"),
    (dict(keys=np.array([3, 4]), maps=np.zeros((1, 2, 2), np.float32)), r"K = 2"),
    (dict(keys=np.array([3]), maps=np.zeros((1, 2, 2), np.int32)), r"'maps' is int32"),
    (dict(keys=np.array([3]), maps=np.zeros((2, 2), np.float32)), r"'maps' is float32 \(2, 2\)"),
    (dict(keys=np.array([4, 3]), maps=np.zeros((2, 2, 2), np.float32)), r"not distinct, incr"),
    (dict(keys=np.array([3, 3]), maps=np.zeros((2, 2, 2), np.float32)), r"not distinct, incr"),
    (dict(keys=np.array([-1]), maps=np.zeros((1, 2, 2), np.float32)), r">= 0"),
    (dict(keys=np.array([20]), maps=np.zeros((1, 2, 2), np.float32)), r"unknown class index 20"),
])
def test_npz_structure_errors_name_the_file(tmp_path, arrays, match):
  path = tmp_path / "bad.npz"
  np.savez(path, **arrays)
  with pytest.raises(ValueError, match=match) as e:
    cam_io.load_cam_dict(path)
  assert str(e.value).startswith(str(path) + ": ")


def test_missing_file_names_the_other_format(tmp_path):
  norm, labels = _cams()
  cam_io.save_cam_dict(tmp_path / "a", norm, labels, fmt="reference_npy")
  with pytest.raises(FileNotFoundError, match="b.npz"):
    cam_io.load_cam_dict(tmp_path / "b.npz")
  error = cam_io.not_found_error(tmp_path / "a.npz")
  assert str(error).startswith(f"{tmp_path / 'a.npz'}: cam file not found; "
                               f"{tmp_path / 'a.npy'} exists instead")
  assert "python -m ppc_jax.data.cam_io --to=npz" in str(error)
  assert "exists instead" not in str(cam_io.not_found_error(tmp_path / "b.npz"))


def test_convert_dir_both_ways_keeps_values_and_resumes(tmp_path):
  src = tmp_path / "ref"
  for i in range(3):
    norm, labels = _cams(seed=i, present=(i, 10 + i))
    cam_io.save_cam_dict(src / f"id_{i}", norm, labels, fmt="reference_npy")
  cam_io.save_map_dict(src / "crf_0", {0: np.ones((5, 7)), 20: np.zeros((5, 7))},
                       "reference_npy")  # a CRF score dict: key 20 (class 19) is fine here
  summary = cam_io.convert_dir(src, tmp_path / "npz", "npz")
  assert (summary["converted"], summary["kept"]) == (4, 0)
  for name in ("id_0", "id_1", "id_2", "crf_0"):
    a = cam_io.load_cam_dict(src / f"{name}.npy", num_fg=None, fmt="reference_npy")
    b = cam_io.load_cam_dict(tmp_path / "npz" / f"{name}.npz", num_fg=None)
    assert list(a) == list(b)
    for k in a:
      assert a[k].tobytes() == b[k].tobytes()
  # Resume: what is there is kept; a lost file is redone.
  os.remove(tmp_path / "npz" / "id_1.npz")
  summary = cam_io.convert_dir(src, tmp_path / "npz", "npz")
  assert (summary["converted"], summary["kept"]) == (1, 3)
  # Back to the reference's format: the original bytes.
  cam_io.convert_dir(tmp_path / "npz", tmp_path / "back", "reference_npy")
  for name in ("id_0", "id_1", "id_2", "crf_0"):
    assert (tmp_path / "back" / f"{name}.npy").read_bytes() == (src / f"{name}.npy").read_bytes()
  with pytest.raises(FileNotFoundError, match="no .npz files"):
    cam_io.convert_dir(src, tmp_path / "x", "reference_npy")


def test_convert_command(tmp_path):
  norm, labels = _cams()
  cam_io.save_cam_dict(tmp_path / "cams" / "2007_000032", norm, labels)
  proc = subprocess.run(
      [sys.executable, "-m", "ppc_jax.data.cam_io", "--to=reference_npy",
       f"--src={tmp_path / 'cams'}", f"--dst={tmp_path / 'ref'}"],
      capture_output=True, text=True, timeout=e2e.PROCESS_TIMEOUT_S, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "1 files written" in proc.stdout
  ref = np.load(tmp_path / "ref" / "2007_000032.npy", allow_pickle=True).item()
  assert list(ref) == [0, 6, 19]
  np.testing.assert_array_equal(ref[6], norm[..., 6])
