"""PPC contrast losses and the objective against independent numpy re-derivations of METHOD.md 3.

The oracles use Python loops over pixels and classes, boolean indexing and float64. The random half
of hard pixel sampling is fed to both sides as given subsets (Python `random.sample`, as the
reference draws them). Also: gradient flow of every stop-gradient, zero-vector safety of the L2
normalisation, and jit + 8-device batch sharding.
"""

import random

import jax
import jax.numpy as jnp
import numpy as np
from oracles import np_resize_ac
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ppc_jax import config_lib
from ppc_jax.seeds.losses import objective as objective_lib
from ppc_jax.seeds.losses import ppc

EPS = 1e-5
TAU = 0.1


# ----------------------------------------------------------------------------- numpy oracles


def np_contrast_cam(x, bg):
  x = np.maximum(np.asarray(x, np.float64), 0.0)
  out = np.zeros_like(x)
  for b in range(x.shape[0]):
    for c in range(x.shape[-1]):
      ch = x[b, :, :, c].copy()
      lo, hi = ch.min(), ch.max()
      ch[ch < lo + EPS] = 0.0
      out[b, :, :, c] = (ch - lo - EPS) / (hi - lo + EPS)
  out[..., 0] = bg
  return out


def np_pseudo_labels(norm, labels):
  b, h, w, c = norm.shape
  y = np.zeros((b, h, w), np.int64)
  for n in range(b):
    lab = [1.0] + list(labels[n])
    for i in range(h):
      for j in range(w):
        vals = [norm[n, i, j, ch] * lab[ch] for ch in range(c)]
        best = 0
        for ch in range(1, c):
          if vals[ch] > vals[best]:  # strict: ties keep the lower index
            best = ch
        y[n, i, j] = best
  return y


def np_normalize(x):
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def np_prototypes(norm, feats, k):
  c = norm.shape[-1]
  s = norm.reshape(-1, c)
  f = np.asarray(feats, np.float64).reshape(-1, feats.shape[-1])
  protos = []
  for ch in range(c):
    order = sorted(range(s.shape[0]), key=lambda i: (-s[i, ch], i))[:k]  # ties: lowest index
    wts = s[order, ch]
    protos.append((wts[:, None] * f[order]).sum(0) / wts.sum())
  return np_normalize(np.stack(protos))


def np_nce(v, y, protos):
  total = 0.0
  for i in range(v.shape[0]):
    s = [float(np.dot(v[i], p)) for p in protos]
    num = np.exp(s[y[i]] / TAU)
    den = sum(np.exp(x / TAU) for x in s)
    total += -np.log(num / den)
  return total / v.shape[0]


def np_semi_hard(v, y, protos, skip=3, top=13):
  out = []
  for i in range(v.shape[0]):
    s = [float(np.dot(v[i], p)) for p in protos]
    mined = sorted(s, reverse=True)[skip:top]
    pos = s[y[i]]
    den = np.exp(pos / TAU) + sum(np.exp(x / TAU) for x in mined)
    out.append(-np.log(np.exp(pos / TAU) / den))
  return np.array(out)


def np_select(y, sim, subsets, upper=0.6, num_classes=21):
  m = len(y)
  rnd, hard = np.zeros(m, bool), np.zeros(m, bool)
  counts = np.zeros(num_classes, np.int64)
  for c in range(num_classes):
    members = [i for i in range(m) if y[i] == c]
    counts[c] = len(members)
    n = len(members)
    if n < 2:
      continue
    rnd[subsets[c]] = True
    order = sorted(members, key=lambda i: (sim[i], i))  # ascending, ties: lowest index
    hard[order[int(n * upper) - n // 2:int(n * upper)]] = True
  return rnd, hard, counts


def np_intra(v, y, protos, subsets, upper=0.6, skip=3, top=13):
  ell = np_semi_hard(v, y, protos, skip, top)
  sim = np.array([(np.dot(v[i], protos[y[i]]) + 1) / 2 for i in range(len(y))])
  total, num = 0.0, 0
  for c in range(protos.shape[0]):
    members = [i for i in range(len(y)) if y[i] == c]
    if not members:
      continue
    num += 1  # counted before the L < 2 check, as the reference
    n = len(members)
    if n < 2:
      continue
    order = sorted(members, key=lambda i: (sim[i], i))
    chosen = list(subsets[c]) + order[int(n * upper) - n // 2:int(n * upper)]
    total += np.mean(ell[chosen])
  return total / num


def sample_subsets(y, seed, num_classes=21):
  """Random halves drawn like the reference (random.sample over each class's members)."""
  r = random.Random(seed)
  subsets = {}
  for c in range(num_classes):
    members = [i for i in range(len(y)) if y[i] == c]
    subsets[c] = [members[j] for j in r.sample(range(len(members)), len(members) // 2)]
  return subsets


def keys_for_subsets(y, subsets):
  """Keys under which `select_pixels` picks exactly the given random subsets."""
  keys = np.ones(len(y), np.int32)
  for idx in subsets.values():
    keys[idx] = 0
  return keys


def subsets_from_keys(y, keys, num_classes=21):
  subsets = {}
  for c in range(num_classes):
    members = [i for i in range(len(y)) if y[i] == c]
    subsets[c] = sorted(members, key=lambda i: (keys[i], i))[:len(members) // 2]
  return subsets


def np_ppc(cam1, cam2, proj1, proj2, labels, keys, cfg):
  b, h, w, d = proj2.shape
  proj1 = np_resize_ac(proj1, (h, w))
  norm1 = np_contrast_cam(np_resize_ac(cam1, (h, w)), cfg.bg_threshold)
  norm2 = np_contrast_cam(cam2, cfg.bg_threshold)
  y1 = np_pseudo_labels(norm1, labels).ravel()
  y2 = np_pseudo_labels(norm2, labels).ravel()
  k = h * w // cfg.topk_divisor
  p1, p2 = np_prototypes(norm1, proj1, k), np_prototypes(norm2, proj2, k)
  v1, v2 = np_normalize(proj1.reshape(-1, d)), np_normalize(proj2.reshape(-1, d))
  cp = (np_nce(v1, y1, p2) + np_nce(v2, y2, p1)) / 2
  cc = (np_nce(v1, y2, p1) + np_nce(v2, y1, p2)) / 2
  c = cam2.shape[-1]
  mining = dict(skip=cfg.mining_skip, top=cfg.mining_top)
  intra = (np_intra(v1, y1, p1, subsets_from_keys(y1, keys[0], c), **mining)
           + np_intra(v2, y2, p2, subsets_from_keys(y2, keys[1], c), **mining)) / 2
  total = 0.1 * cp + 0.1 * cc + 0.1 * intra
  return {"cross_prototype": cp, "cross_label": cc, "intra": intra, "total": total}


# ----------------------------------------------------------------------------- inputs


def _labels(b=2, seed=0, num_fg=20):
  r = np.random.RandomState(seed)
  lab = np.zeros((b, num_fg), np.float32)
  for n in range(b):
    lab[n, r.choice(num_fg, size=r.randint(1, 4), replace=False)] = 1.0
  return lab


def _maps(shape, seed):
  return np.random.RandomState(seed).randn(*shape).astype(np.float32)


def _unit(shape, seed):
  return np_normalize(_maps(shape, seed)).astype(np.float32)


def _ppc_inputs(b=2, h1=24, h=8, d=16, seed=0, c=21):
  cam1 = _maps((b, h1, h1, c), seed)
  cam2 = _maps((b, h, h, c), seed + 1)
  proj1 = np.maximum(_maps((b, h1, h1, d), seed + 2), 0)
  proj2 = np.maximum(_maps((b, h, h, d), seed + 3), 0)
  proj2[0, 0, 0] = 0.0  # an all-zero pixel: normalises to 0 (METHOD 3.2)
  return cam1, cam2, proj1, proj2, _labels(b, seed + 4, c - 1)


def _cfg():
  return config_lib.loss_config().ppc


# ----------------------------------------------------------------------------- tests


def test_contrast_cam_matches_loops():
  x = _maps((2, 8, 8, 21), 0)
  x[0, ..., 4] = -1.0  # relu -> flat zero -> about -1 everywhere
  x[1, ..., 6] = 0.5   # flat positive map: zeroed then -(min+eps)/eps
  got = np.asarray(ppc.contrast_cam(jnp.asarray(x), 0.2))
  want = np_contrast_cam(x, 0.2)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert np.all(got[..., 0] == np.float32(0.2))
  np.testing.assert_allclose(got[0, ..., 4], -1.0, atol=1e-6)


def test_pseudo_labels_with_ties():
  r = np.random.RandomState(1)
  # Quantised scores: many exact ties, also with the constant background.
  norm = r.choice([-1.0, 0.0, 0.2, 0.5, 1.0], size=(2, 8, 8, 21)).astype(np.float32)
  norm[..., 0] = 0.2
  labels = np.zeros((2, 20), np.float32)
  labels[0, [2, 5, 7]] = 1
  labels[1, [0, 19]] = 1
  got = np.asarray(ppc.pseudo_labels(jnp.asarray(norm), jnp.asarray(labels)))
  want = np_pseudo_labels(norm, labels)
  np.testing.assert_array_equal(got, want)
  # Absent classes never win; ties between present classes happened and went to the lower index.
  for n in range(2):
    assert set(np.unique(got[n])) <= {0} | set(np.nonzero(labels[n])[0] + 1)
  assert np.sum(norm[0, ..., 3] == norm[0, ..., 6]) > 0


@pytest.mark.parametrize("ties", [False, True])
def test_prototypes_topk_lowest_index(ties):
  r = np.random.RandomState(2)
  if ties:
    norm = r.choice([-1.0, 0.25, 0.5, 1.0], size=(2, 8, 8, 21)).astype(np.float32)
  else:
    norm = r.rand(2, 8, 8, 21).astype(np.float32)
  norm[..., 0] = 0.2  # the degenerate, fully tied background row
  feats = np.maximum(_maps((2, 8, 8, 16), 3), 0)
  got = np.asarray(ppc.prototypes(jnp.asarray(norm), jnp.asarray(feats), 8))
  want = np_prototypes(norm, feats, 8)
  np.testing.assert_allclose(got, want, atol=1e-5)
  # Background prototype = plain mean of the first K pixels of the batch (lowest-index ties).
  np.testing.assert_allclose(got[0], np_normalize(feats.reshape(-1, 16)[:8].mean(0)), atol=1e-5)


def test_prototypes_carry_no_gradient():
  norm = jnp.asarray(_maps((2, 8, 8, 21), 4))
  feats = jnp.asarray(np.abs(_maps((2, 8, 8, 16), 5)))
  g = jax.grad(lambda f, n: jnp.sum(ppc.prototypes(n, f, 8) ** 3), argnums=(0, 1))(feats, norm)
  assert float(jnp.sum(jnp.abs(g[0]))) == 0 and float(jnp.sum(jnp.abs(g[1]))) == 0


def test_l2_normalize_zero_safe():
  x = _maps((5, 16), 6)
  x[2] = 0.0
  got = np.asarray(ppc.l2_normalize(jnp.asarray(x)))
  np.testing.assert_allclose(got, np_normalize(x), atol=1e-6)
  assert np.all(got[2] == 0)
  g = jax.grad(lambda z: jnp.sum(ppc.l2_normalize(z) * jnp.arange(16.0)))(jnp.asarray(x))
  assert np.all(np.isfinite(np.asarray(g)))
  # torch semantics at a zero vector: x / eps, so the gradient is g / eps.
  np.testing.assert_allclose(np.asarray(g[2]), np.arange(16.0) / 1e-12, rtol=1e-6)


def test_cross_losses_match_loops():
  m, d = 64, 16
  v1, v2 = _unit((m, d), 7), _unit((m, d), 8)
  v2[5] = 0.0  # a zero feature contributes log(21)
  p1, p2 = _unit((21, d), 9), _unit((21, d), 10)
  r = np.random.RandomState(11)
  y1, y2 = r.randint(0, 21, m), r.randint(0, 21, m)
  a = [jnp.asarray(t) for t in (v1, v2, y1, y2, p1, p2)]
  cp = float(ppc.cross_prototype_loss(*a, temperature=TAU))
  cc = float(ppc.cross_pseudo_label_loss(*a, temperature=TAU))
  np.testing.assert_allclose(cp, (np_nce(v1, y1, p2) + np_nce(v2, y2, p1)) / 2, rtol=1e-5)
  np.testing.assert_allclose(cc, (np_nce(v1, y2, p1) + np_nce(v2, y1, p2)) / 2, rtol=1e-5)
  zero_term = float(ppc.prototype_nce(jnp.zeros((1, d)), jnp.zeros((1,), jnp.int32),
                                      jnp.asarray(p1), temperature=TAU))
  np.testing.assert_allclose(zero_term, np.log(21), rtol=1e-6)


def test_semi_hard_pixel_loss_double_counts_positive():
  m, d = 96, 16
  v, protos = _unit((m, d), 12), _unit((21, d), 13)
  y = np.random.RandomState(14).randint(0, 21, m)
  got = np.asarray(ppc.semi_hard_pixel_loss(jnp.asarray(v), jnp.asarray(y), jnp.asarray(protos),
                                            skip=3, top=13, temperature=TAU))
  np.testing.assert_allclose(got, np_semi_hard(v, y, protos), rtol=1e-5, atol=1e-6)
  # The double-counting case is exercised: some positives sit at ranks 4-13.
  ranks = [sorted(range(21), key=lambda c: -np.dot(v[i], protos[c])).index(y[i])
           for i in range(m)]
  assert any(3 <= r < 13 for r in ranks) and any(r < 3 or r >= 13 for r in ranks)


def _class_sizes_labels(seed):
  """Pseudo-labels with sizes 0 (most classes), 1, 2, 3, 5, 7, 10 and a large class."""
  sizes = {1: 1, 2: 2, 4: 3, 6: 5, 9: 7, 13: 10}
  y = []
  for c, n in sizes.items():
    y += [c] * n
  y += [0] * (100 - len(y))
  y = np.array(y)
  np.random.RandomState(seed).shuffle(y)
  return y


@pytest.mark.parametrize("quantised_sim", [False, True])
def test_select_pixels_given_subsets(quantised_sim):
  y = _class_sizes_labels(15)
  r = np.random.RandomState(16)
  sim = r.rand(len(y)).astype(np.float32)
  if quantised_sim:
    sim = np.round(sim * 4) / 4  # ties inside classes: lower index first
  subsets = sample_subsets(y, 17)
  keys = keys_for_subsets(y, subsets)
  sel = ppc.select_pixels(jnp.asarray(y), jnp.asarray(sim), jnp.asarray(keys), num_classes=21)
  rnd, hard, counts = np_select(y, sim, subsets)
  np.testing.assert_array_equal(np.asarray(sel.random_mask), rnd)
  np.testing.assert_array_equal(np.asarray(sel.hard_mask), hard)
  np.testing.assert_array_equal(np.asarray(sel.counts), counts)
  w = np.asarray(sel.weights)
  for c in range(21):
    assert w[:, c].sum() == 2 * (counts[c] // 2) * (counts[c] >= 2)
    assert np.all(w[y != c, c] == 0)
  assert np.any(w == 2)  # duplicates between the halves occur and are kept


def test_select_pixels_int_upper_matches_python():
  # int(L * 0.6) with Python floats, for every L the table can see.
  for n in range(2, 41):
    yy = np.where(np.arange(40) < n, 0, 1).astype(np.int32)
    sel = ppc.select_pixels(jnp.asarray(yy), jnp.arange(40.0), jnp.arange(40), num_classes=2)
    hard = np.nonzero(np.asarray(sel.hard_mask) & (yy == 0))[0]
    np.testing.assert_array_equal(hard, np.arange(int(n * 0.6) - n // 2, int(n * 0.6)))


def test_intra_view_loss_matches_loops():
  y = _class_sizes_labels(18)
  m, d = len(y), 16
  v, protos = _unit((m, d), 19), _unit((21, d), 20)
  subsets = sample_subsets(y, 21)
  got = float(ppc.intra_view_loss(jnp.asarray(v), jnp.asarray(y), jnp.asarray(protos),
                                  jnp.asarray(keys_for_subsets(y, subsets)), temperature=TAU))
  np.testing.assert_allclose(got, np_intra(v, y, protos, subsets), rtol=1e-5)


def test_intra_view_loss_singletons_count_in_c():
  # Only singleton classes: every class is skipped but counted, so the loss is exactly 0.
  y = np.arange(21)
  v, protos = _unit((21, 16), 22), _unit((21, 16), 23)
  intra = jax.jit(ppc.intra_view_loss)
  got = intra(jnp.asarray(v), jnp.asarray(y), jnp.asarray(protos), jnp.arange(21))
  assert float(got) == 0.0
  # One pair + 3 singletons: C = 4, so the pair's mean loss is divided by 4.
  y = np.array([5, 5, 1, 2, 3])
  v5, p5 = _unit((5, 16), 24), _unit((21, 16), 25)
  got = float(intra(jnp.asarray(v5), jnp.asarray(y), jnp.asarray(p5), jnp.arange(5)))
  ell = np_semi_hard(v5, y, p5)
  sim = [(np.dot(v5[i], p5[5]) + 1) / 2 for i in (0, 1)]
  hard = int(np.argmin(sim)) if sim[0] != sim[1] else 0
  np.testing.assert_allclose(got, (ell[0] + ell[hard]) / 2 / 4, rtol=1e-5)


def test_ppc_losses_match_loops_and_gradient_flow():
  cam1, cam2, proj1, proj2, labels = _ppc_inputs()
  rng = jax.random.key(3)
  cfg = _cfg()

  def total(c1, c2, p1, p2):
    out = ppc.ppc_losses(c1, c2, p1, p2, jnp.asarray(labels), rng, config=cfg)
    return out["total"], out

  # One compile for the values and the gradients.
  (_, got), g = jax.jit(jax.value_and_grad(total, argnums=(0, 1, 2, 3), has_aux=True))(
      *(jnp.asarray(a) for a in (cam1, cam2, proj1, proj2)))
  keys = np.asarray(ppc.sampling_keys(rng, proj2.shape[0] * 8 * 8))
  want = np_ppc(cam1, cam2, proj1, proj2, labels, keys, cfg)
  for name in ("cross_prototype", "cross_label", "intra", "total"):
    np.testing.assert_allclose(float(got[name]), want[name], rtol=1e-5, err_msg=name)

  for x in g:
    assert np.all(np.isfinite(np.asarray(x)))  # also with the all-zero feature pixel
  # Pseudo-labels and prototypes are stop-gradient: nothing reaches the CAMs.
  assert float(jnp.sum(jnp.abs(g[0]))) == 0.0 and float(jnp.sum(jnp.abs(g[1]))) == 0.0
  # The features of both views get gradient; view 1's through the 24 -> 8 resize, which touches
  # only the source rows/cols of the align_corners grid (every 23/7-th pixel and neighbours).
  assert float(jnp.sum(jnp.abs(g[2]))) > 0.0 and float(jnp.sum(jnp.abs(g[3]))) > 0.0
  touched = np.abs(np.asarray(g[2])).sum(axis=(0, 3)) > 0
  assert touched[0, 0] and touched[-1, -1] and not touched.all()


def test_ppc_losses_any_class_count():
  """6 classes (5 + background): the same loops, with the mining window inside the 6 prototypes;
  VOC's default window (ranks 4..13) cannot fit and is refused, naming the config fields."""
  cam1, cam2, proj1, proj2, labels = _ppc_inputs(seed=7, c=6)
  rng = jax.random.key(5)
  cfg = _cfg()
  cfg.mining_top = 6
  got = jax.jit(lambda *a: ppc.ppc_losses(*a, rng, config=cfg))(
      *(jnp.asarray(a) for a in (cam1, cam2, proj1, proj2, labels)))
  keys = np.asarray(ppc.sampling_keys(rng, proj2.shape[0] * 8 * 8))
  want = np_ppc(cam1, cam2, proj1, proj2, labels, keys, cfg)
  # float32 against float64 loops: dot products of 16 unit-vector entries and a logsumexp of at
  # most 4 terms at tau = 0.1 keep the relative error near 1e-6 (as in the 21-class test above).
  for name in ("cross_prototype", "cross_label", "intra", "total"):
    np.testing.assert_allclose(float(got[name]), want[name], rtol=1e-5, err_msg=name)
  with pytest.raises(ValueError, match=r"config.loss.ppc.mining_skip=3, mining_top=13: .* of the "
                                       r"6 classes \(config.model.num_classes\); need 0 <= "
                                       r"mining_skip < mining_top <= 6"):
    ppc.ppc_losses(*(jnp.asarray(a) for a in (cam1, cam2, proj1, proj2, labels)), rng,
                   config=_cfg())


def test_ppc_losses_sharded_equals_unsharded():
  b = 8
  cam1, cam2, proj1, proj2, labels = _ppc_inputs(b=b, h1=12, h=8, d=16, seed=40)
  rng = jax.random.key(5)
  fn = jax.jit(lambda *a: ppc.ppc_losses(*a, config=_cfg()))
  args = [jnp.asarray(a) for a in (cam1, cam2, proj1, proj2, labels)]
  want = fn(*args, rng)
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  sharded = [jax.device_put(a, NamedSharding(mesh, P("data"))) for a in args]
  got = fn(*sharded, rng)
  assert len(sharded[2].sharding.device_set) == 8
  # Every term and diagnostic (the diagnostics too: prototypes are batch-global).
  for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-7,
                               err_msg=jax.tree_util.keystr(path))


# ----------------------------------------------------------------------------- objective


def _outputs(seed, b=2, hw=(24, 16), feat=(6, 4), d=16):
  r = np.random.RandomState(seed)
  outs = []
  for size, fsize in zip(hw, feat):
    outs.append({
        "cam": jnp.asarray(r.randn(b, size, size, 21).astype(np.float32)),
        "cam_rv": jnp.asarray(r.randn(b, size, size, 21).astype(np.float32)),
        "cam_down": jnp.asarray(r.randn(b, fsize, fsize, 21).astype(np.float32)),
        "cam_rv_down": jnp.asarray(r.randn(b, fsize, fsize, 21).astype(np.float32)),
        "proj": jnp.asarray(np.maximum(r.randn(b, fsize, fsize, d), 0).astype(np.float32)),
    })
  return outs


def test_objective_variants_and_metrics():
  out1, out2 = _outputs(50)
  labels = jnp.asarray(_labels(2, 51))
  rng = jax.random.key(6)
  results = {}
  saliency = jnp.asarray(np.random.RandomState(52).rand(2, 24, 24).astype(np.float32))
  for variant in objective_lib.VARIANTS:
    cfg = config_lib.loss_config(variant)
    cfg.ppc.topk_divisor = 2  # 4x4 view-2 maps
    loss, metrics = jax.jit(
        lambda o1, o2, cfg=cfg: objective_lib.objective(o1, o2, labels, rng, config=cfg,
                                                        saliency=saliency))(out1, out2)
    results[variant] = metrics
    assert all(jnp.shape(v) == () for v in metrics.values())
    np.testing.assert_allclose(float(loss), float(metrics["loss"]))
  assert set(results["cam"]) == {"loss_cls", "loss"}
  assert set(results["eps"]) == {"loss_cls", "loss_sal", "loss"}
  assert set(results["eps_ppc"]) == set(results["seam_ppc"]) | {"loss_sal"}
  assert set(results["seam"]) == {"loss_cls", "loss_rvmin", "loss_er", "loss_ecr", "loss"}
  contrast_keys = {"contrast/sim_pos", "contrast/sim_spread", "contrast/proto_sim"} | {
      f"contrast/coverage_c{c:02d}" for c in range(21)}
  assert set(results["seam_ppc"]) == set(results["seam"]) | {
      "loss_cross_prototype", "loss_cross_label", "loss_intra", "loss_nce"} | contrast_keys
  np.testing.assert_allclose(
      sum(float(results["seam_ppc"][f"contrast/coverage_c{c:02d}"]) for c in range(21)), 1.0,
      rtol=1e-6)
  s, sp = results["seam"], results["seam_ppc"]
  np.testing.assert_allclose(float(s["loss"]), float(
      s["loss_cls"] + s["loss_rvmin"] + s["loss_er"] + s["loss_ecr"]), rtol=1e-6)
  np.testing.assert_allclose(float(sp["loss_nce"]), 0.1 * float(
      sp["loss_cross_prototype"] + sp["loss_cross_label"] + sp["loss_intra"]), rtol=1e-6)
  np.testing.assert_allclose(float(sp["loss"]), float(s["loss"] + sp["loss_nce"]), rtol=1e-6)
  np.testing.assert_allclose(float(results["cam"]["loss"]), float(s["loss_cls"]), rtol=1e-6)
  with pytest.raises(ValueError, match="unknown loss variant"):
    objective_lib.objective(out1, out2, labels, rng, config=config_lib.loss_config("seam_eps"))


def test_objective_gradient_routing():
  out1, out2 = _outputs(60)
  labels = jnp.asarray(_labels(2, 61))
  rng = jax.random.key(7)
  cfg = config_lib.loss_config("seam_ppc")
  keys = ("cam", "cam_rv", "cam_rv_down", "proj")

  def metrics_fn(o1, o2):
    return objective_lib.objective(o1, o2, labels, rng, config=cfg)[1]

  # One jitted reverse-mode Jacobian: d(every metric) / d(every model output) of both views.
  # jac[metric] = (d metric / d out1, d metric / d out2).
  jac = jax.jit(jax.jacrev(metrics_fn, argnums=(0, 1)))(out1, out2)

  def touched(metric):
    return {k for k in keys for g in jac[metric] if float(jnp.sum(jnp.abs(g[k]))) > 0}

  assert touched("loss_cls") == {"cam"}
  for g in jac["loss_cls"]:
    assert float(jnp.sum(jnp.abs(g["cam"][..., 0]))) == 0.0
  for g in jac["loss_nce"]:  # the contrast reaches the features of both views
    assert float(jnp.sum(jnp.abs(g["proj"]))) > 0.0
  assert touched("loss_rvmin") == {"cam_rv"}
  assert touched("loss_er") == {"cam"}
  assert touched("loss_ecr") == {"cam_rv"}
  for name in ("loss_cross_prototype", "loss_cross_label", "loss_intra", "loss_nce"):
    assert touched(name) == {"proj"}, name


def test_contrast_diagnostics_match_numpy_and_carry_no_gradient():
  rng = np.random.RandomState(70)
  m, d, c = 40, 8, 5
  v = rng.randn(m, d).astype(np.float32)
  v /= np.linalg.norm(v, axis=-1, keepdims=True)
  p = rng.randn(c, d).astype(np.float32)
  p /= np.linalg.norm(p, axis=-1, keepdims=True)
  y = rng.randint(0, c, size=m)
  got = ppc.contrast_diagnostics(jnp.asarray(v), jnp.asarray(y), jnp.asarray(p))
  sims = v.astype(np.float64) @ p.astype(np.float64).T
  np.testing.assert_allclose(float(got["sim_pos"]), np.mean(sims[np.arange(m), y]), rtol=1e-5)
  np.testing.assert_allclose(float(got["sim_spread"]),
                             np.mean(sims.max(-1) - sims.min(-1)), rtol=1e-5)
  gram = p.astype(np.float64) @ p.astype(np.float64).T
  want_proto = np.mean([gram[i, j] for i in range(c) for j in range(c) if i != j])
  np.testing.assert_allclose(float(got["proto_sim"]), want_proto, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(got["coverage"]), np.bincount(y, minlength=c) / m,
                             rtol=1e-6)
  # Collapse: identical features and prototypes give spread 0 and prototype similarity 1.
  same = ppc.contrast_diagnostics(jnp.tile(jnp.asarray(v[:1]), (m, 1)), jnp.asarray(y),
                                  jnp.tile(jnp.asarray(v[:1]), (c, 1)))
  np.testing.assert_allclose(float(same["sim_spread"]), 0.0, atol=1e-6)
  np.testing.assert_allclose(float(same["proto_sim"]), 1.0, rtol=1e-5)
  # Logged, never optimised.
  grad = jax.grad(lambda vv, pp: sum(
      jnp.sum(x) for x in ppc.contrast_diagnostics(vv, jnp.asarray(y), pp).values()),
                  argnums=(0, 1))(jnp.asarray(v), jnp.asarray(p))
  assert all(float(jnp.abs(g).max()) == 0.0 for g in grad)
