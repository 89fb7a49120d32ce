"""resize_bilinear == torch F.interpolate(mode='bilinear'), checked two independent ways."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppc_jax.ops.resize import interpolation_matrix, resize_bilinear

# (in_hw, out_hw): up, down, odd, mixed, 1-pixel edge cases, the project's view-2 size.
SIZES = [
    ((7, 9), (13, 5)),
    ((5, 5), (17, 17)),
    ((16, 16), (7, 7)),
    ((13, 11), (13, 30)),
    ((1, 6), (4, 1)),
    ((6, 1), (1, 3)),
    ((56, 56), (448, 448)),
    ((448, 448), (128, 128)),
]


def numpy_bilinear(x, out_hw, align_corners):
  """Per-output-pixel 4-neighbour formula straight from torch's definition (no matrices).

  x: [B, H, W, C] float64 -> [B, oh, ow, C].
  """
  _, in_h, in_w, _ = x.shape
  out_h, out_w = out_hw

  def src(d, n_in, n_out):
    if align_corners:
      return d * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    return max((d + 0.5) * n_in / n_out - 0.5, 0.0)

  y = np.zeros((x.shape[0], out_h, out_w, x.shape[3]))
  for i in range(out_h):
    sy = src(i, in_h, out_h)
    y0 = int(np.floor(sy))
    y1 = min(y0 + 1, in_h - 1)
    ly = sy - y0
    for j in range(out_w):
      sx = src(j, in_w, out_w)
      x0 = int(np.floor(sx))
      x1 = min(x0 + 1, in_w - 1)
      lx = sx - x0
      y[:, i, j] = ((1 - ly) * (1 - lx) * x[:, y0, x0] + (1 - ly) * lx * x[:, y0, x1]
                    + ly * (1 - lx) * x[:, y1, x0] + ly * lx * x[:, y1, x1])
  return y


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("in_hw,out_hw", SIZES[:6])
def test_matches_numpy_formula(in_hw, out_hw, align_corners):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, *in_hw, 3))
  want = numpy_bilinear(x, out_hw, align_corners)
  got = resize_bilinear(jnp.asarray(x, jnp.float32), out_hw, align_corners=align_corners)
  assert got.shape == (2, *out_hw, 3)
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("in_hw,out_hw", SIZES)
def test_matches_torch_interpolate_and_its_gradient(in_hw, out_hw, align_corners):
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, *in_hw, 3)).astype(np.float32)
  w = rng.normal(size=(2, *out_hw, 3)).astype(np.float32)  # cotangent for the gradient check

  xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
  yt = torch.nn.functional.interpolate(xt, size=out_hw, mode="bilinear",
                                       align_corners=align_corners)
  (yt * torch.tensor(w.transpose(0, 3, 1, 2))).sum().backward()

  fn = jax.jit(lambda v: resize_bilinear(v, out_hw, align_corners=align_corners))
  y = fn(jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(y), yt.detach().numpy().transpose(0, 2, 3, 1),
                             atol=2e-6, rtol=1e-6)
  g = jax.grad(lambda v: jnp.sum(fn(v) * w))(jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(g), xt.grad.numpy().transpose(0, 2, 3, 1),
                             atol=1e-4, rtol=1e-5)


def test_identity_and_matrix_rows():
  x = jnp.arange(2 * 5 * 7 * 3, dtype=jnp.float32).reshape(2, 5, 7, 3)
  for ac in (True, False):
    assert resize_bilinear(x, (5, 7), align_corners=ac) is x
    m = interpolation_matrix(9, 4, ac)
    np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-6)
    assert np.count_nonzero(m, axis=1).max() <= 2
  # align_corners=True keeps the corners exactly.
  y = resize_bilinear(x, (11, 3), align_corners=True)
  np.testing.assert_array_equal(np.asarray(y)[:, [0, -1]][:, :, [0, -1]],
                                np.asarray(x)[:, [0, -1]][:, :, [0, -1]])


def test_bfloat16_is_interpolated_in_float32():
  x = jnp.asarray(np.random.default_rng(2).normal(size=(1, 6, 7, 2)), jnp.bfloat16)
  y = resize_bilinear(x, (11, 4), align_corners=True)
  assert y.dtype == jnp.bfloat16
  want = resize_bilinear(x.astype(jnp.float32), (11, 4), align_corners=True)
  np.testing.assert_array_equal(np.asarray(y), np.asarray(want.astype(jnp.bfloat16)))


def test_rejects_non_nhwc():
  with pytest.raises(ValueError, match="NHWC"):
    resize_bilinear(jnp.zeros((4, 4, 3)), (2, 2), align_corners=True)
