"""CAM post-processing and cam_dict files vs independent re-derivations (torch interpolate as the
resize oracle)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ppc_jax.data import cam_io
from ppc_jax.seeds import cam_postprocess as cp

ORIG = (11, 14)  # (H, W) of a tiny "original image"
SCALES = (0.5, 1.0, 1.5, 2.0)


def _scaled_size(s):
  # Python round() (halves to even), as the reference's VOC12ClsDatasetMSF.
  return round(ORIG[0] * s), round(ORIG[1] * s)


def _labels(present):
  lab = np.zeros(20, np.float32)
  lab[list(present)] = 1.0
  return lab


def torch_merge(cams_chw, label, orig_size):
  """The reference `_work` + sum in torch/numpy; [21, Hs, Ws] CAMs in [s0, s0f, s1, ...] order."""
  out = []
  for i, cam in enumerate(cams_chw):
    t = torch.from_numpy(np.ascontiguousarray(cam[None, 1:]))
    up = F.interpolate(t, orig_size, mode="bilinear", align_corners=False)[0].numpy()
    up = up * label.reshape(20, 1, 1)
    if i % 2 == 1:
      up = np.flip(up, axis=-1)
    out.append(up)
  return np.sum(out, axis=0)  # [20, H, W]


def numpy_normalize(sum_cam_chw):
  """The reference min-max block, literally, on a [20, H, W] float32 array."""
  sum_cam = sum_cam_chw.copy()
  sum_cam[sum_cam < 0] = 0
  cam_max = np.max(sum_cam, (1, 2), keepdims=True)
  cam_min = np.min(sum_cam, (1, 2), keepdims=True)
  sum_cam[sum_cam < cam_min + 1e-5] = 0
  return (sum_cam - cam_min - 1e-5) / (cam_max - cam_min + 1e-5)


def _random_inputs(rng):
  cams = []
  for s in SCALES:
    hs, ws = _scaled_size(s)
    for _ in range(2):  # original and flipped input: independent values
      cams.append(rng.normal(size=(21, hs, ws)).astype(np.float32))
  return cams


def test_merge_scale_matches_torch_reference():
  rng = np.random.default_rng(0)
  cams = _random_inputs(rng)
  label = _labels([2, 7, 19])
  expected = torch_merge(cams, label, ORIG).transpose(1, 2, 0)
  nhwc = [c.transpose(1, 2, 0) for c in cams]
  # One group per scale, [2, Hs, Ws, 21] = (orig, flip) with the default flip pattern, jitted as
  # inference runs it.
  merge = jax.jit(lambda c, l, s: cp.merge_scale(c, l, ORIG, sum_cam=s))
  got_pairs = jnp.zeros(ORIG + (20,), jnp.float32)
  for i in range(0, len(nhwc), 2):
    got_pairs = merge(np.stack(nhwc[i:i + 2]), label, got_pairs)
  np.testing.assert_allclose(np.asarray(got_pairs), expected, rtol=1e-5, atol=1e-5)
  # Single inputs in the [s0, s0f, s1, s1f, ...] order, each with its flip flag, give the same sum.
  got_singles = None
  for i, c in enumerate(nhwc):
    got_singles = cp.merge_scale(c[None], label, ORIG, flipped=cp.default_flipped(1, i),
                                 sum_cam=got_singles)
  np.testing.assert_allclose(np.asarray(got_singles), expected, rtol=1e-5, atol=1e-5)
  # Absent classes are exactly zero.
  absent = np.setdiff1d(np.arange(20), [2, 7, 19])
  assert np.all(np.asarray(got_pairs)[..., absent] == 0)


def test_merge_scale_running_sum_and_explicit_flips():
  rng = np.random.default_rng(1)
  cams = _random_inputs(rng)
  label = _labels([0, 5])
  nhwc = [c.transpose(1, 2, 0) for c in cams]
  acc = None
  for i in range(0, len(nhwc), 2):
    acc = cp.merge_scale(np.stack(nhwc[i:i + 2]), label, ORIG, flipped=(False, True), sum_cam=acc)
  expected = torch_merge(cams, label, ORIG).transpose(1, 2, 0)
  np.testing.assert_allclose(np.asarray(acc), expected, rtol=1e-5, atol=1e-5)


def test_unflip():
  """A flipped input whose CAM is the mirror of the original's contributes the same map back."""
  rng = np.random.default_rng(2)
  hs, ws = 6, 9
  cam = rng.normal(size=(hs, ws, 21)).astype(np.float32)
  label = _labels(range(20))
  pair = np.stack([cam, cam[:, ::-1]])
  merged = np.asarray(cp.merge_scale(pair, label, ORIG))
  single = np.asarray(cp.merge_scale(cam[None], label, ORIG, flipped=(False,)))
  np.testing.assert_allclose(merged, 2 * single, rtol=1e-5, atol=1e-5)
  # A single flipped input = the mirror (along W) of the unflipped result of its CAM.
  flip_only = np.asarray(cp.merge_scale(cam[None], label, ORIG, flipped=(True,)))
  np.testing.assert_allclose(flip_only, single[:, ::-1], rtol=1e-6, atol=1e-6)
  # Traced flip flags work too.
  traced = jax.jit(lambda c, f: cp.merge_scale(c, label, ORIG, flipped=f))(
      cam[None], jnp.array([True]))
  np.testing.assert_allclose(np.asarray(traced), flip_only, rtol=1e-6, atol=1e-6)


def test_normalize_cam_matches_reference_numpy():
  rng = np.random.default_rng(4)
  sum_cam = rng.normal(size=(20, 9, 13)).astype(np.float32) * 3
  sum_cam[4] = 0.0  # absent class -> -1 everywhere
  sum_cam[6] = 2.5  # constant class
  sum_cam[8] = np.abs(sum_cam[8]) + 1.0  # strictly positive min
  expected = numpy_normalize(sum_cam)
  got = np.asarray(jax.jit(cp.normalize_cam)(sum_cam.transpose(1, 2, 0))).transpose(2, 0, 1)
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(got[4], -1.0, atol=1e-6)
  assert got.max() <= 1.0


def test_seed_from_cams_matches_reference_argmax():
  rng = np.random.default_rng(6)
  present = [3, 10, 14]
  label = _labels(present)
  sum_cam = np.abs(rng.normal(size=(20, 8, 10)).astype(np.float32)) * label.reshape(20, 1, 1)
  norm = numpy_normalize(sum_cam)  # absent classes are -1, as in the reference infer
  norm[3, 0, :4] = np.float32(0.26)  # exactly the threshold -> background
  t = 0.26
  # Reference (contrast_infer.py out_cam_pred): argmax over [bg, all 20 normalised CAMs].
  bg = np.full((1, 8, 10), t, np.float32)
  expected = np.argmax(np.concatenate([bg, norm]), 0)
  got = np.asarray(jax.jit(cp.seed_from_cams)(norm.transpose(1, 2, 0), label, t))
  np.testing.assert_array_equal(got, expected)
  assert got.dtype == np.int32
  # The host (numpy) version that CAM inference writes seeds with: the same map, exactly.
  host = cp.seed_from_cams_host(norm.transpose(1, 2, 0), label, t)
  np.testing.assert_array_equal(host, expected)
  assert host.dtype == np.int32
  assert set(np.unique(got)) <= {0, 4, 11, 15}
  assert np.all(got[0, :4][norm[:, 0, :4].max(0) <= np.float32(t)] == 0)


def test_cam_dict_round_trip(tmp_path):
  rng = np.random.default_rng(7)
  norm = rng.random((6, 7, 20)).astype(np.float32)
  label = _labels([0, 12, 19])
  path = cam_io.save_cam_dict(tmp_path / "2007_000032", norm, label)
  assert path.endswith("2007_000032.npz") and os.path.isfile(path)
  assert sorted(os.listdir(tmp_path)) == ["2007_000032.npz"]  # no temp files left behind
  # The file: keys [K] + maps float32 [K, H, W], readable without pickles.
  with np.load(path, allow_pickle=False) as z:
    assert sorted(z.files) == ["keys", "maps"]
    np.testing.assert_array_equal(z["keys"], [0, 12, 19])
    assert z["maps"].dtype == np.float32 and z["maps"].shape == (3, 6, 7)
  loaded = cam_io.load_cam_dict(path)
  assert list(loaded) == [0, 12, 19]
  for k in loaded:
    assert loaded[k].dtype == np.float32
    np.testing.assert_array_equal(loaded[k], norm[..., k])
  # Jax arrays are accepted and overwriting works.
  cam_io.save_cam_dict(path, jnp.asarray(norm), _labels([5]))
  assert list(cam_io.load_cam_dict(path)) == [5]


def test_cam_dict_reference_format(tmp_path):
  rng = np.random.default_rng(7)
  norm = rng.random((6, 7, 20)).astype(np.float32)
  label = _labels([0, 12, 19])
  path = cam_io.save_cam_dict(tmp_path / "2007_000032", norm, label, fmt="reference_npy")
  assert path.endswith("2007_000032.npy")
  # The reference reader: np.load(...).item() gives {int: float32 [H, W]} for present classes.
  raw = np.load(path, allow_pickle=True).item()
  assert isinstance(raw, dict) and sorted(raw) == [0, 12, 19]
  assert all(type(k) is int for k in raw)
  for k, v in raw.items():
    assert v.dtype == np.float32 and v.shape == (6, 7)
    np.testing.assert_array_equal(v, norm[..., k])
  loaded = cam_io.load_cam_dict(path, fmt="reference_npy")
  assert list(loaded) == [0, 12, 19]
  for k in loaded:
    np.testing.assert_array_equal(loaded[k], norm[..., k])


@pytest.mark.parametrize("bad,match", [
    ({20: np.zeros((2, 2), np.float32)}, "unknown class index 20"),
    ({-1: np.zeros((2, 2), np.float32)}, "unknown class index -1"),
    ({"cat": np.zeros((2, 2), np.float32)}, "x.npy: key 'cat' is a str, not int"),
    ({0: np.zeros((2, 2)), 1: np.zeros((3, 2))}, "different shapes"),
    ({0: np.zeros((2, 2, 2))}, r"must be \[H, W\]"),
])
def test_load_cam_dict_errors(tmp_path, bad, match):
  path = tmp_path / "x.npy"
  np.save(path, bad, allow_pickle=True)
  with pytest.raises(ValueError, match=match):
    cam_io.load_cam_dict(path, fmt="reference_npy")


def test_load_cam_dict_not_a_dict_and_missing(tmp_path):
  np.save(tmp_path / "arr.npy", np.zeros((2, 2)))
  with pytest.raises(ValueError, match=r"arr.npy: holds a float64 array of shape \(2, 2\), not a"):
    cam_io.load_cam_dict(tmp_path / "arr.npy", fmt="reference_npy")
  with pytest.raises(FileNotFoundError, match="nope.npz"):
    cam_io.load_cam_dict(tmp_path / "nope.npz")


def test_save_label_png(tmp_path):
  label_map = np.arange(21 * 3).reshape(7, 9) % 21
  label_map[0, 0] = 255
  path = tmp_path / "sub" / "seed.png"
  cp.save_label_png(path, label_map)
  img = Image.open(path)
  assert img.mode == "P"
  np.testing.assert_array_equal(np.array(img), label_map)
  rgb = np.array(img.convert("RGB"))
  # VOC palette: 1 aeroplane (128, 0, 0), 15 person (192, 128, 128), 0 background black.
  assert tuple(rgb[label_map == 1][0]) == (128, 0, 0)
  assert tuple(rgb[label_map == 15][0]) == (192, 128, 128)
  assert tuple(rgb[label_map == 0][0]) == (0, 0, 0)
  with pytest.raises(ValueError, match=r"\[H, W\]"):
    cp.save_label_png(tmp_path / "bad.png", np.zeros((2, 2, 3), np.uint8))


def test_cam_overlay():
  rng = np.random.default_rng(8)
  image = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
  norm = rng.random((5, 6, 20)).astype(np.float32)
  label = _labels([2])
  out = cp.cam_overlay(image, norm, label)
  assert out.dtype == np.uint8 and out.shape == (5, 6, 3)
  np.testing.assert_array_equal(cp.cam_overlay(image, norm, label, alpha=0.0), image)
  # The heat uses present classes only: changing an absent class changes nothing.
  norm2 = norm.copy()
  norm2[..., 7] = 1.0
  np.testing.assert_array_equal(cp.cam_overlay(image, norm2, label), out)
  with pytest.raises(ValueError, match="does not match"):
    cp.cam_overlay(image, norm[:4], label)
