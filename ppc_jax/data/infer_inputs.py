"""Multi-scale + flip inference inputs of one image (METHOD 4.1), as `ppc_jax.seeds.infer` feeds them.

Per image and scale s (default 0.5, 1.0, 1.5, 2.0), exactly as the reference's
`VOC12ClsDatasetMSF`: PIL bicubic resize of the RGB image to (round(W * s), round(H * s)) with
Python's round (halves to even: 187.5 -> 188, 562.5 -> 562), the reference normalisation
(float64, then float32), and the horizontally flipped copy right after the original.

Shapes are exact, never padded: PCM normalises affinities over *every* position of the feature
map, so zero padding would change the refined CAM of every pixel, not only near the border. The
model side therefore compiles once per distinct scaled size; `ppc_jax.seeds.infer` batches images of
one size together (VOC has few distinct sizes, most are 500x375 or 375x500).
"""

import numpy as np
import PIL.Image

from ppc_jax.data import voc_meta

DEFAULT_SCALES = (0.5, 1.0, 1.5, 2.0)


def scaled_size(width, height, scale):
  """The reference's scaled (width, height): Python round of W * s and H * s (halves to even)."""
  return round(width * scale), round(height * scale)


def multiscale_flip(image, scales=DEFAULT_SCALES, flip=True):
  """The reference's multi-scale (+ flip) inputs of one image.

  Args:
    image: RGB PIL image (decoded).
    scales: scale factors.
    flip: add the horizontally flipped copy after the original.

  Returns:
    list over scales of float32 [F, Hs, Ws, 3] ImageNet-normalised inputs, F = 2 (original,
    flipped) or 1, (Ws, Hs) = `scaled_size(W, H, s)`.
  """
  width, height = image.size
  arrays = []
  for s in scales:
    w, h = scaled_size(width, height, s)
    if w < 1 or h < 1:
      raise ValueError(f"scale {s} of a {width}x{height} image gives an empty image")
    # PIL returns a copy for an unchanged size, as in the reference at scale 1.0.
    x = voc_meta.normalize(np.asarray(image.resize((w, h), resample=PIL.Image.BICUBIC)))
    arrays.append(np.stack([x, x[:, ::-1]] if flip else [x]))
  return arrays
