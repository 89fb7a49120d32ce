"""Random-walk refinement: dense affinity, transition matrix, CAM input, walk, upsample + argmax.

Oracles: numpy float64 loops from METHOD.md 11.10 (pairs found by scanning all pixel pairs, see
`refine_oracles`), and where torch is installed the reference's own operations (sparse -> dense,
avg_pool2d, interpolate) re-stated in torch.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import refine_oracles as ro
from ppc_jax.ops.resize import resize_bilinear
from ppc_jax.refine import affinity_labels as al
from ppc_jax.refine import random_walk as rw


def np_dense(f, radius):
  """[N, N] float64: unit diagonal, exp(-mean |f_p - f_q|) on every reference pair, else 0."""
  h, w, _ = f.shape
  f = f.astype(np.float64)
  a = np.eye(h * w)
  for (y, x), (y2, x2) in ro.np_pairs(h, w, radius):
    v = np.exp(-np.mean(np.abs(f[y, x] - f[y2, x2])))
    a[y * w + x, y2 * w + x2] = a[y2 * w + x2, y * w + x] = v
  return a


def np_transition(a, beta, logt):
  p = a ** beta
  p = p / p.sum(axis=0, keepdims=True)
  return np.linalg.matrix_power(p, 2 ** logt)


def np_rw_input(cam_fg, bg_mode, bg_value=0.27, alpha=6):
  cam_fg = cam_fg.astype(np.float64)
  if bg_mode == "constant":
    bg = np.full(cam_fg.shape[:2] + (1,), bg_value)
  else:
    bg = (1 - cam_fg.max(axis=-1, keepdims=True)) ** alpha
  return ro.np_block_mean(np.concatenate([bg, cam_fg], axis=-1), 8)


def np_mask_scores(f, cam_fg, bg_mode, radius=5, beta=8, logt=6):
  """Upsampled, cropped [H, W, C] scores of the whole walk, float64."""
  hh, ww, _ = cam_fg.shape
  h, w, _ = f.shape
  t = np_transition(np_dense(f, radius), beta, logt)
  cam = np_rw_input(cam_fg, bg_mode)
  out = (t.T @ cam.reshape(h * w, -1)).reshape(h, w, -1)
  return ro.np_resize(out, (8 * h, 8 * w), align_corners=False)[:hh, :ww]


def _inputs(hh, ww, n_fg=3, seed=0):
  """A CAM with a few blobs, and features that are smooth per blob (so affinities vary)."""
  rng = np.random.default_rng(seed)
  h, w = -(-hh // 8), -(-ww // 8)
  yy, xx = np.mgrid[0:hh, 0:ww]
  cam = np.zeros((hh, ww, n_fg), np.float32)
  for c in range(n_fg):
    cy, cx = rng.uniform(0, hh), rng.uniform(0, ww)
    cam[..., c] = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (hh / 5) ** 2))
  f = (rng.random((h, w, 16)) * 0.6).astype(np.float32)
  f[: h // 2] += 0.8           # two regions of unlike features
  return cam, f


# ----------------------------------------------------------------------------------------------
# Dense affinity and transition matrix
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("h,w", [(12, 13), (9, 10), (4, 4)])
def test_dense_affinity_equals_pair_scan(h, w):
  f = np.random.default_rng(h).random((h, w, 5)).astype(np.float32)
  got = np.asarray(rw.dense_affinity(jnp.asarray(f), 5))
  want = np_dense(f, 5)
  assert got.shape == (h * w, h * w) and got.dtype == np.float32
  np.testing.assert_array_equal(got, got.T)
  np.testing.assert_array_equal(np.diag(got), 1.0)
  np.testing.assert_array_equal(got == 0, want == 0)   # same sparsity pattern
  # float32 abs / 5-term mean / exp against float64: a few ulp.
  np.testing.assert_allclose(got, want, rtol=2e-6, atol=0)
  # Nothing at or beyond the (shrunk) radius.
  r = al.effective_radius(5, h, w)
  ys, xs = np.divmod(np.arange(h * w), w)
  d2 = (ys[:, None] - ys[None]) ** 2 + (xs[:, None] - xs[None]) ** 2
  assert not np.any(got[d2 >= r * r])
  if h == w == 4:
    np.testing.assert_array_equal(got, np.eye(16))    # radius 1: no pairs


def test_dense_affinity_vmaps():
  f = jnp.asarray(np.random.default_rng(7).random((2, 9, 11, 4)), jnp.float32)
  got = jax.vmap(lambda x: rw.dense_affinity(x, 5))(f)
  for i in range(2):
    np.testing.assert_array_equal(got[i], rw.dense_affinity(f[i], 5))


@pytest.mark.parametrize("logt", [0, 1, 3, 6])
def test_transition_matrix_equals_matrix_power(logt):
  f = np.random.default_rng(8).random((6, 7, 5)).astype(np.float32)
  a = np.asarray(rw.dense_affinity(jnp.asarray(f), 5))
  got = np.asarray(rw.transition_matrix(jnp.asarray(a), beta=8, logt=logt))
  want = np_transition(a.astype(np.float64), 8, logt)
  # A product of column-stochastic matrices is column-stochastic.
  np.testing.assert_allclose(got.sum(axis=0), 1.0, atol=1e-5)   # fp32 sums of 42 terms
  # Up to 6 fp32 squarings of a 42x42 matrix (HIGHEST precision) vs float64.
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_transition_matrix_first_factor_columns():
  a = np.asarray(rw.dense_affinity(jnp.asarray(
      np.random.default_rng(9).random((10, 11, 4)), jnp.float32), 5))
  t = np.asarray(rw.transition_matrix(jnp.asarray(a), beta=8, logt=0))
  p = a.astype(np.float64) ** 8
  # One fp32 power and division per entry.
  np.testing.assert_allclose(t, p / p.sum(axis=0), rtol=1e-5, atol=0)
  np.testing.assert_allclose(t.sum(axis=0), 1.0, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# CAM input, walk, upsampling
# ----------------------------------------------------------------------------------------------
def test_pad_to_multiple():
  x = jnp.ones((2, 13, 17, 3))
  y = rw.pad_to_multiple(x)
  assert y.shape == (2, 16, 24, 3)
  assert float(y.sum()) == 2 * 13 * 17 * 3
  assert rw.pad_to_multiple(jnp.ones((16, 8, 1))).shape == (16, 8, 1)


@pytest.mark.parametrize("bg_mode", ["constant", "power"])
def test_rw_input_cam(bg_mode):
  cam, _ = _inputs(21, 19)
  got = np.asarray(rw.rw_input_cam(jnp.asarray(cam), bg_mode=bg_mode))
  want = np_rw_input(cam, bg_mode)
  assert got.shape == (3, 3, 4)
  # float32 64-pixel block means (and (1 - max)^6) vs float64.
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  if bg_mode == "constant":
    # bg set before padding: the corner block holds 5 x 3 real pixels of 64.
    np.testing.assert_allclose(got[2, 2, 0], 0.27 * 15 / 64, rtol=1e-6)
    np.testing.assert_allclose(got[0, 0, 0], 0.27, rtol=1e-6)


def test_rw_input_cam_rejects_unknown_mode():
  with pytest.raises(ValueError, match="bg_mode"):
    rw.rw_input_cam(jnp.zeros((8, 8, 2)), bg_mode="mean")


def test_random_walk_and_mask_steps():
  rng = np.random.default_rng(10)
  h, w, c = 5, 6, 4
  cam = rng.random((h, w, c)).astype(np.float32)
  t = rng.random((h * w, h * w)).astype(np.float32)
  got = np.asarray(rw.random_walk(jnp.asarray(cam), jnp.asarray(t)))
  want = (t.T.astype(np.float64) @ cam.reshape(h * w, c).astype(np.float64)).reshape(h, w, c)
  # fp32 30-term dot products.
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # Upsample to the padded 40 x 48, crop to a 37 x 41 image, argmax.
  labels = np.asarray(rw.refine_to_mask(jnp.asarray(got), (37, 41)))
  up = ro.np_resize(want, (40, 48), align_corners=False)[:37, :41]
  assert labels.shape == (37, 41) and labels.dtype == np.int32
  top2 = np.sort(up, axis=-1)[..., -2:]
  sure = top2[..., 1] - top2[..., 0] > 1e-4     # skip near-ties (fp32 vs fp64)
  assert sure.mean() > 0.95
  np.testing.assert_array_equal(labels[sure], np.argmax(up, axis=-1)[sure])


def test_refine_to_mask_checks_size():
  with pytest.raises(ValueError, match="does not belong"):
    rw.refine_to_mask(jnp.zeros((5, 6, 3)), (41, 41))


# ----------------------------------------------------------------------------------------------
# The whole walk
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hw,bg_mode", [((90, 100), "constant"), ((70, 61), "power")])
def test_random_walk_mask_equals_numpy(hw, bg_mode):
  cam, f = _inputs(*hw, seed=hw[0])
  want = np_mask_scores(f, cam, bg_mode)
  # The stepwise scores, then the one-call mask.
  cam_p = rw.rw_input_cam(jnp.asarray(cam), bg_mode=bg_mode)
  trans = rw.transition_matrix(rw.dense_affinity(jnp.asarray(f), 5))
  out = rw.random_walk(cam_p, trans)
  h, w = f.shape[:2]
  up = np.asarray(resize_bilinear(out[None], (8 * h, 8 * w), align_corners=False)[0])
  up = up[:hw[0], :hw[1]]
  # T^64 by 6 fp32 squarings (N = 156 / 72) vs float64 matrix_power.
  np.testing.assert_allclose(up, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())
  labels = np.asarray(jax.jit(lambda f, c: rw.random_walk_mask(f, c, bg_mode=bg_mode))(
      jnp.asarray(f), jnp.asarray(cam)))
  top2 = np.sort(want, axis=-1)[..., -2:]
  sure = top2[..., 1] - top2[..., 0] > 1e-3 * np.abs(want).max()
  assert sure.mean() > 0.95
  np.testing.assert_array_equal(labels[sure], np.argmax(want, axis=-1)[sure])
  assert len(np.unique(labels)) > 1


def test_random_walk_mask_checks_feature_size():
  with pytest.raises(ValueError, match="zero-padded"):
    rw.random_walk_mask(jnp.zeros((4, 4, 3)), jnp.zeros((40, 40, 2)))


def test_torch_oracle_walk():
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  hh, ww = 90, 100
  cam, f = _inputs(hh, ww, seed=3)
  h, w = f.shape[:2]
  # Reference: sparse (from, to) / identity / (to, from) entries -> dense; pow; / column sums;
  # squarings; bg 0.27 then zero pad; avg_pool2d 8; cam_vec @ T; Upsample bilinear; crop.
  ind_from, ind_to = al.pair_indices(h, w, 5)
  aff = rw.dense_affinity(jnp.asarray(f), 5)  # values re-checked against numpy above
  from_exp = np.broadcast_to(ind_from, ind_to.shape).reshape(-1).astype(np.int64)
  to = ind_to.reshape(-1).astype(np.int64)
  vals = torch.from_numpy(np.asarray(aff)[from_exp, to].copy())
  n = h * w
  idx = torch.cat([torch.stack([torch.from_numpy(from_exp), torch.from_numpy(to)]),
                   torch.stack([torch.arange(n), torch.arange(n)]),
                   torch.stack([torch.from_numpy(to), torch.from_numpy(from_exp)])], dim=1)
  aff_t = torch.sparse_coo_tensor(idx, torch.cat([vals, torch.ones(n), vals]), (n, n),
                                  check_invariants=True).to_dense()
  np.testing.assert_array_equal(aff_t.numpy(), np.asarray(aff))
  a = torch.pow(aff_t, 8)
  t = a / torch.sum(a, dim=0, keepdim=True)
  for _ in range(6):
    t = torch.matmul(t, t)
  full = np.zeros((cam.shape[-1] + 1, hh, ww), np.float32)
  full[1:] = cam.transpose(2, 0, 1)
  full[0] = 0.27
  full = np.pad(full, ((0, 0), (0, 8 * h - hh), (0, 8 * w - ww)))
  pooled = F.avg_pool2d(torch.from_numpy(full), 8, 8)
  out = torch.matmul(pooled.reshape(full.shape[0], -1), t).view(1, -1, h, w)
  up_t = F.interpolate(out, (8 * h, 8 * w), mode="bilinear", align_corners=False)[0]
  up_t = up_t.numpy().transpose(1, 2, 0)[:hh, :ww]

  cam_p = rw.rw_input_cam(jnp.asarray(cam))
  out_j = rw.random_walk(cam_p, rw.transition_matrix(aff))
  up = np.asarray(resize_bilinear(out_j[None], (8 * h, 8 * w), align_corners=False)[0])
  # Both fp32; the 6 squarings and the pooling sum in different orders.
  np.testing.assert_allclose(up[:hh, :ww], up_t, rtol=1e-4, atol=1e-6 * np.abs(up_t).max())
  labels = np.asarray(rw.random_walk_mask(jnp.asarray(f), jnp.asarray(cam)))
  top2 = np.sort(up_t, axis=-1)[..., -2:]
  sure = top2[..., 1] - top2[..., 0] > 1e-3 * np.abs(up_t).max()
  np.testing.assert_array_equal(labels[sure], np.argmax(up_t, axis=-1)[sure])
