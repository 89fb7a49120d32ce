"""SEAM losses against independent numpy re-derivations of METHOD.md 2.4 / 10 (loops, float64).

Also: torch's multilabel_soft_margin_loss as an oracle, and gradient-flow checks of every
stop-gradient / masking rule (cls never touches channel 0, rvmin only fg channels of cam_rv, ER only
the cams, ECR only the cam_rv maps).
"""

import jax
import jax.numpy as jnp
import numpy as np
from oracles import np_resize_ac
import pytest
import torch

from ppc_jax.seeds.losses import seam

EPS = 1e-5


# ----------------------------------------------------------------------------- numpy oracles


def np_max_norm(p):
  p = np.maximum(np.asarray(p, np.float64), 0.0)
  out = np.zeros_like(p)
  for b in range(p.shape[0]):
    for c in range(p.shape[-1]):
      ch = p[b, :, :, c]
      lo, hi = ch.min(), ch.max()
      out[b, :, :, c] = np.maximum(ch - lo - EPS, 0.0) / (hi - lo + EPS)
  return out


def np_max_onehot(x):
  out = np.array(x, np.float64)
  b, h, w, _ = out.shape
  for n in range(b):
    for i in range(h):
      for j in range(w):
        fg = out[n, i, j, 1:]
        m = fg.max()
        for c in range(fg.shape[0]):
          if fg[c] != m:
            out[n, i, j, c + 1] = 0.0
  return out


def np_msml(logits, labels):
  logits = np.asarray(logits, np.float64)
  total = 0.0
  for n in range(logits.shape[0]):
    for c in range(logits.shape[1]):
      s, y = logits[n, c], labels[n, c]
      log_sig = -np.log1p(np.exp(-s))
      log_sig_neg = -np.log1p(np.exp(s))
      total += -(y * log_sig + (1 - y) * log_sig_neg)
  return total / logits.size


def np_cls(cam, labels):
  scores = np.asarray(cam, np.float64).mean(axis=(1, 2))
  return np_msml(scores[:, 1:], labels)


def np_rvmin(cam_rv, labels):
  b, h, w, _ = cam_rv.shape
  k = h * w // 4
  total = 0.0
  for n in range(b):
    vals = []
    for i in range(h):
      for j in range(w):
        vals.append(max(float(cam_rv[n, i, j, c]) * labels[n, c - 1] for c in range(1, 21)))
    vals.sort()
    total += sum(max(v, 0.0) for v in vals[:k])
  return total / (k * b)


def np_er_ecr(cam1, cam_rv1, cam2, cam_rv2, labels, frac=0.2):
  b, h2, w2, c = cam2.shape
  lab = np.concatenate([np.ones((b, 1)), labels], axis=1)[:, None, None, :]
  cam1n = np_resize_ac(np_max_norm(cam1), (h2, w2)) * lab
  rv1n = np_resize_ac(np_max_norm(cam_rv1), (h2, w2)) * lab
  cam2n = np_max_norm(cam2) * lab
  rv2n = np_max_norm(cam_rv2) * lab
  er = np.abs(cam1n[..., 1:] - cam2n[..., 1:]).mean()
  for x in (cam1n, cam2n):  # channel 0 overwrite only on the cam maps (METHOD 10.2)
    x[..., 0] = 1.0 - x[..., 1:].max(axis=-1)
  k = int(21 * h2 * w2 * frac)
  ecr = 0.0
  for target, pred in ((np_max_onehot(cam2n), rv1n), (np_max_onehot(cam1n), rv2n)):
    err = np.abs(target - pred)
    part = 0.0
    for n in range(b):
      vals = np.sort(err[n].ravel())[::-1][:k]
      part += vals.sum()
    ecr += part / (b * k)
  return er, ecr


# ----------------------------------------------------------------------------- inputs


def _labels(b=2, seed=0):
  r = np.random.RandomState(seed)
  lab = np.zeros((b, 20), np.float32)
  for n in range(b):
    lab[n, r.choice(20, size=3, replace=False)] = 1.0
  return lab


def _maps(shape, seed):
  return np.random.RandomState(seed).randn(*shape).astype(np.float32)


def _grad_abs_sum(fn, x):
  return float(jnp.sum(jnp.abs(jax.grad(fn)(x))))


# ----------------------------------------------------------------------------- tests


def test_numpy_resize_oracle_matches_torch():
  x = _maps((2, 24, 24, 5), 0)
  want = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(16, 16),
                                         mode="bilinear", align_corners=True)
  np.testing.assert_allclose(np_resize_ac(x, (16, 16)), want.permute(0, 2, 3, 1).numpy(),
                             atol=1e-5)


def test_multilabel_soft_margin_numpy_and_torch():
  logits = _maps((3, 20), 1) * 3
  labels = _labels(3, 1)
  got = float(seam.multilabel_soft_margin(jnp.asarray(logits), jnp.asarray(labels)))
  np.testing.assert_allclose(got, np_msml(logits, labels), rtol=1e-6)
  # The reference passes [N, 20, 1, 1]; torch's class dim is then the trailing 1 (same value).
  want4d = torch.nn.functional.multilabel_soft_margin_loss(
      torch.from_numpy(logits)[:, :, None, None], torch.from_numpy(labels)[:, :, None, None])
  want2d = torch.nn.functional.multilabel_soft_margin_loss(torch.from_numpy(logits),
                                                           torch.from_numpy(labels))
  np.testing.assert_allclose(got, want4d.item(), rtol=1e-6)
  np.testing.assert_allclose(got, want2d.item(), rtol=1e-6)


def test_classification_loss_and_background_unsupervised():
  cam = _maps((2, 16, 16, 21), 2)
  labels = _labels()
  got = float(seam.classification_loss(jnp.asarray(cam), jnp.asarray(labels)))
  np.testing.assert_allclose(got, np_cls(cam, labels), rtol=1e-5)
  g = jax.grad(seam.classification_loss)(jnp.asarray(cam), jnp.asarray(labels))
  assert float(jnp.max(jnp.abs(g[..., 0]))) == 0.0
  assert float(jnp.min(jnp.abs(g[..., 1:]))) > 0.0  # GAP spreads to every fg pixel


def test_rvmin_label_mask_semantics():
  # Mostly negative maps: the label-masked absent channels (exact 0) win the per-pixel max, which
  # is what `(cam_rv * label)[:, 1:]` does (absent classes are zeroed, not dropped).
  cam_rv = _maps((2, 16, 16, 21), 3) - 0.5
  labels = _labels()
  got = float(seam.adaptive_min_pooling_loss(jnp.asarray(cam_rv), jnp.asarray(labels)))
  want = np_rvmin(cam_rv, labels)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # With every class present nothing is zeroed and the result differs: the mask matters here.
  all_on = np.ones_like(labels)
  got_all = float(seam.adaptive_min_pooling_loss(jnp.asarray(cam_rv), jnp.asarray(all_on)))
  np.testing.assert_allclose(got_all, np_rvmin(cam_rv, all_on), rtol=1e-5)
  assert abs(got_all - got) > 1e-3
  # Gradient: never channel 0, never absent classes.
  g = jax.grad(seam.adaptive_min_pooling_loss)(jnp.asarray(cam_rv + 1.0), jnp.asarray(labels))
  assert float(jnp.max(jnp.abs(g[..., 0]))) == 0.0
  absent = np.concatenate([[False], labels[0] == 0])
  assert float(jnp.max(jnp.abs(g[0][..., absent]))) == 0.0
  assert float(jnp.sum(jnp.abs(g))) > 0.0


def test_rvmin_rejects_tiny_maps():
  with pytest.raises(ValueError):
    seam.adaptive_min_pooling_loss(jnp.zeros((1, 1, 3, 21)), jnp.zeros((1, 20)))


def test_max_norm_matches_loops():
  p = _maps((2, 9, 7, 21), 4)
  p[0, ..., 3] = -1.0  # all negative -> relu -> flat zero map -> 0
  p[1, ..., 5] = 0.7   # flat positive map -> 0
  got = np.asarray(seam.max_norm(jnp.asarray(p)))
  want = np_max_norm(p)
  np.testing.assert_allclose(got, want, atol=1e-6)
  assert np.all(got[0, ..., 3] == 0) and np.all(got[1, ..., 5] == 0)


def test_max_onehot_keeps_channel0_and_ties():
  x = np.abs(_maps((2, 5, 6, 21), 5))
  x[0, 1, 2, 4] = x[0, 1, 2, 9] = 10.0  # a tie at the fg max: both kept
  x[1, 0, 0, 0] = 50.0                  # channel 0 is never touched, even above the fg max
  got = np.asarray(seam.max_onehot(jnp.asarray(x)))
  np.testing.assert_array_equal(got, np_max_onehot(x).astype(np.float32))
  assert got[0, 1, 2, 4] == got[0, 1, 2, 9] == 10.0
  np.testing.assert_array_equal(got[..., 0], x[..., 0])


@pytest.mark.parametrize("frac", [0.2, 0.05])
def test_er_ecr_match_loops(frac):
  b = 2
  labels = _labels(b, 6)
  cam1 = _maps((b, 24, 24, 21), 7)
  cam_rv1 = _maps((b, 24, 24, 21), 8)
  cam2 = _maps((b, 16, 16, 21), 9)
  cam_rv2 = _maps((b, 16, 16, 21), 10)
  # Ties in the fg rows of the ECR targets: two present classes with identical view-2 maps, and
  # identical view-1 maps (after the same max_norm + resize they tie exactly as well).
  present = np.nonzero(labels[0])[0] + 1
  cam2[0, ..., present[1]] = cam2[0, ..., present[0]]
  cam1[0, ..., present[1]] = cam1[0, ..., present[0]]
  args = [jnp.asarray(a) for a in (cam1, cam_rv1, cam2, cam_rv2, labels)]
  er, ecr = seam.er_ecr_losses(*args, topk_frac=frac)
  want_er, want_ecr = np_er_ecr(cam1, cam_rv1, cam2, cam_rv2, labels, frac)
  np.testing.assert_allclose(float(er), want_er, rtol=1e-5)
  np.testing.assert_allclose(float(ecr), want_ecr, rtol=1e-5)


def test_er_ecr_gradient_flow():
  b = 2
  labels = jnp.asarray(_labels(b, 11))
  maps = {"cam1": _maps((b, 24, 24, 21), 12), "cam_rv1": _maps((b, 24, 24, 21), 13),
          "cam2": _maps((b, 16, 16, 21), 14), "cam_rv2": _maps((b, 16, 16, 21), 15)}
  maps = {k: jnp.asarray(v) for k, v in maps.items()}

  def both(m):
    return seam.er_ecr_losses(m["cam1"], m["cam_rv1"], m["cam2"], m["cam_rv2"], labels)

  g_er, g_ecr = jax.jit(jax.jacrev(both))(maps)
  norms = lambda g: {k: float(jnp.sum(jnp.abs(v))) for k, v in g.items()}
  er_n, ecr_n = norms(g_er), norms(g_ecr)
  # ER: both cams (no detach), not the PCM maps.
  assert er_n["cam1"] > 0 and er_n["cam2"] > 0
  assert er_n["cam_rv1"] == 0 and er_n["cam_rv2"] == 0
  # ECR: the targets are stop-gradient, so only the PCM maps get gradient.
  assert ecr_n["cam_rv1"] > 0 and ecr_n["cam_rv2"] > 0
  assert ecr_n["cam1"] == 0 and ecr_n["cam2"] == 0


def test_topk_selections_match_a_full_sort_bit_for_bit():
  """The ECR top-k mean and the min-pooling loss take `lax.top_k`, not a sort, and stay the sort
  version's function bit for bit: the same values summed in the same (ascending) order, and the
  gradient on the same entries when values tie across the k-th place (a stable sort keeps the
  highest indices of the top k, the lowest of the bottom k). Other bits would make every run,
  the demo's included, end on other numbers."""
  rng = np.random.RandomState(16)
  err = rng.rand(2, 24, 24, 21).astype(np.float32)
  # A tied plateau across the k-th place: 300 entries of each image at one value, at spread-out
  # positions, with more entries above it than k and fewer than k + 300.
  flat_np = err.reshape(2, -1)
  plateau = rng.choice(flat_np.shape[1], 300, replace=False)
  flat_np[:, plateau] = np.float32(0.9)
  err = jnp.asarray(flat_np.reshape(err.shape))
  above = int(np.sum(flat_np[0] > 0.9))
  # k such that the top k ends inside the plateau in image 0. Checked that each way of breaking
  # the equivalence fails here: top_k's values summed as they come (descending: the last bit of
  # the value differs), top_k on the unreversed input (the gradient goes to other tied entries),
  # and the other tie choice in the min-pooling loss below.
  k = above + 150

  def by_sort(e):
    f = e.reshape(2, -1)
    return jnp.sum(jnp.sort(f, axis=-1)[:, f.shape[1] - k:]) / (2 * k)

  topk_mean = seam._topk_mean  # pylint: disable=protected-access
  assert float(topk_mean(err, k)) == float(by_sort(err))
  grad = np.asarray(jax.grad(topk_mean)(err, k))
  np.testing.assert_array_equal(grad, np.asarray(jax.grad(by_sort)(err)))
  # ... and that gradient is 1 / (B k) on k entries per image: the plateau's highest indices.
  g0 = grad.reshape(2, -1)[0]
  assert np.count_nonzero(g0) == k
  chosen = np.sort(plateau)[-150:]
  assert np.all(g0[chosen] == np.float32(1.0 / (2 * k)))

  cam_rv = rng.rand(2, 8, 8, 21).astype(np.float32) + 0.1  # positive: relu passes gradient
  labels = jnp.asarray(_labels())
  # 20 pixels per image whose fg maxima tie at 0.05, below every other pixel's (>= 0.1): the
  # k = 16 smallest all lie in the plateau, so the choice among ties decides the gradient.
  for n in range(2):
    rows, cols = np.unravel_index(rng.choice(64, 20, replace=False), (8, 8))
    cam_rv[n, rows, cols, 1:] = np.float32(0.05)
  cam_rv = jnp.asarray(cam_rv)

  def rvmin_by_sort(c):
    masked = c[..., 1:] * labels[:, None, None, :]
    fg_max = jnp.max(masked, axis=-1).reshape(2, -1)
    kk = 64 // 4
    return jnp.sum(jax.nn.relu(jnp.sort(fg_max, axis=-1)[:, :kk])) / (kk * 2)

  assert float(seam.adaptive_min_pooling_loss(cam_rv, labels)) == float(rvmin_by_sort(cam_rv))
  np.testing.assert_array_equal(
      np.asarray(jax.grad(seam.adaptive_min_pooling_loss)(cam_rv, labels)),
      np.asarray(jax.grad(rvmin_by_sort)(cam_rv)))
