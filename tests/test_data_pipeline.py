"""Dual-view training pipeline: reference augmentation, view geometry, determinism, resume, shards,
bad inputs. Runs on the tiny synthetic VOC tree (crop 32, view 2 at 16)."""

import os
import subprocess
import sys

import numpy as np
import PIL.Image
import PIL.ImageEnhance
import pytest
import tensorflow as tf
import torch

from data_fixtures import TINY, digest, input_config, synth_root, take, voc_copy  # noqa: F401
import e2e_fixtures as e2e
from ppc_jax.data import augment
from ppc_jax.data import pipeline
from ppc_jax.data import sources
from ppc_jax.data import voc
from ppc_jax.data import voc_meta

SPE = TINY["num_train_aug"] // 4  # steps per epoch at global batch 4


def _params(cfg, step, row, global_batch=4):
  """The decoded random draws of the example at (global step, row of the global batch)."""
  epoch, b = divmod(step, SPE)
  draws = augment.draw_params(augment.example_key(cfg.seed, epoch, b * global_batch + row))
  return augment.decode_params(draws.numpy(), cfg.resize_long, cfg.jitter, cfg.hflip)


# ------------------------------------------------------------------------------------------------
# Ops


@pytest.mark.parametrize("in_hw,out_hw", [((448, 448), (128, 128)), ((7, 9), (13, 5)),
                                          ((5, 6), (1, 1)), ((32, 32), (16, 16)),
                                          ((33, 17), (33, 40))])
def test_align_corners_resize_matches_torch(in_hw, out_hw):
  x = np.random.default_rng(0).normal(size=(2, *in_hw, 3)).astype(np.float32)
  ours = augment.resize_align_corners(tf.constant(x), out_hw).numpy()
  ref = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=out_hw,
                                        mode="bilinear", align_corners=True)
  np.testing.assert_allclose(ours, ref.permute(0, 2, 3, 1).numpy(), rtol=0, atol=2e-6)


def test_resize_long_rounding_and_crop_placement():
  assert augment.resize_long_size(500, 375, 450) == (450, 338)   # 337.5 -> 338 (even)
  assert augment.resize_long_size(375, 500, 454) == (340, 454)   # 340.5 -> 340 (even)
  # Larger than the crop: a window, no offset. Smaller: offset in the container, window = image.
  assert augment.crop_placement(500, 600, 448, 0.999, 0.0) == (0, 152, 0, 0, 448, 448)
  assert augment.crop_placement(300, 200, 448, 0.0, 0.999) == (0, 0, 148, 0, 300, 200)
  assert augment.crop_placement(448, 448, 448, 0.7, 0.7) == (0, 0, 0, 0, 448, 448)


def test_hue_matches_torchvision_pil_code():
  img = PIL.Image.fromarray(np.random.default_rng(1).integers(0, 256, (9, 11, 3), np.uint8))
  for factor in (0.1, 0.037, -0.05, -0.1):
    h, s, v = img.convert("HSV").split()
    h = np.array(h, np.uint8)
    shift = int(factor * 255)  # the C cast of the reference: truncation, then wrap modulo 256
    h = ((h.astype(np.int64) + shift) % 256).astype(np.uint8)
    expected = PIL.Image.merge("HSV", (PIL.Image.fromarray(h, "L"), s, v)).convert("RGB")
    np.testing.assert_array_equal(np.asarray(augment.adjust_hue_pil(img, factor)),
                                  np.asarray(expected))


# ------------------------------------------------------------------------------------------------
# The reference transform, written out from its description, against the pipeline.


def _reference_transform(image, sal, p, crop):
  """RandomResizeLong -> flip -> ColorJitter -> Normalize -> RandomCrop (+ saliency) for draws p."""
  w, h = image.size
  t = p["target_long"]
  size = (int(round(w * t / h)), t) if w < h else (t, int(round(h * t / w)))
  image, sal = image.resize(size, PIL.Image.BICUBIC), sal.resize(size, PIL.Image.BICUBIC)
  if p["flip"]:
    flip = PIL.Image.FLIP_LEFT_RIGHT
    image, sal = image.transpose(flip), sal.transpose(flip)
  ops = [lambda im: PIL.ImageEnhance.Brightness(im).enhance(p["factors"][0]),
         lambda im: PIL.ImageEnhance.Contrast(im).enhance(p["factors"][1]),
         lambda im: PIL.ImageEnhance.Color(im).enhance(p["factors"][2]),
         lambda im: augment.adjust_hue_pil(im, p["factors"][3])]
  for k in p["order"]:
    image = ops[k](image)
  arr = np.asarray(image)
  norm = np.empty(arr.shape, np.float32)
  for c in range(3):
    norm[..., c] = (arr[..., c] / 255. - voc_meta.IMAGENET_MEAN[c]) / voc_meta.IMAGENET_STD[c]
  sal_arr = np.asarray(sal.convert("RGB")) / 255.
  hh, ww = arr.shape[:2]
  img_top, img_left, cont_top, cont_left, ch, cw = augment.crop_placement(hh, ww, crop,
                                                                          *p["crop_u"])
  box = np.zeros((crop, crop, 3), np.float32)
  sal_box = np.zeros((crop, crop, 3), np.float32)
  box[cont_top:cont_top + ch, cont_left:cont_left + cw] = norm[img_top:img_top + ch,
                                                               img_left:img_left + cw]
  sal_box[cont_top:cont_top + ch, cont_left:cont_left + cw] = sal_arr[img_top:img_top + ch,
                                                                      img_left:img_left + cw]
  return box, sal_box.mean(-1)


def test_pipeline_equals_reference_transform(synth_root):
  cfg = input_config(synth_root, with_saliency=True, resize_long=(24, 72), seed=11)
  src = sources.train_source(cfg)
  batches = take(cfg, 2, src, with_index=True)
  padded = cropped = 0
  for step, batch in enumerate(batches):
    for row in range(4):
      p = _params(cfg, step, row)
      i = int(batch["index"][row])
      image, sal = _reference_transform(src.image_pil(i), src.saliency_pil(i), p, cfg.crop_size)
      np.testing.assert_array_equal(batch["image1"][row], image)
      np.testing.assert_allclose(batch["saliency"][row], sal, rtol=0, atol=1e-7)
      np.testing.assert_array_equal(batch["labels"][row], src.labels[i])
      padded += int((image == 0).all(-1).any())
      cropped += int(not (image == 0).all(-1).any())
  assert padded and cropped, "both crop cases (window and zero container) were exercised"


def test_batch_format_and_view2_geometry(synth_root):
  cfg = input_config(synth_root, with_saliency=True)
  ds = pipeline.make_train_dataset(cfg, process_index=0, process_count=1)
  spec = ds.element_spec
  assert spec["image1"].shape == (4, 32, 32, 3) and spec["image2"].shape == (4, 16, 16, 3)
  assert spec["labels"].shape == (4, 20) and spec["saliency"].shape == (4, 32, 32)
  (batch,) = take(cfg, 1)
  assert {k: v.dtype for k, v in batch.items()} == {k: np.float32 for k in batch}
  view1 = torch.from_numpy(np.array(batch["image1"])).permute(0, 3, 1, 2)
  ref = torch.nn.functional.interpolate(view1, size=(16, 16), mode="bilinear",
                                        align_corners=True)
  np.testing.assert_allclose(batch["image2"], ref.permute(0, 2, 3, 1).numpy(), atol=2e-6, rtol=0)
  # Corners coincide under align_corners=True: view 2's corner pixels are view 1's.
  for y, x in ((0, 0), (-1, -1), (0, -1)):
    np.testing.assert_array_equal(batch["image2"][:, y, x], batch["image1"][:, y, x])
  assert 0.0 <= batch["saliency"].min() and batch["saliency"].max() <= 1.0


def test_zero_padding_location_and_normalisation(synth_root):
  # No resize, no jitter, a crop larger than every image: image1 is the normalised image (or its
  # mirror) at the drawn offset, exact zeros elsewhere.
  cfg = input_config(synth_root, resize_long=None, jitter=(0, 0, 0, 0), crop_size=80,
                     view2_size=20, seed=4)
  src = sources.train_source(cfg)
  flips = set()
  for step, batch in enumerate(take(cfg, 2, src, with_index=True)):
    for row in range(4):
      p = _params(cfg, step, row)
      img = np.asarray(src.image_pil(int(batch["index"][row])))
      if p["flip"]:
        img = img[:, ::-1]
      flips.add(p["flip"])
      h, w = img.shape[:2]
      _, _, top, left, _, _ = augment.crop_placement(h, w, 80, *p["crop_u"])
      out = batch["image1"][row]
      np.testing.assert_array_equal(out[top:top + h, left:left + w], voc_meta.normalize(img))
      outside = np.ones((80, 80), bool)
      outside[top:top + h, left:left + w] = False
      assert (out[outside] == 0).all()
  assert flips == {True, False}


def test_flip_and_geometry_consistent_between_image_and_saliency(voc_copy):
  # Saliency := the image's red channel; without jitter both must go through the same geometry.
  src = voc.VOCSource(voc_copy, "train_aug")
  for i, path in enumerate(src.image_paths):
    red = np.asarray(src.image_pil(i))[..., 0]
    PIL.Image.fromarray(red, "L").save(os.path.join(voc_copy, "SALImages", src.ids[i] + ".png"))
  cfg = input_config(voc_copy, with_saliency=True, jitter=(0, 0, 0, 0), resize_long=(24, 48),
                     seed=2)
  flips = set()
  for step, batch in enumerate(take(cfg, 3)):
    red = batch["image1"][..., 0] * voc_meta.IMAGENET_STD[0] + voc_meta.IMAGENET_MEAN[0]
    inside = batch["image1"].any(-1)
    np.testing.assert_array_equal(np.round(red * 255)[inside],
                                  np.round(batch["saliency"] * 255)[inside])
    assert (batch["saliency"][~inside] == 0).all()
    flips |= {_params(cfg, step, r)["flip"] for r in range(4)}
  assert flips == {True, False}


# ------------------------------------------------------------------------------------------------
# Order: determinism, epochs, resume, shards


def test_deterministic_same_seed_and_differs_by_seed(synth_root):
  cfg = input_config(synth_root, with_saliency=True)
  a, b = take(cfg, 3), take(cfg, 3)
  assert digest(a) == digest(b)
  assert digest(take(input_config(synth_root, with_saliency=True, seed=1), 3)) != digest(a)


@pytest.mark.integration  # a second interpreter
def test_deterministic_across_processes(synth_root):
  """A fresh interpreter (new TF runtime, thread pools, PIL) yields the same bytes."""
  cfg = input_config(synth_root)
  here = os.path.dirname(os.path.abspath(__file__))
  code = (
      "import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
      "import data_fixtures as f\n"
      "print(f.digest(f.take(f.input_config(sys.argv[3]), 3)))\n")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code, here, os.path.dirname(here), synth_root],
                       check=True, capture_output=True, text=True, env=env,
                       timeout=e2e.PROCESS_TIMEOUT_S)
  assert out.stdout.strip().splitlines()[-1] == digest(take(cfg, 3))


def test_epochs_are_reshuffled_permutations(synth_root):
  cfg = input_config(synth_root)
  idx = np.concatenate([b["index"] for b in take(cfg, 2 * SPE, with_index=True)])
  epoch0, epoch1 = idx[:SPE * 4], idx[SPE * 4:]
  assert sorted(epoch0) == sorted(epoch1) == list(range(TINY["num_train_aug"]))
  assert list(epoch0) != list(epoch1)
  ordered = np.concatenate([b["index"] for b in take(input_config(synth_root, shuffle_buffer=-1),
                                                      SPE, with_index=True)])
  assert list(ordered) == list(range(TINY["num_train_aug"]))
  # A buffered shuffle of the index stream: still a per-epoch permutation, still deterministic.
  buffered = input_config(synth_root, shuffle_buffer=8)
  runs = [np.concatenate([b["index"] for b in take(buffered, 2 * SPE, with_index=True)])
          for _ in range(2)]
  np.testing.assert_array_equal(runs[0], runs[1])
  assert sorted(runs[0][:SPE * 4]) == sorted(runs[0][SPE * 4:]) == list(range(24))
  assert list(runs[0][:SPE * 4]) not in (list(range(24)), list(runs[0][SPE * 4:]))


def test_resume_equals_uninterrupted_tail(synth_root):
  cfg = input_config(synth_root, with_saliency=True)
  full = take(cfg, SPE + 3, with_index=True)
  start = SPE - 2  # resume inside epoch 0 and run across the epoch boundary
  resumed = take(cfg, 5, start_step=start, with_index=True)
  assert digest(resumed) == digest(full[start:start + 5])
  assert digest(take(cfg, 1, start_step=SPE + 2)) == digest(
      [{k: v for k, v in full[SPE + 2].items() if k != "index"}])


@pytest.mark.parametrize("count", [2, 4])
def test_shards_are_disjoint_and_complete(synth_root, count):
  cfg = input_config(synth_root)
  single = take(cfg, 3, with_index=True)
  shards = [take(cfg, 3, process_index=p, process_count=count, with_index=True)
            for p in range(count)]
  for step in range(3):
    parts = [s[step] for s in shards]
    assert all(len(p["index"]) == 4 // count for p in parts)
    merged = {k: np.concatenate([p[k] for p in parts]) for k in single[step]}
    assert len(set(merged["index"])) == 4
    for k in single[step]:  # the global batch does not depend on the number of processes
      np.testing.assert_array_equal(merged[k], single[step][k])


def test_batch_divisibility_and_small_split_errors(synth_root):
  with pytest.raises(ValueError, match=r"batch_size=5 \(the global batch\) is not divisible by "
                                       r"the 2 processes"):
    pipeline.make_train_iterator(input_config(synth_root, batch_size=5), process_index=0,
                                 process_count=2)
  with pytest.raises(ValueError, match="fewer than one global batch"):
    pipeline.make_train_iterator(input_config(synth_root, batch_size=32), process_index=0,
                                 process_count=1)
  with pytest.raises(ValueError, match="process_index=2 is not in"):
    pipeline.make_train_iterator(input_config(synth_root), process_index=2, process_count=2)


def test_global_batch_from_process_local_data(synth_root):
  import jax  # pylint: disable=import-outside-toplevel
  from ppc_jax import sharding as shd  # pylint: disable=import-outside-toplevel
  mesh = shd.make_mesh()
  batch_sharding = shd.batch_sharding(mesh)
  cfg = input_config(synth_root, batch_size=jax.device_count())
  with pipeline.make_train_iterator(cfg) as it:  # process index/count from JAX
    local = next(it)
  glob = shd.to_global(local, batch_sharding)
  assert glob["image1"].shape == local["image1"].shape
  assert glob["image1"].sharding == batch_sharding
  np.testing.assert_array_equal(np.asarray(glob["image2"]), local["image2"])


# ------------------------------------------------------------------------------------------------
# Bad inputs at decode time


def _truncate(path):
  data = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(data[:len(data) // 2])


def test_corrupt_jpeg_raises_with_file_name(voc_copy):
  src = voc.VOCSource(voc_copy, "train_aug")
  bad = src.image_paths[5]
  _truncate(bad)  # the header still reads, so the eager check passes; decoding fails later
  cfg = input_config(voc_copy)
  with pytest.raises(voc.DataError, match=rf"{os.path.basename(bad)}: cannot decode image "
                                          r"\(OSError: image file is truncated"):
    take(cfg, SPE)


def test_corrupt_files_skipped_with_count_and_summary(voc_copy, caplog):
  src = voc.VOCSource(voc_copy, "train_aug", with_saliency=True)
  _truncate(src.image_paths[5])
  _truncate(src.saliency_paths[9])
  cfg = input_config(voc_copy, with_saliency=True, skip_bad=True)
  source = sources.train_source(cfg)
  it = pipeline.make_train_iterator(cfg, source, process_index=0, process_count=1,
                                    with_index=True)
  batches = [next(it) for _ in range(2 * SPE)]
  it.close()
  assert all(b["image1"].shape == (4, 32, 32, 3) for b in batches)
  seen = np.concatenate([b["index"] for b in batches])
  assert 5 not in seen and 9 not in seen  # their slots hold the next readable images
  assert source.bad.count == 2  # each bad file reported once
  assert it.summary().endswith("; 4 batch slots refilled")  # 2 files x 2 epochs
  summary = source.bad.summary()
  assert "unreadable image" in summary and "unreadable saliency" in summary
  assert "input closed at step 12" in caplog.text
