"""The reference training augmentation (METHOD 2.6), split where it is cheapest and most exact.

Reference order (`VOC12ClsDataset` transform; the EPS variant adds the saliency map):
  1. RandomResizeLong(448, 768): long side = randint(lo, hi) inclusive, aspect kept, the other side
     `int(round(...))` (Python round: halves to even), PIL bicubic.
  2. Horizontal flip, p = 0.5.
  3. ColorJitter(0.3, 0.3, 0.3, 0.1) as torchvision applies it to a PIL image: brightness,
     contrast and saturation through PIL.ImageEnhance, hue through a uint8 HSV shift, in a random
     order (torch.randperm(4)) with factors drawn first.
  4. Normalise: (x / 255 - mean) / std with ImageNet statistics.
  5. RandomCrop(448): a random window of a larger image; a smaller image is placed at a random
     offset inside a zero (= the mean colour after normalisation) container. Width offset drawn
     first, then height.
  Saliency (EPS variant): the same resize (bicubic, as the reference resizes it as an image),
  flip and crop, no jitter; values / 255, averaged over RGB; zero outside the image.

How it is computed here:
  * Steps 1-3 run on the host in PIL, inside one `tf.numpy_function` per example (`host_augment`),
    so they equal the reference's PIL calls given the same random draws. The crop window is cut
    there too (before normalisation: normalisation is per pixel, so cropping first is exact and
    normalises 448^2 instead of up to 768^2 pixels).
  * Steps 4-5 (normalise in float64 like the reference's numpy, then zero-pad the window into its
    container at the drawn offset) and view 2 (align-corners bilinear, `resize_align_corners`)
    are TF ops.
  * The random numbers come from TF stateless ops keyed by (seed, epoch, position), see
    `draw_params`; `decode_params` turns them into the reference's draws. Only the generator
    differs from the reference (Python's `random` / torch's global RNG, unseeded there).
"""

import numpy as np
import PIL.Image
import PIL.ImageEnhance
import tensorflow as tf

from ppc_jax.data import voc_meta

# Order of the uniform draws in the per-example vector.
_D_LONG, _D_FLIP, _D_B, _D_C, _D_S, _D_H = 0, 1, 2, 3, 4, 5
_D_PERM = slice(6, 10)
_D_CROP_W, _D_CROP_H = 10, 11
NUM_DRAWS = 12


# ----------------------------------------------------------------------------------------------
# Random draws


def draw_params(key):
  """The per-example uniform draws: float64 [NUM_DRAWS] in [0, 1) from a stateless key.

  Args:
    key: int32/int64 [2] stateless seed (see `example_key`).
  """
  return tf.random.stateless_uniform([NUM_DRAWS], seed=key, dtype=tf.float64)


def example_key(seed, epoch, position):
  """Stateless key of one example: a function of (seed, epoch, position in the epoch's global
  order) only, so augmentations do not depend on the number of processes or on threading."""
  base = tf.constant([int(seed) & 0x7FFFFFFF, 0x5EED], tf.int64)
  key = tf.random.experimental.stateless_fold_in(base, tf.cast(epoch, tf.int32))
  return tf.random.experimental.stateless_fold_in(key, tf.cast(position, tf.int32))


def _randrange(u, n):
  """random.randrange(n) from a uniform u in [0, 1)."""
  return min(int(np.floor(u * n)), n - 1)


def decode_params(draws, resize_long=(448, 768), jitter=(0.3, 0.3, 0.3, 0.1), hflip=True):
  """Turns the uniform draws into the reference's random choices.

  Args:
    draws: float [NUM_DRAWS] uniforms in [0, 1).
    resize_long: (lo, hi) inclusive range of the long side; None disables the resize.
    jitter: (brightness, contrast, saturation, hue) strengths; 0 disables that op.
    hflip: whether flipping is enabled.

  Returns:
    dict: target_long (int or None), flip (bool), factors (b, c, s, h; None where disabled),
    order (tuple of op ids 0..3: brightness, contrast, saturation, hue), crop_u (u_w, u_h).
  """
  d = np.asarray(draws, np.float64)
  target_long = None
  if resize_long is not None:
    lo, hi = int(resize_long[0]), int(resize_long[1])
    target_long = lo + _randrange(d[_D_LONG], hi - lo + 1)
  b, c, s, h = (float(x) for x in jitter)

  def factor(strength, u):
    if strength <= 0:
      return None
    lo = max(0.0, 1.0 - strength)
    return lo + (1.0 + strength - lo) * float(u)

  factors = (factor(b, d[_D_B]), factor(c, d[_D_C]), factor(s, d[_D_S]),
             None if h <= 0 else -h + 2.0 * h * float(d[_D_H]))
  return dict(target_long=target_long,
              flip=bool(hflip) and bool(d[_D_FLIP] < 0.5),
              factors=factors,
              order=tuple(int(i) for i in np.argsort(d[_D_PERM], kind="stable")),
              crop_u=(float(d[_D_CROP_W]), float(d[_D_CROP_H])))


# ----------------------------------------------------------------------------------------------
# Host (PIL) stage


def resize_long_size(width, height, target_long):
  """Reference RandomResizeLong target (width, height): Python round, halves to even."""
  if width < height:
    return int(round(width * target_long / height)), target_long
  return target_long, int(round(height * target_long / width))


def adjust_hue_pil(img, hue_factor):
  """torchvision's PIL hue shift: H channel (uint8) += uint8(hue_factor * 255), wrapping.

  The reference's `np.uint8(negative float)` wraps through a C cast (truncation towards zero, then
  modulo 256); `int(...) % 256` is that, without relying on numpy's undefined cast.
  """
  if not -0.5 <= hue_factor <= 0.5:
    raise ValueError(f"hue_factor must be in [-0.5, 0.5], got {hue_factor}")
  h, s, v = img.convert("HSV").split()
  shift = np.uint8(int(hue_factor * 255) % 256)
  h_arr = np.asarray(h, np.uint8) + shift  # uint8 arithmetic wraps around, as intended
  return PIL.Image.merge("HSV", (PIL.Image.fromarray(h_arr, "L"), s, v)).convert("RGB")


def color_jitter_pil(img, factors, order):
  """ColorJitter on an RGB PIL image with given factors and order (torchvision's PIL path).

  Args:
    img: RGB PIL image.
    factors: (brightness, contrast, saturation, hue); None skips that op.
    order: permutation of (0, 1, 2, 3) = (brightness, contrast, saturation, hue).
  """
  b, c, s, h = factors
  for op in order:
    if op == 0 and b is not None:
      img = PIL.ImageEnhance.Brightness(img).enhance(b)
    elif op == 1 and c is not None:
      img = PIL.ImageEnhance.Contrast(img).enhance(c)
    elif op == 2 and s is not None:
      img = PIL.ImageEnhance.Color(img).enhance(s)
    elif op == 3 and h is not None:
      img = adjust_hue_pil(img, h)
  return img


def crop_placement(height, width, crop_size, u_w, u_h):
  """Reference RandomCrop offsets for an image of (height, width) from uniforms (u_w, u_h).

  Returns:
    (img_top, img_left, cont_top, cont_left, ch, cw): the window
    image[img_top:img_top+ch, img_left:img_left+cw] goes to
    container[cont_top:cont_top+ch, cont_left:cont_left+cw].
  """
  ch, cw = min(crop_size, height), min(crop_size, width)
  w_space, h_space = width - crop_size, height - crop_size
  if w_space > 0:
    cont_left, img_left = 0, _randrange(u_w, w_space + 1)
  else:
    cont_left, img_left = _randrange(u_w, -w_space + 1), 0
  if h_space > 0:
    cont_top, img_top = 0, _randrange(u_h, h_space + 1)
  else:
    cont_top, img_top = _randrange(u_h, -h_space + 1), 0
  return img_top, img_left, cont_top, cont_left, ch, cw


def host_augment(image, params, crop_size, saliency=None):
  """Steps 1-3 and the crop window of step 5 on the host.

  Args:
    image: RGB PIL image (decoded).
    params: `decode_params(...)` output.
    crop_size: the crop (container) side.
    saliency: optional PIL saliency map ('L' or 'RGB'), same size as the image.

  Returns:
    window: uint8 [ch, cw, 3] jittered pixels of the crop window.
    placement: int32 [2] = (cont_top, cont_left) of the window in the container.
    sal_window: float32 [ch, cw] saliency in [0, 1] (RGB mean of value / 255), or None.
  """
  if params["target_long"] is not None:
    size = resize_long_size(image.size[0], image.size[1], params["target_long"])
    image = image.resize(size, resample=PIL.Image.BICUBIC)
    if saliency is not None:
      saliency = saliency.resize(size, resample=PIL.Image.BICUBIC)
  if params["flip"]:
    image = image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
    if saliency is not None:
      saliency = saliency.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
  image = color_jitter_pil(image, params["factors"], params["order"])
  width, height = image.size
  img_top, img_left, cont_top, cont_left, ch, cw = crop_placement(
      height, width, crop_size, *params["crop_u"])
  window = np.asarray(image)[img_top:img_top + ch, img_left:img_left + cw]
  sal_window = None
  if saliency is not None:
    sal = np.asarray(saliency)[img_top:img_top + ch, img_left:img_left + cw].astype(np.float64)
    sal = sal / 255.0
    sal_window = (sal.mean(axis=-1) if sal.ndim == 3 else sal).astype(np.float32)
  return np.ascontiguousarray(window), np.array([cont_top, cont_left], np.int32), sal_window


# ----------------------------------------------------------------------------------------------
# TF stage


def normalize(window):
  """uint8 [..., 3] -> float32 ImageNet-normalised, computed in float64 like the reference."""
  x = tf.cast(window, tf.float64) / 255.0
  mean = tf.constant(voc_meta.IMAGENET_MEAN, tf.float64)
  std = tf.constant(voc_meta.IMAGENET_STD, tf.float64)
  return tf.cast((x - mean) / std, tf.float32)


def place_in_container(window, placement, crop_size):
  """Zero-pads a [ch, cw, C] window into a [crop_size, crop_size, C] container at placement."""
  shape = tf.shape(window)
  top, left = placement[0], placement[1]
  paddings = [[top, crop_size - shape[0] - top], [left, crop_size - shape[1] - left], [0, 0]]
  out = tf.pad(window, paddings)
  return tf.ensure_shape(out, [crop_size, crop_size, window.shape[-1]])


def align_corners_coords(in_size, out_size):
  """Source indices and weights of torch's align_corners=True linear interpolation on one axis.

  Computed in float32 as torch's kernels do (scale = (in-1)/(out-1), src = scale * d,
  i0 = floor(src), i1 = min(i0 + 1, in - 1), w1 = src - i0), so the weights equal torch's.

  Returns:
    (i0 int32 [out], i1 int32 [out], w0 float32 [out], w1 float32 [out]).
  """
  f32 = np.float32
  d = np.arange(out_size, dtype=f32)
  scale = f32(in_size - 1) / f32(out_size - 1) if out_size > 1 else f32(0)
  src = d * scale
  i0 = np.minimum(np.floor(src).astype(np.int32), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1).astype(np.int32)
  w1 = (src - i0.astype(f32)).astype(f32)
  w0 = (f32(1) - w1).astype(f32)
  return i0, i1, w0, w1


def resize_align_corners(x, size):
  """Bilinear resize with align_corners=True (torch F.interpolate semantics, no antialias).

  tf.image.resize has no align_corners option; this gathers the two neighbours per axis and
  lerps, width first, then height, the order of torch's CPU kernel. A gather (not a matmul) keeps
  the result independent of the BLAS kernel chosen, so batches stay byte-identical across runs.

  Args:
    x: float32 [B, H, W, C] with static H and W.
    size: (out_h, out_w) Python ints.

  Returns:
    float32 [B, out_h, out_w, C].
  """
  in_h, in_w = int(x.shape[1]), int(x.shape[2])
  out_h, out_w = int(size[0]), int(size[1])
  if (in_h, in_w) == (out_h, out_w):
    return x
  j0, j1, v0, v1 = align_corners_coords(in_w, out_w)
  i0, i1, u0, u1 = align_corners_coords(in_h, out_h)
  v0, v1 = (tf.constant(a[None, None, :, None]) for a in (v0, v1))
  u0, u1 = (tf.constant(a[None, :, None, None]) for a in (u0, u1))
  t = tf.gather(x, j0, axis=2) * v0 + tf.gather(x, j1, axis=2) * v1
  return tf.gather(t, i0, axis=1) * u0 + tf.gather(t, i1, axis=1) * u1
