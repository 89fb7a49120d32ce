"""EPS and EPS+PPC losses (ppc_jax.seeds.losses.eps, the 'eps' / 'eps_ppc' objectives, max_onehot's esp
bug, the frozen poly schedule) against independent re-derivations.

The oracles work in the reference's own channel order (background LAST, as wseg@esp and
halbielee/EPS), on random maps; ppc_jax receives the same maps with the background rotated to
channel 0. So every test also checks that the channel convention is handled.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from oracles import np_resize_ac
from ppc_jax.seeds import cam_postprocess
from ppc_jax import config_lib
from ppc_jax import optim
from ppc_jax.seeds.losses import eps
from ppc_jax.seeds.losses import objective as objective_lib
from ppc_jax.seeds.losses import seam

# Tolerances: the oracles run in float64 with loops; ppc_jax in float32 with vectorised sums over
# at most a few thousand terms of magnitude <= 1, so relative errors stay below ~1e-6. 1e-5
# leaves a margin for XLA's reduction order on any thread count.
TOL = 1e-5


def to_bg_first(x):
  """[..., C] background-last -> background-first (ppc_jax's order)."""
  return np.concatenate([x[..., -1:], x[..., :-1]], axis=-1)


def to_bg_last(x):
  return np.concatenate([x[..., 1:], x[..., :1]], axis=-1)


# ------------------------------------------------------------------------------------------------
# The legacy nearest resize.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size_in,size_out", [(448, 56), (128, 16), (37, 5), (5, 37), (50, 50),
                                              (100, 33), (33, 7)])
def test_legacy_nearest_matches_torch(size_in, size_out):
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(0).random((2, size_in, size_in + 3)).astype(np.float32)
  out_w = size_out + 1
  want = torch.nn.functional.interpolate(torch.from_numpy(x)[:, None], size=(size_out, out_w))
  got = eps.legacy_nearest_resize(jnp.asarray(x), (size_out, out_w))
  np.testing.assert_array_equal(np.asarray(got), want[:, 0].numpy())


def test_legacy_nearest_takes_the_top_left_of_each_block():
  idx = eps.legacy_nearest_indices(448, 56)
  np.testing.assert_array_equal(idx, 8 * np.arange(56))


# ------------------------------------------------------------------------------------------------
# The saliency loss.
# ------------------------------------------------------------------------------------------------


def np_eps_loss(cam_bg_last, sal, labels, tau, lam):
  """get_eps_loss in numpy loops, background LAST (float64)."""
  b, h, w, c = cam_bg_last.shape
  big_h, big_w = sal.shape[1:]
  s = np.zeros((b, h, w))
  for i in range(h):
    for j in range(w):
      s[:, i, j] = sal[:, min(int(np.floor(np.float32(i) * np.float32(big_h / h))), big_h - 1),
                       min(int(np.floor(np.float32(j) * np.float32(big_w / w))), big_w - 1)]
  x = cam_bg_last.astype(np.float64)
  p = np.exp(x - x.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  total = 0.0
  for n in range(b):
    fg_map = np.zeros((h, w))
    bg_sum = p[n, :, :, c - 1].copy()
    for k in range(c - 1):
      r = np.round(p[n, :, :, k])
      overlap = (r * np.round(s[n])).sum() / (r + 1e-4).sum()
      if labels[n, k] > 0 and overlap > tau:
        fg_map += p[n, :, :, k]
      elif labels[n, k] > 0:
        bg_sum += p[n, :, :, k]
    pred = lam * fg_map + (1 - lam) * (1 - bg_sum)
    total += ((pred - s[n]) ** 2).sum()
  return total / (b * h * w)


def _eps_inputs(seed, b=3, h=7, w=6, c=21, scale=4.0, big=(56, 48)):
  rng = np.random.default_rng(seed)
  cam = (scale * rng.normal(size=(b, h, w, c))).astype(np.float32)
  sal = rng.random((b,) + big).astype(np.float32)
  sal[:, : big[0] // 2] = np.round(sal[:, : big[0] // 2])  # salient / non-salient halves
  labels = (rng.random((b, c - 1)) < 0.3).astype(np.float32)
  labels[:, 0] = 1.0  # every image has class 0 (EPS's channel 0, ppc_jax's channel 1)
  return cam, sal, labels


@pytest.mark.parametrize("seed,tau,lam", [(0, 0.4, 0.5), (1, 0.4, 0.9), (2, 0.05, 0.5)])
def test_saliency_loss_matches_loops(seed, tau, lam):
  cam, sal, labels = _eps_inputs(seed)
  want = np_eps_loss(cam, sal, labels, tau, lam)
  got, parts = eps.saliency_loss(jnp.asarray(to_bg_first(cam)), jnp.asarray(sal),
                                 jnp.asarray(labels), tau=tau, lam=lam)
  np.testing.assert_allclose(float(got), want, rtol=TOL, atol=TOL)
  # Not vacuous: both valid and invalid present classes occur over the seeds.
  present = labels > 0
  assert parts["valid"].shape == labels.shape
  if seed == 2:
    assert np.asarray(parts["valid"])[present].any()


def test_saliency_loss_overlap_denominator_adds_1e4_per_pixel():
  """METHOD 11.1: sum(round(p) + 1e-4), so an all-zero rounded map gives 0 / (1e-4 h w)."""
  b, h, w = 1, 4, 5
  cam = np.zeros((b, h, w, 3), np.float32)
  cam[..., 1] = 10.0  # class 0 (ppc_jax channel 1) rounds to 1 everywhere
  sal = np.ones((b, 8, 10), np.float32)
  _, parts = eps.saliency_loss(jnp.asarray(cam), jnp.asarray(sal), jnp.ones((1, 2)), tau=0.4)
  overlap = np.asarray(parts["overlap"])[0]
  np.testing.assert_allclose(overlap[0], h * w / (h * w + 1e-4 * h * w), rtol=1e-6)
  np.testing.assert_allclose(overlap[1], 0.0)


def test_saliency_loss_matches_torch_autograd():
  """Value and gradient against the reference's formula in torch (get_eps_loss, CPU)."""
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  cam, sal, labels = _eps_inputs(3, b=2, h=8, w=8, big=(64, 64))

  def reference(cam_t, sal_t, label_t, tau=0.4, alpha=0.5):
    b, c, h, w = cam_t.size()
    s = F.interpolate(sal_t, size=(h, w))
    label_map = label_t.view(b, 20, 1, 1).expand(size=(b, 20, h, w)).bool()
    label_map_fg = torch.zeros(size=(b, 21, h, w)).bool()
    label_map_bg = torch.zeros(size=(b, 21, h, w)).bool()
    label_map_bg[:, 20] = True
    p = F.softmax(cam_t, dim=1)
    iou = (torch.round(p[:, :-1].detach()) * torch.round(s)).view(b, 20, -1).sum(-1) / \
        (torch.round(p[:, :-1].detach()) + 1e-04).view(b, 20, -1).sum(-1)
    valid = (iou > tau).view(b, 20, 1, 1).expand(size=(b, 20, h, w))
    label_map_fg[:, :-1] = label_map & valid
    label_map_bg[:, :-1] = label_map & (~valid)
    fg_map = torch.zeros_like(p)
    bg_map = torch.zeros_like(p)
    fg_map[label_map_fg] = p[label_map_fg]
    bg_map[label_map_bg] = p[label_map_bg]
    fg_map = torch.sum(fg_map, dim=1, keepdim=True)
    bg_map = 1 - torch.sum(bg_map, dim=1, keepdim=True)
    return F.mse_loss(fg_map * alpha + bg_map * (1 - alpha), s)

  cam_t = torch.tensor(cam.transpose(0, 3, 1, 2), requires_grad=True)
  loss_t = reference(cam_t, torch.from_numpy(sal)[:, None], torch.from_numpy(labels))
  loss_t.backward()
  loss, grad = jax.value_and_grad(
      lambda c: eps.saliency_loss(c, jnp.asarray(sal), jnp.asarray(labels))[0])(
          jnp.asarray(to_bg_first(cam)))
  np.testing.assert_allclose(float(loss), float(loss_t.detach()), rtol=TOL)
  want_grad = to_bg_first(cam_t.grad.numpy().transpose(0, 2, 3, 1))
  np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-4, atol=1e-7)
  assert np.abs(want_grad).max() > 0


# ------------------------------------------------------------------------------------------------
# max_onehot's esp bug and ER / ECR on feature maps.
# ------------------------------------------------------------------------------------------------


def np_max_onehot_reference(x_bg_last):
  """The reference's max_onehot, literally, on background-LAST maps (channel 0 untouched)."""
  x = x_bg_last.copy()
  rest = x[..., 1:]
  top = rest.max(-1, keepdims=True)
  x[..., 1:] = np.where(rest != top, 0, rest)
  return x


def test_max_onehot_esp_bug_is_the_reference_on_background_last_maps():
  rng = np.random.default_rng(5)
  x = rng.random((2, 5, 4, 21)).astype(np.float32)
  x[0, 0, 0, 3] = x[0, 0, 0, 7] = 2.0  # a tie: both kept
  x[1, 1, 1, -1] = 3.0                 # background wins a pixel: every class there zeroed ...
  x[1, 1, 1, 0] = 0.9                  # ... but channel 0 (aeroplane) is never zeroed
  want = to_bg_first(np_max_onehot_reference(x))
  got = np.asarray(seam.max_onehot(jnp.asarray(to_bg_first(x)), esp_order_bug=True))
  np.testing.assert_array_equal(got, want)
  assert got[1, 1, 1, 1] == np.float32(0.9) and got[1, 1, 1, 0] == 3.0
  # Without the bug: background kept as is, the winner-take-all over the 20 classes.
  fixed = np.asarray(seam.max_onehot(jnp.asarray(to_bg_first(x))))
  classes = x[..., :20]
  want_fixed = np.concatenate(
      [x[..., 20:], np.where(classes == classes.max(-1, keepdims=True), classes, 0)], axis=-1)
  np.testing.assert_array_equal(fixed, want_fixed)


def np_max_norm(p):
  p = np.maximum(p, 0)
  lo = p.min(axis=(1, 2), keepdims=True)
  hi = p.max(axis=(1, 2), keepdims=True)
  return np.maximum(p - lo - 1e-5, 0) / (hi - lo + 1e-5)


def np_er_ecr_esp(cam1, cam2, cam_rv1, cam_rv2, labels):
  """wseg@esp get_er_loss on background-LAST NHWC maps (float64 loops via np_resize_ac)."""
  _, hs, ws, c = cam2.shape
  label = np.concatenate([labels, np.ones_like(labels[:, :1])], -1)[:, None, None, :]
  c1 = np_resize_ac(np_max_norm(cam1), (hs, ws)) * label
  c2 = np_max_norm(cam2) * label
  er = np.mean(np.abs(c1[..., :-1] - c2[..., :-1]))
  c1[..., -1] = 1 - c1[..., :-1].max(-1)
  c2[..., -1] = 1 - c2[..., :-1].max(-1)
  r1 = np_resize_ac(np_max_norm(cam_rv1), (hs, ws)) * label
  r2 = np_max_norm(cam_rv2) * label
  k = int(21 * hs * ws * 0.2)
  e1 = np.abs(np_max_onehot_reference(c2) - r1).reshape(len(c2), -1)
  e2 = np.abs(np_max_onehot_reference(c1) - r2).reshape(len(c1), -1)
  top = lambda e: np.mean(-np.sort(-e, axis=-1)[:, :k])  # noqa: E731
  return er, top(e1) + top(e2)


def test_er_ecr_on_feature_maps_with_the_esp_bug():
  rng = np.random.default_rng(6)
  b = 2
  cam1, cam_rv1 = rng.normal(size=(2, b, 9, 9, 21)).astype(np.float32)
  cam2, cam_rv2 = rng.normal(size=(2, b, 4, 4, 21)).astype(np.float32)
  cam_rv1, cam_rv2 = np.abs(cam_rv1), np.abs(cam_rv2)
  labels = (rng.random((b, 20)) < 0.4).astype(np.float32)
  labels[:, 0] = 1  # aeroplane present: the bug's channel matters
  want_er, want_ecr = np_er_ecr_esp(cam1.astype(np.float64), cam2.astype(np.float64),
                                    cam_rv1.astype(np.float64), cam_rv2.astype(np.float64),
                                    labels)
  er, ecr = seam.er_ecr_losses(*(jnp.asarray(to_bg_first(x)) for x in (cam1, cam_rv1, cam2,
                                                                        cam_rv2)),
                               jnp.asarray(labels), max_onehot_bug=True)
  np.testing.assert_allclose(float(er), want_er, rtol=TOL)
  np.testing.assert_allclose(float(ecr), want_ecr, rtol=TOL)
  _, ecr_fixed = seam.er_ecr_losses(*(jnp.asarray(to_bg_first(x)) for x in (cam1, cam_rv1, cam2,
                                                                            cam_rv2)),
                                    jnp.asarray(labels))
  assert abs(float(ecr_fixed) - want_ecr) > 1e-4  # the switch changes the loss


# ------------------------------------------------------------------------------------------------
# The objectives.
# ------------------------------------------------------------------------------------------------


def _np_mlsm(scores, labels):
  s = scores.astype(np.float64)
  return np.mean(-(labels * -np.logaddexp(0, -s) + (1 - labels) * -np.logaddexp(0, s)))


def _np_rvmin(cam_rv_bg_last, labels):
  b, h, w, _ = cam_rv_bg_last.shape
  k = h * w // 4
  m = (cam_rv_bg_last[..., :-1] * labels[:, None, None, :]).max(-1).reshape(b, -1)
  return np.maximum(np.sort(m, axis=-1)[:, :k], 0).sum() / (k * b)


def _outputs(rng, b, h, w, proj=None):
  cam = (3 * rng.normal(size=(b, h, w, 21))).astype(np.float32)
  out = dict(cam_down=cam, cam_rv_down=np.abs(rng.normal(size=(b, h, w, 21))).astype(np.float32))
  if proj:
    out["proj"] = np.abs(rng.normal(size=(b, h, w, proj))).astype(np.float32)
  return out


def _jax_out(out, size):
  """ppc_jax's model output dict (background first) from background-last maps."""
  res = {k: jnp.asarray(to_bg_first(v) if k != "proj" else v) for k, v in out.items()}
  res["cam"] = jnp.zeros((out["cam_down"].shape[0],) + size + (21,))  # only its shape is read
  return res


def test_eps_objective_equals_its_terms():
  rng = np.random.default_rng(7)
  b = 2
  out1 = _outputs(rng, b, 7, 7)
  labels = (rng.random((b, 20)) < 0.3).astype(np.float32)
  labels[:, 2] = 1
  sal = rng.random((b, 56, 56)).astype(np.float32)
  config = config_lib.loss_config("eps")
  total, metrics = objective_lib.objective(
      _jax_out(out1, (56, 56)), _jax_out(out1, (56, 56)), jnp.asarray(labels), None,
      config=config, saliency=jnp.asarray(sal))
  pred = out1["cam_down"].astype(np.float64).mean(axis=(1, 2))
  want_cls = _np_mlsm(pred[:, :-1], labels)
  want_sal = np_eps_loss(out1["cam_down"], sal, labels, 0.4, 0.5)
  np.testing.assert_allclose(float(metrics["loss_cls"]), want_cls, rtol=TOL)
  np.testing.assert_allclose(float(metrics["loss_sal"]), want_sal, rtol=TOL)
  np.testing.assert_allclose(float(total), want_cls + want_sal, rtol=TOL)
  with pytest.raises(ValueError, match="with_saliency=True"):
    objective_lib.objective(_jax_out(out1, (56, 56)), _jax_out(out1, (56, 56)),
                            jnp.asarray(labels), None, config=config)


def test_eps_ppc_objective_terms_match_the_esp_loop():
  """Every term of wseg@esp train_contrast except the contrast (whose random halves differ; it
  is ppc_losses, tested in test_losses_ppc.py) against numpy, and the total is their sum."""
  rng = np.random.default_rng(8)
  b = 2
  out1 = _outputs(rng, b, 8, 8, proj=6)    # view 1: 64 px input, 8x8 features
  out2 = _outputs(rng, b, 4, 4, proj=6)    # view 2: 32 px input, 4x4 features
  labels = (rng.random((b, 20)) < 0.3).astype(np.float32)
  labels[:, 0] = 1
  sal = rng.random((b, 64, 64)).astype(np.float32)
  config = config_lib.loss_config("eps_ppc")
  config.max_onehot_bug = True
  config.ppc.topk_divisor = 4
  config.ppc.bg_threshold = 0.10
  total, m = objective_lib.objective(_jax_out(out1, (64, 64)), _jax_out(out2, (32, 32)),
                                     jnp.asarray(labels), jax.random.PRNGKey(0), config=config,
                                     saliency=jnp.asarray(sal))
  f64 = lambda o: {k: v.astype(np.float64) for k, v in o.items()}  # noqa: E731
  o1, o2 = f64(out1), f64(out2)
  sal2 = np_resize_ac(sal[..., None].astype(np.float64), (32, 32))[..., 0]
  cls = 0.5 * (_np_mlsm(o1["cam_down"].mean((1, 2))[:, :-1], labels)
               + _np_mlsm(o2["cam_down"].mean((1, 2))[:, :-1], labels))
  rvmin = 0.5 * (_np_rvmin(o1["cam_rv_down"], labels) + _np_rvmin(o2["cam_rv_down"], labels))
  sal_loss = (0.5 * (np_eps_loss(o1["cam_down"], sal, labels, 0.4, 0.5)
                     + np_eps_loss(o2["cam_down"], sal2, labels, 0.4, 0.5))
              + 0.5 * (np_eps_loss(o1["cam_rv_down"], sal, labels, 0.4, 0.5)
                       + np_eps_loss(o2["cam_rv_down"], sal2, labels, 0.4, 0.5)))
  er, ecr = np_er_ecr_esp(o1["cam_down"], o2["cam_down"], o1["cam_rv_down"], o2["cam_rv_down"],
                          labels)
  for name, want in (("loss_cls", cls), ("loss_rvmin", rvmin), ("loss_sal", sal_loss),
                     ("loss_er", er), ("loss_ecr", ecr)):
    np.testing.assert_allclose(float(m[name]), want, rtol=1e-4, err_msg=name)
  np.testing.assert_allclose(float(total),
                             cls + rvmin + sal_loss + er + ecr + float(m["loss_nce"]), rtol=1e-5)
  assert float(m["loss_nce"]) > 0


# ------------------------------------------------------------------------------------------------
# The schedule past max_step, EPS inference normalisation, the configs.
# ------------------------------------------------------------------------------------------------


def test_poly_schedule_freezes_after_max_step():
  """PolyOptimizer sets lr only while step < max_step (METHOD 11.6): the last set value stays."""
  lr, max_step = 0.01, 30
  sched = optim.poly_schedule(lr, max_step, 0.9)
  for t in range(40):
    want = lr * (1 - min(t, max_step - 1) / max_step) ** 0.9
    np.testing.assert_allclose(float(sched(t)), want, rtol=1e-6)
  assert float(sched(35)) > 0
  cfg = config_lib.optim_config()
  cfg.poly_max_step = max_step
  params = {"fc8": {"kernel": jnp.ones((2,))}}
  tx, schedule, _ = optim.make_optimizer(cfg, 40, params)
  np.testing.assert_allclose(float(schedule(39)), lr * (1 / max_step) ** 0.9, rtol=1e-6)
  # The full reference schedule: (1/19830)^0.9 for the last 171 updates of 20,000; the float64
  # value rounded once to float32 (optim.poly_table), so 2 ulps of float32.
  sched = optim.poly_schedule(1.0, 19830, 0.9)
  np.testing.assert_allclose(float(sched(19999)), (1 / 19830) ** 0.9, rtol=2 * 2**-24)
  np.testing.assert_array_equal(float(sched(19999)), float(sched(19829)))
  del tx


def test_eps_max_normalisation():
  x = np.random.default_rng(9).random((5, 4, 3)).astype(np.float32)
  x[..., 2] = 0  # an absent class stays 0
  got = np.asarray(cam_postprocess.max_normalize_cam(jnp.asarray(x)))
  np.testing.assert_allclose(got, x / (x.max(axis=(0, 1), keepdims=True) + 1e-5), rtol=1e-6)
  assert (got[..., 2] == 0).all()


@pytest.mark.parametrize("name,variant,k_div,bg,bug,thr", [
    ("eps_voc12.py", "eps", 8, 0.20, False, 0.20),
    ("eps_ppc_voc12.py", "eps_ppc", 16, 0.10, True, 0.22),
])
def test_eps_configs_hold_the_reference_settings(name, variant, k_div, bg, bug, thr):
  import e2e_fixtures as e2e  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  config = e2e._load_file(os.path.join(e2e.ROOT, "configs", name), "cfg_" + variant).get_config()
  assert isinstance(config, ml_collections.ConfigDict)
  assert config.loss.variant == variant and config.input.with_saliency
  assert config.loss.ppc.topk_divisor == k_div and config.loss.ppc.bg_threshold == bg
  assert config.loss.max_onehot_bug is bug
  assert (config.total_steps, config.optim.poly_max_step) == (20000, 19830)
  assert config.optim.momentum_mode == "reference" and config.model.dropout_fea == 0.0
  assert (config.infer.mode, config.infer.cam_key, config.infer.bg_threshold) == (
      "eps", "cam_down", thr)
  assert config.model.pcm == (variant == "eps_ppc")
  assert (config.model.proj_dim is None) == (variant == "eps")
  assert config.loss.eps.tau == 0.4 and config.loss.eps.lam == 0.5
