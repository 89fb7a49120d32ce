"""Multi-scale + flip inference inputs: reference resizing, buckets, GT, sharding, bad inputs."""

import os

import numpy as np
import PIL.Image
import pytest

from data_fixtures import TINY, synth_root, voc_copy  # noqa: F401  (pytest fixtures)
from ppc_jax.data import infer_inputs
from ppc_jax.data import voc
from ppc_jax.data import voc_meta


def test_scaled_size_rounds_half_to_even():
  assert infer_inputs.scaled_size(375, 375, 0.5) == (188, 188)   # 187.5 -> 188
  assert infer_inputs.scaled_size(375, 500, 1.5) == (562, 750)   # 562.5 -> 562
  assert infer_inputs.scaled_size(333, 500, 0.5) == (166, 250)   # 166.5 -> 166
  assert infer_inputs.bucket_size(54, 76, 32) == (64, 96)
  assert infer_inputs.bucket_size(54, 76, 0) == (54, 76)


def _reference_msf(image, scales):
  """VOC12ClsDatasetMSF + Normalize, written out: [s0, s0 flipped, s1, s1 flipped, ...] as HWC."""
  out = []
  w, h = image.size
  for s in scales:
    arr = np.asarray(image.resize((round(w * s), round(h * s)), resample=PIL.Image.BICUBIC))
    norm = np.empty(arr.shape, np.float32)
    for c in range(3):
      norm[..., c] = (arr[..., c] / 255. - voc_meta.IMAGENET_MEAN[c]) / voc_meta.IMAGENET_STD[c]
    out += [norm, np.flip(norm, 1)]
  return out


def test_records_equal_reference_exact_shapes(synth_root):
  src = infer_inputs.infer_source(synth_root, "train")
  records = list(infer_inputs.iterate(src, num_threads=2, prefetch=3))
  assert [r["id"] for r in records] == list(src.ids)
  for r in records:
    image = PIL.Image.open(os.path.join(synth_root, "JPEGImages", r["id"] + ".jpg")).convert("RGB")
    ref = _reference_msf(image, infer_inputs.DEFAULT_SCALES)
    assert r["orig_size"] == (image.size[1], image.size[0])
    assert len(r["scales"]) == 4 and r["scale_factors"] == infer_inputs.DEFAULT_SCALES
    for k, (arr, valid) in enumerate(zip(r["scales"], r["valid_sizes"])):
      assert arr.dtype == np.float32 and arr.shape == (2, *valid, 3)
      np.testing.assert_array_equal(arr[0], ref[2 * k])
      np.testing.assert_array_equal(arr[1], ref[2 * k + 1])
    np.testing.assert_array_equal(r["gt"], voc.read_mask(
        os.path.join(synth_root, "SegmentationClass", r["id"] + ".png")))
    np.testing.assert_array_equal(voc.labels_from_mask(r["gt"]), r["labels"])
    np.testing.assert_array_equal(r["image"], np.asarray(image))


def test_padded_buckets_hold_exact_values_and_zeros(synth_root):
  src = infer_inputs.infer_source(synth_root, "val", with_gt=False)
  exact = list(infer_inputs.iterate(src, with_gt=False))
  padded = list(infer_inputs.iterate(src, with_gt=False, pad_multiple=16, scales=(0.5, 1.0),
                                     flip=False))
  keys = {infer_inputs.shape_key(r) for r in padded}
  assert len(keys) < len({infer_inputs.shape_key(r) for r in exact})
  for e, p in zip(exact, padded):
    assert "gt" not in p
    for k, (arr, (h, w)) in enumerate(zip(p["scales"], p["valid_sizes"])):
      assert arr.shape[0] == 1 and arr.shape[1] % 16 == 0 and arr.shape[2] % 16 == 0
      np.testing.assert_array_equal(arr[0, :h, :w], e["scales"][k][0])
      assert not arr[0, h:].any() and not arr[0, :, w:].any()


def test_process_shards_partition_the_split(synth_root):
  src = infer_inputs.infer_source(synth_root, "train")
  parts = [[r["id"] for r in infer_inputs.iterate(src, scales=(1.0,), process_index=p,
                                                  process_count=3)] for p in range(3)]
  assert sorted(sum(parts, [])) == sorted(src.ids)
  assert all(not set(a) & set(b) for i, a in enumerate(parts) for b in parts[i + 1:])


def test_bad_gt_and_image_raise_or_skip(voc_copy, caplog):
  src = infer_inputs.infer_source(voc_copy, "train")
  png = src.mask_paths[2]
  mask = voc.read_mask(png).copy()
  mask[0, 0] = 99
  img = PIL.Image.fromarray(mask, "P")
  img.putpalette(voc_meta.palette_bytes())
  img.save(png)
  jpg = src.image_paths[4]
  data = open(jpg, "rb").read()
  open(jpg, "wb").write(data[:len(data) // 2])
  with pytest.raises(voc.DataError, match=rf"{os.path.basename(png)}: mask holds labels \[99\]"):
    list(infer_inputs.iterate(src, scales=(1.0,)))
  records = list(infer_inputs.iterate(src, scales=(1.0,), skip_bad=True))
  assert len(records) == TINY["num_train"] - 2
  assert src.bad.count == 2
  assert "2 images skipped" in caplog.text and "mask labels outside 0..20/255" in caplog.text
  # A missing GT is caught when the source is built.
  os.remove(png)
  with pytest.raises(voc.DataError, match="mask of the image listed in"):
    infer_inputs.infer_source(voc_copy, "train")
