"""Bilinear resize with PyTorch `F.interpolate(mode='bilinear')` semantics, in jnp.

`jax.image.resize` has no align_corners option and antialiases when downsampling; the reference
method needs plain 4-neighbour bilinear sampling with align_corners=True almost everywhere (and
align_corners=False for the final upsample at inference). This module gives exactly that.

The resize is separable, so it is written as two small interpolation matrices applied with einsum:
`y = A_h @ x @ A_w^T` per image and channel. Each row of A has at most two non-zeros (the lerp
weights). A dense matmul wastes a factor ~in_size of FLOPs over a gather/lerp, but for the sizes of
this project (<= 1000 px, <= 21 channels at full resolution) it is cheap, it maps onto the MXU /
tensor cores, and -- unlike a gather -- its transpose (the gradient) is again a plain matmul rather
than a scatter-add.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=256)
def interpolation_matrix(in_size, out_size, align_corners):
  """The [out_size, in_size] linear-interpolation matrix of torch's bilinear mode along one axis.

  torch (aten `area_pixel_compute_source_index`), for output index d:
    align_corners=True:  src = d * (in - 1) / (out - 1)   (src = 0 when out == 1)
    align_corners=False: src = max((d + 0.5) * in / out - 0.5, 0)
  then i0 = floor(src), i1 = min(i0 + 1, in - 1), w1 = src - i0, w0 = 1 - w1.
  The align_corners=False branch uses the size ratio, i.e. torch called with `size=` (with
  `scale_factor=` and no recompute_scale_factor torch would use 1/scale_factor instead).

  Args:
    in_size: input length along the axis (>= 1).
    out_size: output length along the axis (>= 1).
    align_corners: torch's align_corners flag.

  Returns:
    np.ndarray float32 [out_size, in_size]; rows sum to 1. The index arithmetic is done in
    float32 like torch's CPU/CUDA kernels (opmath float), so the lerp weights equal torch's
    bit for bit; float64 would differ by up to ~5e-5 in the weights at 448 -> 128.
  """
  if in_size < 1 or out_size < 1:
    raise ValueError(f"resize sizes must be >= 1, got in={in_size}, out={out_size}")
  f32 = np.float32
  d = np.arange(out_size, dtype=f32)
  if align_corners:
    scale = f32(in_size - 1) / f32(out_size - 1) if out_size > 1 else f32(0.0)
    src = d * scale
  else:
    scale = f32(in_size) / f32(out_size)
    src = np.maximum((d + f32(0.5)) * scale - f32(0.5), f32(0.0))
  i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  w1 = np.clip(src - i0.astype(f32), f32(0.0), f32(1.0))
  w0 = f32(1.0) - w1
  m = np.zeros((out_size, in_size), np.float32)
  rows = np.arange(out_size)
  # Two separate adds: when i0 == i1 (last pixel) both weights land on the same entry.
  np.add.at(m, (rows, i0), w0)
  np.add.at(m, (rows, i1), w1)
  m.setflags(write=False)  # cached: never let a caller mutate the shared copy
  return m


def resize_bilinear(x, size, *, align_corners, precision=jax.lax.Precision.HIGHEST):
  """Bilinear resize of NHWC maps, equal to torch `F.interpolate(..., mode='bilinear')`.

  No antialiasing (torch samples only the 4 neighbours, also when downsampling). Differentiable
  and jit-friendly: `size` must be static (Python ints).

  Args:
    x: [B, H, W, C] float array. Low-precision inputs (bf16/f16) are interpolated in float32
      (bf16 cannot even hold weights like 0.3 to 3 digits) and cast back.
    size: (out_h, out_w) Python ints.
    align_corners: torch's align_corners flag (keyword-only so call sites say which one).
    precision: matmul precision. HIGHEST by default so that on GPU/TPU the interpolation is not
      silently done in TF32/bf16 (the matrices are tiny; the extra passes cost little).

  Returns:
    [B, out_h, out_w, C] array of x.dtype.
  """
  if x.ndim != 4:
    raise ValueError(f"resize_bilinear expects NHWC [B, H, W, C], got shape {x.shape}")
  out_h, out_w = (int(s) for s in size)
  _, in_h, in_w, _ = x.shape
  if (out_h, out_w) == (in_h, in_w):
    # Both align_corners modes are the identity at equal size (src == d exactly).
    return x
  dt = jnp.promote_types(x.dtype, jnp.float32)

  def along_h(y):
    if out_h == in_h:
      return y
    a_h = jnp.asarray(interpolation_matrix(in_h, out_h, bool(align_corners)), dtype=dt)
    return jnp.einsum("oh,bhwc->bowc", a_h, y, precision=precision)

  def along_w(y):
    if out_w == in_w:
      return y
    a_w = jnp.asarray(interpolation_matrix(in_w, out_w, bool(align_corners)), dtype=dt)
    return jnp.einsum("pw,bhwc->bhpc", a_w, y, precision=precision)

  # Dense-matmul cost of each order (per batch item and channel); the cheaper order shrinks first.
  cost_h_first = out_h * in_h * in_w + out_h * out_w * in_w
  cost_w_first = in_h * out_w * in_w + out_h * in_h * out_w
  y = x.astype(dt)
  y = along_w(along_h(y)) if cost_h_first <= cost_w_first else along_h(along_w(y))
  return y.astype(x.dtype)
