"""Dense CRF of stage 2 (ppc_jax.refine.crf) and its command (ppc_jax.refine.crf_labels).

The numbers are checked against numpy re-derivations, not against a second call of pydensecrf:
  * without pairwise terms the marginals are the normalised unary distribution;
  * with the Gaussian kernel only, a naive dense mean field over all pixel pairs (exact kernels,
    symmetric normalisation, Potts) matches pydensecrf up to its permutohedral approximation;
  * la / ha dicts follow SEAM's `_crf_with_alpha`: bg = (1 - max)^alpha, keys 0 and k + 1.
"""

import json
import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

import e2e_fixtures as e2e
from ppc_jax.data import cam_io
from ppc_jax import entry
from ppc_jax.data import synth
from ppc_jax.data import voc
from ppc_jax.refine import crf
from ppc_jax.refine import crf_labels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_PAIRWISE = dict(gauss_compat=0, bi_compat=0)


def _random_probs(rng, shape, num_labels, scale=2.0):
  logits = rng.normal(size=shape + (num_labels,)) * scale
  p = np.exp(logits)
  return (p / p.sum(-1, keepdims=True)).astype(np.float32)


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


# ------------------------------------------------------------------------------------------------
# Unary only.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("iterations", [0, 10])
def test_softmax_crf_without_pairwise_is_the_normalised_unary(iterations):
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
  # Scores that do not sum to 1, with zeros (clipped to 1e-5 by unary_from_softmax) and ones.
  probs = rng.random((5, 7, 4)).astype(np.float32)
  probs[0, 0] = [0, 0, 1, 0]
  probs[1, 2] = 0
  q = crf.crf_from_softmax(image, probs, iterations=iterations, **NO_PAIRWISE)
  clipped = np.clip(probs.astype(np.float64), 1e-5, 1.0)
  expected = _softmax(np.log(clipped))  # = clipped / clipped.sum(-1)
  assert q.shape == probs.shape and q.dtype == np.float32 and q.flags.c_contiguous
  # float32 -log in the unary, then exp / sum in float32: a few ulps of 1.
  np.testing.assert_allclose(q, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("gt_prob", [0.7, 0.1])
def test_label_crf_without_pairwise_is_the_argmax_of_the_label_unary(gt_prob):
  rng = np.random.default_rng(1)
  n = 3
  image = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
  labels = rng.integers(0, n, (6, 5)).astype(np.uint8)
  # unary_from_labels(zero_unsure=False): gt_prob for the pixel's label, the rest shared evenly.
  dist = np.full((6, 5, n), (1 - gt_prob) / (n - 1))
  np.put_along_axis(dist, labels[..., None].astype(np.int64), gt_prob, axis=-1)
  expected = np.argmax(dist, axis=-1)  # 0.1 < 0.45: the lowest other label (ties: lower index)
  out = crf.crf_from_labels(image, labels, n, gt_prob=gt_prob, **NO_PAIRWISE)
  assert out.dtype == np.uint8 and out.shape == labels.shape
  np.testing.assert_array_equal(out, expected)
  if gt_prob == 0.1:
    assert not np.array_equal(out, labels)  # the formula, not the identity, is being checked


# ------------------------------------------------------------------------------------------------
# Mean field, re-derived.
# ------------------------------------------------------------------------------------------------


def _naive_mean_field(probs, sxy, compat, iterations):
  """Dense mean field over all pixel pairs with the exact Gaussian k_ij = exp(-|p_i - p_j|^2 /
  (2 sxy^2)) (self pair included), symmetric normalisation n_i = 1/sqrt(sum_j k_ij) and Potts
  compatibility: Q <- softmax(-U + compat * n_i sum_j k_ij n_j Q_j), U = -log(clip(p, 1e-5, 1))."""
  h, w, c = probs.shape
  ys, xs = np.mgrid[0:h, 0:w]
  pos = np.stack([xs.ravel(), ys.ravel()], 1) / sxy
  k = np.exp(-0.5 * ((pos[:, None] - pos[None]) ** 2).sum(-1))
  n = 1.0 / np.sqrt(k.sum(1))
  u = -np.log(np.clip(probs.reshape(-1, c).astype(np.float64), 1e-5, 1.0))
  q = _softmax(-u)
  for _ in range(iterations):
    q = _softmax(-u + compat * n[:, None] * (k @ (n[:, None] * q)))
  return q.reshape(h, w, c)


def test_gaussian_mean_field_matches_a_naive_dense_derivation():
  # The reference's Gaussian kernel (sxy 3, compat 3), 10 iterations, 20 random 6x5 unaries.
  sxy, compat, iterations = 3, 3, 10
  image = np.zeros((6, 5, 3), np.uint8)
  errs, effects, mismatches = [], [], 0
  for seed in range(20):
    probs = _random_probs(np.random.default_rng(seed), (6, 5), 3)
    got = crf.crf_from_softmax(image, probs, iterations=iterations, gauss_sxy=sxy,
                               gauss_compat=compat, bi_compat=0)
    exact = _naive_mean_field(probs, sxy, compat, iterations)
    unary_only = _naive_mean_field(probs, sxy, 0, iterations)
    errs.append(np.abs(got - exact))
    effects.append(np.abs(unary_only - exact))
    top2 = np.sort(exact, -1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 0.1
    mismatches += int((got.argmax(-1) != exact.argmax(-1))[clear].sum())
  errs, effects = np.stack(errs), np.stack(effects)
  # pydensecrf filters on a permutohedral lattice (splat, [1 2 1] blur, slice), not with the
  # exact Gaussian. Measured on these 20 unaries: max |dQ| 0.027, mean 0.0030 (over 120 random
  # unaries: max 0.039, batch means 0.0030-0.0037). Variants that are wrong by a modelling
  # choice measured a mean >= 0.0055 (self pair left out, no normalisation, sxy off by 2x) and
  # 0.054-0.064 (no pairwise term), so the mean bound below separates them.
  assert errs.max() < 0.05, errs.max()
  assert errs.mean() < 0.005, errs.mean()
  assert effects.mean() > 10 * errs.mean()  # the pairwise term matters and is reproduced
  assert mismatches == 0  # where the exact answer is clear (margin > 0.1), the labels agree


def test_bilateral_kernel_follows_colour_in_the_image_layout():
  # Columns alternate red / blue; only columns 0 (red) and 1 (blue) have a confident unary. A
  # wide bilateral kernel (sxy 80) and no Gaussian one give every red pixel label 0 and every
  # blue one label 1: colour, not distance, decides, and the image is read as [H, W, 3] RGB.
  h, w = 6, 9
  image = np.zeros((h, w, 3), np.uint8)
  image[:, 0::2] = (200, 20, 20)
  image[:, 1::2] = (20, 20, 200)
  probs = np.full((h, w, 2), 0.5, np.float32)
  probs[:, 0] = (0.95, 0.05)
  probs[:, 1] = (0.05, 0.95)
  expected = np.broadcast_to(np.arange(w) % 2, (h, w))
  q = crf.crf_from_softmax(image, probs, gauss_compat=0, bi_sxy=80, bi_srgb=13, bi_compat=10)
  np.testing.assert_array_equal(q.argmax(-1), expected)
  # Non-contiguous inputs (flipped views of the image and the scores) are made contiguous.
  flipped = crf.crf_from_softmax(image[:, ::-1], probs[:, ::-1], gauss_compat=0, bi_sxy=80,
                                 bi_srgb=13, bi_compat=10)
  np.testing.assert_array_equal(flipped.argmax(-1), expected[:, ::-1])
  # A read-only image (np.asarray of a PIL image is one) is copied: pydensecrf refuses those.
  readonly = np.asarray(PIL.Image.fromarray(image))
  assert not readonly.flags.writeable
  np.testing.assert_array_equal(
      crf.crf_from_softmax(readonly, probs, gauss_compat=0, bi_sxy=80, bi_srgb=13, bi_compat=10),
      q)
  assert crf.crf_from_labels(readonly, np.zeros((h, w), np.uint8), 2).shape == (h, w)


def test_label_crf_smooths_an_isolated_label():
  # The reference's seed CRF on a flat grey image: one pixel labelled 2 in a region of 1 joins
  # the region; with no pairwise term it would stay (gt_prob 0.7 beats 0.15).
  image = np.full((8, 8, 3), 128, np.uint8)
  labels = np.ones((8, 8), np.uint8)
  labels[3, 4] = 2
  np.testing.assert_array_equal(crf.crf_from_labels(image, labels, 3), np.ones((8, 8)))
  np.testing.assert_array_equal(crf.crf_from_labels(image, labels, 3, **NO_PAIRWISE), labels)


def test_errors_name_the_image():
  image = np.zeros((4, 5, 3), np.uint8)
  with pytest.raises(ValueError, match=r"img_7.*\(3, 5, 2\).*\[4, 5, C\]"):
    crf.crf_from_softmax(image, np.ones((3, 5, 2), np.float32), name="img_7")
  with pytest.raises(ValueError, match="img_7.*uint8"):
    crf.crf_from_softmax(image.astype(np.float32), np.ones((4, 5, 2)), name="img_7")
  with pytest.raises(ValueError, match="img_7.*NaN"):
    crf.crf_from_softmax(image, np.full((4, 5, 2), np.nan, np.float32), name="img_7")
  with pytest.raises(ValueError, match=r"img_7.*label map.*\(5, 4\)"):
    crf.crf_from_labels(image, np.zeros((5, 4), np.int32), 3, name="img_7")
  with pytest.raises(ValueError, match="img_7.*outside 0..2"):
    crf.crf_from_labels(image, np.full((4, 5), 3, np.int32), 3, name="img_7")
  with pytest.raises(ValueError, match=r"img_7.*class 2 is \(5, 4\).*\(4, 5\)"):
    crf.la_ha_scores({2: np.zeros((5, 4), np.float32)}, image, 4, name="img_7")


# ------------------------------------------------------------------------------------------------
# la / ha score dicts and seeds.
# ------------------------------------------------------------------------------------------------


def _crafted(rng, h=6, w=7):
  image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  # Inserted out of order: the output order must not depend on it.
  cam_dict = {5: rng.random((h, w)).astype(np.float32), 0: rng.random((h, w)).astype(np.float32)}
  cam_dict[5][0, 0], cam_dict[0][0, 0] = 1.0, 0.2  # bg = 0 at (0, 0)
  cam_dict[5][0, 1], cam_dict[0][0, 1] = 0.0, 0.0  # bg = 1 at (0, 1)
  return image, cam_dict


@pytest.mark.parametrize("alpha", [4, 24])
def test_la_ha_background_formula_and_keys(alpha):
  image, cam_dict = _crafted(np.random.default_rng(2))
  # No mean-field step: the marginals are the clipped scores [bg, cam_0, cam_5] normalised.
  scores = crf.la_ha_scores(cam_dict, image, alpha, iterations=0)
  assert list(scores) == [0, 1, 6]  # 0 = bg, k + 1 for class k, increasing (insertion order)
  bg = (1.0 - np.maximum(cam_dict[0], cam_dict[5])) ** alpha
  stack = np.clip(np.stack([bg, cam_dict[0], cam_dict[5]], -1), 1e-5, 1.0)
  expected = stack / stack.sum(-1, keepdims=True)
  for i, key in enumerate([0, 1, 6]):
    assert scores[key].dtype == np.float32 and scores[key].shape == (6, 7)
    # float32 powers and logs against float64: relative ulps of the bg ** alpha term.
    np.testing.assert_allclose(scores[key], expected[..., i], rtol=1e-4, atol=1e-7)
  assert scores[0][0, 0] < 1e-4 and scores[0][0, 1] > 0.99  # bg 0 (clipped) / bg 1

  # With the reference's CRF (10 iterations, Gaussian 3/3, bilateral 80/13/10) it is exactly
  # crf_from_softmax on that stack.
  full = crf.la_ha_scores(cam_dict, image, alpha)
  q = crf.crf_from_softmax(image, np.stack([bg.astype(np.float32), cam_dict[0], cam_dict[5]], -1))
  for i, key in enumerate([0, 1, 6]):
    np.testing.assert_array_equal(full[key], q[..., i])


def test_la_ha_of_a_far_negative_cam_clips_its_overflowing_background():
  """Min-max normalisation leaves the zeroed minimum of a CAM that is positive everywhere far
  below 0 (-40 here, as measured on a demo run); (1 + 40)^24 overflows float32 to inf, and the
  reference's `unary_from_softmax` clips it to 1 (bg certain there): the same here, no error."""
  image, cam_dict = _crafted(np.random.default_rng(5))
  cam_dict[5][2, 3], cam_dict[0][2, 3] = -40.0, -39.7
  with np.errstate(over="ignore"):
    assert np.isinf(np.float32(1.0 + 39.7) ** np.float32(24))  # the overflow is real
  scores = crf.la_ha_scores(cam_dict, image, 24, iterations=0)
  stack = np.clip(np.stack([np.full((6, 7), np.inf), cam_dict[0], cam_dict[5]], -1), 1e-5, 1.0)
  want = stack[2, 3] / stack[2, 3].sum()  # [1, 1e-5, 1e-5] normalised
  got = np.array([scores[k][2, 3] for k in (0, 1, 6)])
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert all(np.all(np.isfinite(v)) for v in scores.values())


def test_la_has_more_background_than_ha_and_empty_dict():
  image, cam_dict = _crafted(np.random.default_rng(3))
  la = crf.la_ha_scores(cam_dict, image, 4, iterations=0)
  ha = crf.la_ha_scores(cam_dict, image, 24, iterations=0)
  assert np.all(la[0] >= ha[0])
  empty = crf.la_ha_scores({}, image, 4)
  assert list(empty) == [0]
  np.testing.assert_array_equal(empty[0], np.ones((6, 7), np.float32))


def test_scores_round_trip_through_npz(tmp_path):
  image, cam_dict = _crafted(np.random.default_rng(4))
  scores = crf.la_ha_scores(cam_dict, image, 4)
  path = crf.save_scores(str(tmp_path / "img"), scores)
  assert path.endswith("img.npz")
  ours = crf.load_scores(path, num_classes=21)
  with np.load(path, allow_pickle=False) as z:  # no pickle inside
    np.testing.assert_array_equal(z["keys"], [0, 1, 6])
    maps = z["maps"]
  assert list(ours) == [0, 1, 6]
  for i, key in enumerate(scores):
    np.testing.assert_array_equal(ours[key], scores[key])
    np.testing.assert_array_equal(maps[i], scores[key])
  with pytest.raises(ValueError, match="img.npz.*la / ha"):
    crf.load_scores(path, num_classes=6)  # key 6 needs 7 classes
  # The reference's pickled .npy read with the default format: refused, never unpickled.
  reference = crf.save_scores(str(tmp_path / "ref"), scores, fmt="reference_npy")
  with pytest.raises(ValueError, match="ref.npy: is an .npy file, not the .npz"):
    crf.load_scores(reference, num_classes=21)


def test_scores_round_trip_through_the_reference_format(tmp_path):
  image, cam_dict = _crafted(np.random.default_rng(4))
  scores = crf.la_ha_scores(cam_dict, image, 4)
  path = crf.save_scores(str(tmp_path / "img"), scores, fmt="reference_npy")
  assert path.endswith("img.npy")
  ours = crf.load_scores(path, num_classes=21, fmt="reference_npy")
  theirs = np.load(path, allow_pickle=True).item()  # how the reference's readers load it
  assert list(ours) == list(theirs) == [0, 1, 6]
  for key in scores:
    np.testing.assert_array_equal(ours[key], scores[key])
    np.testing.assert_array_equal(theirs[key], scores[key])
  with pytest.raises(ValueError, match="img.npy.*la / ha"):
    crf.load_scores(path, num_classes=6, fmt="reference_npy")  # key 6 needs 7 classes


def test_seed_labels_and_seed_crf():
  rng = np.random.default_rng(5)
  image = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
  cam_dict = {1: np.full((6, 7), 0.1, np.float32), 3: np.full((6, 7), 0.1, np.float32)}
  cam_dict[1][:, :3] = 0.9
  cam_dict[3][:, 5:] = 0.5
  seed = crf.seed_from_cam_dict(cam_dict, 21, (6, 7), 0.26)
  expected = np.zeros((6, 7), np.uint8)
  expected[:, :3] = 2
  expected[:, 5:] = 4
  np.testing.assert_array_equal(seed, expected)
  no_pairwise = crf.crf_from_labels(image, seed, 21, **NO_PAIRWISE)
  np.testing.assert_array_equal(no_pairwise, seed)
  out = crf.seed_crf(cam_dict, image, 21)
  assert out.shape == (6, 7) and out.dtype == np.uint8
  assert set(np.unique(out)) <= {0, 2, 4}  # absent classes never win


# ------------------------------------------------------------------------------------------------
# The command.
# ------------------------------------------------------------------------------------------------

SYNTH = dict(num_train_aug=6, num_train=2, num_val=0, min_size=40, max_size=56, seed=7,
             saliency=False, xml=False)
TIMEOUT_S = e2e.PROCESS_TIMEOUT_S  # a run takes a few seconds; the suite's hang guard


@pytest.fixture(scope="module")
def crf_set(tmp_path_factory):
  """A tiny synthetic VOC set with stage-1 cam files for train_aug."""
  base = tmp_path_factory.mktemp("crf_set")
  root = synth.generate(str(base / "data"), **SYNTH)
  source = voc.VOCSource(root, "train_aug")
  cam_dir = base / "cams"
  cam_dir.mkdir()
  rng = np.random.default_rng(0)
  for i, image_id in enumerate(source.ids):
    h, w = source.image(i).shape[:2]
    cams = rng.random((h, w, source.classes.num_fg)).astype(np.float32)
    cam_io.save_cam_dict(str(cam_dir / image_id), cams, source.labels[i])
  return dict(root=root, cam_dir=str(cam_dir), ids=source.ids, labels=source.labels,
              num_classes=source.classes.num_classes)


def _command(crf_set, out_dir, *extra, cam_dir=None):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p), PYTHONUNBUFFERED="1")
  args = [sys.executable, "-m", "ppc_jax.refine.crf_labels",
          f"--cam_dir={cam_dir or crf_set['cam_dir']}", f"--voc_root={crf_set['root']}",
          "--split=train_aug", f"--out_dir={out_dir}", *extra]
  # Output piped, as `... | tee log` would; a new session so a timeout kills the whole group.
  proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, start_new_session=True)
  try:
    out, _ = proc.communicate(timeout=TIMEOUT_S)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, 9)
    out, _ = proc.communicate()
    pytest.fail(f"still running after {TIMEOUT_S} s:\n{out.decode(errors='replace')[-3000:]}")
  return proc.returncode, out.decode(errors="replace")


def test_command_writes_the_reference_files_and_resumes(crf_set, tmp_path):
  out_dir = tmp_path / "crf"
  code, out = _command(crf_set, out_dir, "--processes=2", "--seed_crf_png")
  assert code == 0, out[-3000:]
  ids = crf_set["ids"]
  for i, image_id in enumerate(ids):
    image = voc.read_image(os.path.join(crf_set["root"], "JPEGImages", image_id + ".jpg"))
    cam_dict = cam_io.load_cam_dict(os.path.join(crf_set["cam_dir"], image_id + ".npz"))
    present = [int(k) for k in np.flatnonzero(crf_set["labels"][i] > 1e-5)]
    for sub, alpha in (("crf_la", 4), ("crf_ha", 24)):
      scores = crf.load_scores(out_dir / sub / f"{image_id}.npz", crf_set["num_classes"])
      assert list(scores) == [0] + [k + 1 for k in present]
      assert all(v.shape == image.shape[:2] and v.dtype == np.float32 for v in scores.values())
      if i == 0:  # the worker's result equals the library's, bit for bit
        expected = crf.la_ha_scores(cam_dict, image, alpha)
        for key in expected:
          np.testing.assert_array_equal(scores[key], expected[key])
    png = PIL.Image.open(out_dir / "crf_seed" / f"{image_id}.png")
    assert png.mode == "P" and png.size == (image.shape[1], image.shape[0])
    seed = np.array(png)
    assert set(np.unique(seed)) <= {0} | {k + 1 for k in present}
    if i == 0:
      np.testing.assert_array_equal(seed, crf.seed_crf(cam_dict, image, crf_set["num_classes"]))
  params = json.loads((out_dir / "crf_params.json").read_text())
  assert (params["la_alpha"], params["ha_alpha"], params["iterations"]) == (4, 24, 10)
  assert params["score_format"] == "npz"

  # Resume: nothing to do, nothing rewritten.
  stamps = {p: p.stat().st_mtime_ns for p in out_dir.rglob("*.npz")}
  assert len(stamps) == 2 * len(ids) and not list(out_dir.rglob("*.npy"))
  summary = crf_labels.run(crf_set["cam_dir"], crf_set["root"], "train_aug", str(out_dir),
                           processes=1, seed_crf_png=True)
  assert summary["computed"] == 0 and summary["num_images"] == len(ids)
  assert stamps == {p: p.stat().st_mtime_ns for p in out_dir.rglob("*.npz")}
  # A lost file is redone, alone.
  (out_dir / "crf_ha" / f"{ids[1]}.npz").unlink()
  summary = crf_labels.run(crf_set["cam_dir"], crf_set["root"], "train_aug", str(out_dir),
                           processes=1, seed_crf_png=True)
  assert summary["computed"] == 1 and (out_dir / "crf_ha" / f"{ids[1]}.npz").exists()
  assert (out_dir / "crf_la" / f"{ids[1]}.npz").stat().st_mtime_ns == stamps[
      out_dir / "crf_la" / f"{ids[1]}.npz"]
  # Other settings into the same directory are refused, not mixed.
  with pytest.raises(ValueError, match="crf_params.json.*other settings"):
    crf_labels.run(crf_set["cam_dir"], crf_set["root"], "train_aug", str(out_dir),
                   alphas=(4, 32), processes=1)
  # So is the other score format (its files would not count as done).
  with pytest.raises(ValueError, match="crf_params.json.*other settings.*score_format"):
    crf_labels.run(crf_set["cam_dir"], crf_set["root"], "train_aug", str(out_dir),
                   processes=1, score_format="reference_npy")


def test_reference_format_cams_and_scores_only_when_asked(crf_set, tmp_path):
  """The reference's pickled cam_dicts are read with cam_format='reference_npy' only (the default
  names the files it found instead), and score_format='reference_npy' writes the reference's
  score files, with the values of the npz ones."""
  ref_cams = tmp_path / "ref_cams"
  cam_io.convert_dir(crf_set["cam_dir"], ref_cams, "reference_npy")  # export
  with pytest.raises(FileNotFoundError, match=rf"{crf_set['ids'][0]}.npz: cam file not found.*"
                                              r"6 of them are there in the reference_npy format"):
    crf_labels.run(str(ref_cams), crf_set["root"], "train_aug", str(tmp_path / "crf"))
  ids = crf_set["ids"][:2]
  npz_dir, ref_dir = tmp_path / "crf_npz", tmp_path / "crf_ref"
  crf_labels.run(crf_set["cam_dir"], crf_set["root"], "train_aug", str(npz_dir), processes=1,
                 max_images=2)
  summary = crf_labels.run(str(ref_cams), crf_set["root"], "train_aug", str(ref_dir),
                           processes=1, max_images=2, cam_format="reference_npy",
                           score_format="reference_npy")
  assert summary["computed"] == 2 and summary["score_format"] == "reference_npy"
  for sub in ("crf_la", "crf_ha"):
    assert sorted(os.listdir(ref_dir / sub)) == [f"{i}.npy" for i in sorted(ids)]
    for image_id in ids:
      theirs = np.load(ref_dir / sub / f"{image_id}.npy", allow_pickle=True).item()
      ours = crf.load_scores(npz_dir / sub / f"{image_id}.npz", crf_set["num_classes"])
      assert list(theirs) == list(ours)
      for key in ours:
        np.testing.assert_array_equal(theirs[key], ours[key])


def test_one_alpha_writes_the_esp_branch_crf_files(crf_set, tmp_path):
  """--alphas=8 --iterations=5 (EPS+PPC's script_contrast.sh: --crf_t 5 --crf_alpha 8): one
  crf_a8/ directory of score dicts, each the softmax CRF of bg = (1 - max)^8 at 5 iterations."""
  out_dir = tmp_path / "crf"
  ids = crf_set["ids"][:3]
  summary = crf_labels.run(crf_set["cam_dir"], crf_set["root"], "train_aug", str(out_dir),
                           alphas=(8,), iterations=5, processes=1, max_images=3)
  assert summary["computed"] == 3 and summary["ha_alpha"] is None
  assert sorted(p.name for p in out_dir.iterdir() if p.is_dir()) == ["crf_a8"]
  for image_id in ids:
    image = voc.read_image(os.path.join(crf_set["root"], "JPEGImages", image_id + ".jpg"))
    cam_dict = cam_io.load_cam_dict(os.path.join(crf_set["cam_dir"], image_id + ".npz"))
    scores = crf.load_scores(out_dir / "crf_a8" / f"{image_id}.npz", crf_set["num_classes"])
    expected = crf.la_ha_scores(cam_dict, image, 8, iterations=5)
    assert list(scores) == list(expected)
    for key in expected:
      np.testing.assert_array_equal(scores[key], expected[key])
    # The iteration count reaches the CRF (on these small images it has converged by 5, so
    # compare with 1).
    one = crf.la_ha_scores(cam_dict, image, 8, iterations=1)
    assert any(np.abs(scores[k] - one[k]).max() > 1e-3 for k in one)
  with pytest.raises(ValueError, match="one number > 0"):
    crf_labels.run(crf_set["cam_dir"], crf_set["root"], "train_aug", str(out_dir),
                   alphas=(0,), processes=1)
  with pytest.raises(ValueError, match="one number > 0"):
    crf_labels.run(crf_set["cam_dir"], crf_set["root"], "train_aug", str(out_dir),
                   alphas=(4, 8, 24), processes=1)


def test_command_on_a_corrupt_cam_file_exits_with_its_name(crf_set, tmp_path):
  cam_dir = tmp_path / "cams"
  cam_dir.mkdir()
  for image_id in crf_set["ids"]:
    src = os.path.join(crf_set["cam_dir"], image_id + ".npz")
    (cam_dir / f"{image_id}.npz").write_bytes(open(src, "rb").read())
  bad_id = crf_set["ids"][3]
  (cam_dir / f"{bad_id}.npz").write_bytes(np.random.RandomState(0).bytes(1000))
  code, out = _command(crf_set, tmp_path / "crf", "--processes=2", cam_dir=cam_dir)
  tail = out[-3000:]
  assert code == 1, tail
  assert f"image {bad_id}" in out and f"{bad_id}.npz" in out, tail
  assert "error: CrfImageError" in out, tail  # entry.py's one-line summary
  assert entry.WATCHDOG_MARKER not in out, tail  # it exited by itself


_CRASH_SCRIPT = """
import os, sys, tqdm
import crash_helper
from ppc_jax.refine import crf_labels
jobs = [crf_labels.Job(f"id_{i}", "x.jpg", "x.npz", (), None) for i in range(6)]
crf_labels.process_image = crash_helper.work  # what the pool runs, pickled by name
with tqdm.tqdm(total=len(jobs)) as progress:
  crf_labels._run_jobs(jobs, 2, progress)
"""

_CRASH_HELPER = """
import os, time
def work(job):
  if job.image_id == "id_2":
    os._exit(3)  # as a segfault in native code or the OOM killer would end it
  time.sleep(0.1)
  return dict(image_id=job.image_id, error=None, seconds=0.1)
"""


def test_a_worker_that_dies_ends_the_run(tmp_path):
  (tmp_path / "crash_helper.py").write_text(_CRASH_HELPER)
  (tmp_path / "crash.py").write_text(_CRASH_SCRIPT)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      p for p in (str(tmp_path), ROOT, os.environ.get("PYTHONPATH", "")) if p))
  proc = subprocess.run([sys.executable, str(tmp_path / "crash.py")], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=TIMEOUT_S)
  assert proc.returncode != 0
  assert "CrfImageError: one of the images id_" in proc.stderr, proc.stderr[-3000:]
  assert "a worker process died" in proc.stderr and "id_2" in proc.stderr, proc.stderr[-3000:]


def test_missing_cam_files_are_named_before_any_work(crf_set, tmp_path):
  cam_dir = tmp_path / "cams"
  cam_dir.mkdir()
  with pytest.raises(FileNotFoundError, match=f"{crf_set['ids'][0]}.npz.*6 of 6"):
    crf_labels.run(str(cam_dir), crf_set["root"], "train_aug", str(tmp_path / "crf"))
  assert not (tmp_path / "crf").exists()


def test_a_cam_file_of_another_size_is_named(crf_set, tmp_path):
  cam_dir = tmp_path / "cams"
  cam_dir.mkdir()
  for image_id in crf_set["ids"]:
    src = os.path.join(crf_set["cam_dir"], image_id + ".npz")
    (cam_dir / f"{image_id}.npz").write_bytes(open(src, "rb").read())
  bad_id = crf_set["ids"][0]
  cam_io.save_cam_dict(str(cam_dir / f"{bad_id}.npz"), np.zeros((9, 11, 20), np.float32),
                       np.eye(20)[3])
  with pytest.raises(crf_labels.CrfImageError,
                     match=rf"image {bad_id}: .*{bad_id}.jpg.*{bad_id}.npz.*\(9, 11\)"):
    crf_labels.run(str(cam_dir), crf_set["root"], "train_aug", str(tmp_path / "crf"),
                   processes=1)


def test_crf_modules_do_not_import_jax():
  # The workers are plain processes: no JAX / TF start-up per worker.
  code = ("import sys, ppc_jax.refine.crf_labels; "
          "sys.exit(int(any(m in sys.modules for m in ('jax', 'tensorflow'))))")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p))
  assert subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT,
                        timeout=TIMEOUT_S).returncode == 0
