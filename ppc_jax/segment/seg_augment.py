"""The segmentation reference's image ops (OpenCV in `segmentation/lib/datasets/transform.py`),
re-derived in numpy so that no OpenCV is needed.

Training ('weak' transform), in the reference's order:
  1. RandomHSV(10, 10, 10): OpenCV's 8-bit RGB -> HSV (H in 0..179), h += randint(-10, 10) mod
     180, s and v += randint(-10, 10) clipped to 0..255, back to RGB (uint8);
  2. RandomFlip(0.5): horizontal, image and mask;
  3. RandomScale(0.5, 1.5): one factor f ~ U(0.5, 1.5); image by OpenCV bicubic (A = -0.75,
     pixel centres, edge pixels replicated) to round(f * size), rounded to uint8; mask by
     OpenCV nearest (source index floor(dst / f));
  4. ImageNorm: (x / 255 - mean) / std in float32 (`normalize_float32`);
  5. RandomCrop(448): the window of a larger image, or the image at a random offset inside a zero
     container (0 after normalisation) whose mask padding is 255 (ignored).
Test (`Multiscale`): the normalised float image resized by bicubic at each scale (no rounding).

OpenCV computes the uint8 bicubic in 11-bit fixed point and its HSV conversion with lookup tables;
here both are float64 and rounded once, so a pixel can differ by one grey level from OpenCV's.
The random draws are `ppc_jax.data.augment`'s stateless per-example uniforms (keyed by seed,
epoch and position); only the generator differs from the reference's Python `random`.
"""

import numpy as np

from ppc_jax.data import voc_meta

CUBIC_A = -0.75  # OpenCV's bicubic coefficient (PIL and TF use -0.5)

# Indices into augment.draw_params' uniforms.
_U_SCALE, _U_FLIP, _U_H, _U_S, _U_V, _U_CROP_W, _U_CROP_H = 0, 1, 2, 3, 4, 10, 11


def rgb_to_hsv_u8(rgb):
  """OpenCV COLOR_RGB2HSV for uint8: H = hue / 2 in 0..179, S and V in 0..255 (uint8 [H, W, 3])."""
  x = rgb.astype(np.float64)
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  v = x.max(-1)
  mn = x.min(-1)
  diff = v - mn
  s = np.where(v > 0, 255.0 * diff / np.maximum(v, 1e-12), 0.0)
  safe = np.maximum(diff, 1e-12)
  h = np.where(v == r, 60.0 * (g - b) / safe,
               np.where(v == g, 120.0 + 60.0 * (b - r) / safe, 240.0 + 60.0 * (r - g) / safe))
  h = np.where(diff > 0, h, 0.0)
  h = np.where(h < 0, h + 360.0, h)
  h8 = np.rint(h / 2.0) % 180
  return np.stack([h8, np.rint(s), v], -1).clip(0, 255).astype(np.uint8)


def hsv_to_rgb_u8(hsv):
  """OpenCV COLOR_HSV2RGB for uint8 (H = hue / 2): uint8 [H, W, 3] -> uint8 RGB."""
  x = hsv.astype(np.float64)
  h = (x[..., 0] * 2.0) % 360.0 / 60.0
  s = x[..., 1] / 255.0
  v = x[..., 2] / 255.0
  sector = np.floor(h).astype(np.int64) % 6
  f = h - np.floor(h)
  p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
  table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
  out = np.zeros(hsv.shape, np.float64)
  for k, (r, g, b) in enumerate(table):
    m = sector == k
    out[..., 0] = np.where(m, r, out[..., 0])
    out[..., 1] = np.where(m, g, out[..., 1])
    out[..., 2] = np.where(m, b, out[..., 2])
  return np.rint(out * 255.0).clip(0, 255).astype(np.uint8)


def random_hsv(rgb, dh, ds, dv):
  """Step 1 with the drawn deltas: uint8 RGB -> uint8 RGB."""
  hsv = rgb_to_hsv_u8(rgb).astype(np.int32)
  h = (hsv[..., 0] + dh) % 180
  s = np.clip(hsv[..., 1] + ds, 0, 255)
  v = np.clip(hsv[..., 2] + dv, 0, 255)
  return hsv_to_rgb_u8(np.stack([h, s, v], -1).astype(np.uint8))


def scaled_size(length, factor):
  """OpenCV's dsize for fx/fy: round(length * factor), at least 1."""
  return max(1, int(np.rint(length * factor)))


def _cubic_weights(t):
  a = CUBIC_A
  t = np.abs(t)
  return np.where(t <= 1, ((a + 2) * t - (a + 3)) * t * t + 1,
                  np.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0.0))


def _cubic_taps(in_size, out_size, factor):
  """The 4 source indices (clipped to the image, as OpenCV's border replication) and weights of
  each output position at OpenCV's sampling for scale `factor`: int [out, 4], float64 [out, 4]."""
  src = (np.arange(out_size, dtype=np.float64) + 0.5) / factor - 0.5
  base = np.floor(src).astype(np.int64)
  offsets = np.arange(-1, 3)
  index = np.clip(base[:, None] + offsets, 0, in_size - 1)
  weight = _cubic_weights((src - base)[:, None] - offsets)
  return index, weight


def _resize_axis(x, index, weight, axis):
  """x float64 -> x resized along `axis`: each output line the weighted sum of its 4 source
  lines, w0 x0 + w1 x1 + w2 x2 + w3 x3 in that order (gathered into reused buffers: the host
  side of multi-scale test inference is mostly these sums)."""
  shape = [1] * x.ndim
  shape[axis] = -1
  out = np.take(x, index[:, 0], axis=axis)
  out *= weight[:, 0].reshape(shape)
  term = np.empty_like(out)
  for k in range(1, index.shape[1]):
    np.take(x, index[:, k], axis=axis, out=term)
    term *= weight[:, k].reshape(shape)
    out += term
  return out


def resize_cubic(image, factor, *, out_size=None):
  """OpenCV INTER_CUBIC resize by `factor` (fx = fy), separable, in float64.

  Each output pixel reads 4 x 4 source pixels, so the work is gathered per tap rather than
  multiplied by dense [out, in] interpolation matrices (which cost in x out per row and made
  multi-scale test inference host-bound).

  Args:
    image: [H, W, C] uint8 (result rounded and clipped to uint8) or float (result float32).
    factor: the scale; the output is round(H * factor) x round(W * factor) unless `out_size`.
    out_size: optional (height, width).

  Returns:
    the resized image, same dtype kind.
  """
  h, w = image.shape[:2]
  oh, ow = out_size or (scaled_size(h, factor), scaled_size(w, factor))
  x = image.astype(np.float64)
  x = _resize_axis(x, *_cubic_taps(h, oh, oh / h if out_size else factor), axis=0)
  x = _resize_axis(x, *_cubic_taps(w, ow, ow / w if out_size else factor), axis=1)
  if image.dtype == np.uint8:
    return np.rint(x).clip(0, 255).astype(np.uint8)
  return x.astype(np.float32)


def resize_nearest(mask, factor):
  """OpenCV INTER_NEAREST by `factor`: source index floor(dst / factor), clipped."""
  h, w = mask.shape[:2]
  oh, ow = scaled_size(h, factor), scaled_size(w, factor)
  rows = np.minimum(np.floor(np.arange(oh) / factor).astype(np.int64), h - 1)
  cols = np.minimum(np.floor(np.arange(ow) / factor).astype(np.int64), w - 1)
  return mask[rows][:, cols]


def decode_params(draws, *, scale_range=(0.5, 1.5), hsv=(10, 10, 10), hflip=True):
  """The reference's random choices from the per-example uniforms.

  Returns:
    dict: factor (float; 1.0 when scale_range is empty), flip (bool), hsv deltas (dh, ds, dv)
    (None when all ranges are 0), crop_u (u_w, u_h).
  """
  d = np.asarray(draws, np.float64)
  factor = 1.0
  if scale_range:
    lo, hi = float(scale_range[0]), float(scale_range[1])
    factor = d[_U_SCALE] * (hi - lo) + lo  # random.random() * (hi - lo) + lo
  deltas = None
  if any(int(r) > 0 for r in hsv):
    # random.randint(-r, r) = -r + randrange(2r + 1)
    deltas = tuple(-int(r) + min(int(np.floor(u * (2 * int(r) + 1))), 2 * int(r))
                   for r, u in zip(hsv, (d[_U_H], d[_U_S], d[_U_V])))
  return dict(factor=factor, flip=bool(hflip) and bool(d[_U_FLIP] < 0.5), hsv=deltas,
              crop_u=(float(d[_U_CROP_W]), float(d[_U_CROP_H])))


def normalize_float32(image):
  """The reference's ImageNorm: (x / 255 - mean) / std computed in float32 (its array is float32,
  unlike stage 1's float64 `Normalize`). uint8 or float [..., 3] -> float32."""
  mean = np.asarray(voc_meta.IMAGENET_MEAN, np.float64).astype(np.float32)
  std = np.asarray(voc_meta.IMAGENET_STD, np.float64).astype(np.float32)
  return ((image.astype(np.float32) / np.float32(255.0) - mean) / std).astype(np.float32)


def make_example(image, mask, params, crop_size):
  """Steps 1-5 for one example.

  Args:
    image: uint8 [H, W, 3] RGB.
    mask: uint8 [H, W] pseudo-mask (class indices, 255 = ignore).
    params: `decode_params(...)`.
    crop_size: S.

  Returns:
    (image float32 [S, S, 3], mask uint8 [S, S]).
  """
  if params["hsv"] is not None:
    image = random_hsv(image, *params["hsv"])
  if params["flip"]:
    image, mask = image[:, ::-1], mask[:, ::-1]
  if params["factor"] != 1.0:
    image = resize_cubic(image, params["factor"])
    mask = resize_nearest(mask, params["factor"])
  # Imported here: ppc_jax.data.augment imports TensorFlow (4 s), which inference never needs.
  from ppc_jax.data import augment  # pylint: disable=import-outside-toplevel
  normed = normalize_float32(image)
  h, w = normed.shape[:2]
  img_top, img_left, cont_top, cont_left, ch, cw = augment.crop_placement(
      h, w, crop_size, *params["crop_u"])
  out_image = np.zeros((crop_size, crop_size, 3), np.float32)
  out_mask = np.full((crop_size, crop_size), 255, np.uint8)
  out_image[cont_top:cont_top + ch, cont_left:cont_left + cw] = (
      normed[img_top:img_top + ch, img_left:img_left + cw])
  out_mask[cont_top:cont_top + ch, cont_left:cont_left + cw] = (
      mask[img_top:img_top + ch, img_left:img_left + cw])
  return out_image, out_mask
