"""Multi-scale + flip inference inputs: the reference's resizing and normalisation, exact shapes."""

import numpy as np
import PIL.Image
import pytest

from data_fixtures import synth_root  # noqa: F401  (pytest fixture)
from ppc_jax.data import infer_inputs
from ppc_jax.data import voc
from ppc_jax.data import voc_meta


def test_scaled_size_rounds_half_to_even():
  assert infer_inputs.scaled_size(375, 375, 0.5) == (188, 188)   # 187.5 -> 188
  assert infer_inputs.scaled_size(375, 500, 1.5) == (562, 750)   # 562.5 -> 562
  assert infer_inputs.scaled_size(333, 500, 0.5) == (166, 250)   # 166.5 -> 166


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


def test_inputs_equal_reference_exact_shapes(synth_root):
  src = voc.VOCSource(synth_root, "train")
  for i in range(len(src)):
    image = src.image_pil(i)
    ref = _reference_msf(image, infer_inputs.DEFAULT_SCALES)
    arrays = infer_inputs.multiscale_flip(image)
    assert len(arrays) == len(infer_inputs.DEFAULT_SCALES)
    for k, (arr, s) in enumerate(zip(arrays, infer_inputs.DEFAULT_SCALES)):
      ws, hs = infer_inputs.scaled_size(image.width, image.height, s)
      assert arr.dtype == np.float32 and arr.shape == (2, hs, ws, 3)  # never padded
      np.testing.assert_array_equal(arr[0], ref[2 * k])
      np.testing.assert_array_equal(arr[1], ref[2 * k + 1])
    unflipped = infer_inputs.multiscale_flip(image, (1.0,), flip=False)
    assert len(unflipped) == 1 and unflipped[0].shape == (1, image.height, image.width, 3)
    np.testing.assert_array_equal(unflipped[0][0], ref[2])


def test_empty_scale_names_the_scale():
  image = PIL.Image.new("RGB", (3, 2))
  with pytest.raises(ValueError, match="scale 0.1 of a 3x2 image"):
    infer_inputs.multiscale_flip(image, (1.0, 0.1))
