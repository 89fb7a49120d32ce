"""AffinityNet stage: pair geometry, pooled CRF labels, pair labels, pair affinity, loss, model.

Oracles are numpy loops over all pixel pairs (`refine_oracles`), written from METHOD.md 11.8-11.9,
plus a torch re-statement of the reference's index_select / loss where torch is installed.
"""

import math

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import refine_oracles as ro
from ppc_jax import config_lib
from ppc_jax import optim
from ppc_jax.refine.affinity_loss import affinity_loss, pair_affinity
from ppc_jax.models import AffinityNet, get_model
from ppc_jax.refine import affinity_net
from ppc_jax.refine import affinity_labels as al


# ----------------------------------------------------------------------------------------------
# Offsets and geometry
# ----------------------------------------------------------------------------------------------
def test_offsets_radius3_literal():
  assert al.search_offsets(3) == [
      (0, 1), (0, 2),
      (1, -2), (1, -1), (1, 0), (1, 1), (1, 2),
      (2, -2), (2, -1), (2, 0), (2, 1), (2, 2)]


@pytest.mark.parametrize("radius,count", [(0, 0), (1, 0), (2, 4), (3, 12), (4, 22), (5, 34)])
def test_offsets_are_the_sorted_half_disc(radius, count):
  # Independent: every nonzero offset strictly inside the radius, one of each +-d pair (the
  # half-plane dy > 0 or dy == 0 < dx), ordered by (dy, dx) -- the reference's loop order.
  want = sorted((dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
                if 0 < dy * dy + dx * dx < radius * radius and (dy > 0 or (dy == 0 and dx > 0)))
  got = al.search_offsets(radius)
  assert got == want
  assert len(got) == count


@pytest.mark.parametrize("h,w,want", [
    (56, 56, 5), (11, 30, 5), (30, 11, 5), (10, 30, 4), (9, 9, 4), (8, 40, 3), (7, 7, 3),
    (5, 6, 2), (4, 4, 1), (3, 9, 1), (2, 2, 0), (1, 5, 0)])
def test_effective_radius(h, w, want):
  assert al.effective_radius(5, h, w) == want == ro.np_radius(5, h, w)


def test_effective_radius_other_request():
  assert al.effective_radius(3, 7, 7) == 3   # 7 >= 2*3 + 1: no shrink
  assert al.effective_radius(3, 6, 7) == 2


def test_geometry_56():
  g = al.pair_geometry(56, 56, 5)
  assert g.radius == 5 and g.num_offsets == 34
  assert g.from_window == ((0, 52), (4, 52))
  assert g.num_from == 52 * 48
  assert g.to_windows[0] == ((0, 52), (5, 53))           # (0, 1)
  assert g.to_windows[-1] == ((4, 56), (6, 54))          # (4, 2)


@pytest.mark.parametrize("h,w", [(14, 15), (12, 11), (9, 12), (8, 6), (5, 7), (4, 4)])
def test_pair_indices_equal_pair_scan(h, w):
  ind_from, ind_to = al.pair_indices(h, w, 5)
  geom = al.pair_geometry(h, w, 5)
  assert ind_from.shape == (geom.num_from,)
  assert ind_to.shape == (geom.num_offsets, geom.num_from)
  got = [(int(ind_from[p]), int(ind_to[k, p]))
         for k in range(ind_to.shape[0]) for p in range(ind_to.shape[1])]
  want = [(y * w + x, y2 * w + x2) for (y, x), (y2, x2) in ro.np_pairs(h, w, 5)]
  assert len(got) == len(set(got))                       # no pair twice
  assert sorted(got) == sorted(want)
  # Layout: from pixels row-major; row k is offset k everywhere (a constant flat shift).
  assert np.all(np.diff(ind_from) > 0)
  for k, (dy, dx) in enumerate(geom.offsets):
    np.testing.assert_array_equal(ind_to[k] - ind_from, dy * w + dx)


# ----------------------------------------------------------------------------------------------
# Pooling and the label map
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hw,stride", [((16, 24), 8), ((13, 10), 8), ((13, 10), 4), ((3, 5), 4)])
def test_pool_scores_counts_padding(hw, stride):
  x = np.random.default_rng(0).random(hw + (3,)).astype(np.float32)
  got = al.pool_scores(x, stride)
  want = ro.np_block_mean(x.astype(np.float64), stride)
  assert got.dtype == np.float32 and got.shape == want.shape
  # float64 mean rounded once to float32: within an ulp.
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)


def _crafted_scores():
  """la / ha pooled stacks [2, 4, 3] and the label each pixel must get."""
  la = np.zeros((2, 4, 3), np.float32)
  ha = np.zeros((2, 4, 3), np.float32)
  want = np.zeros((2, 4), np.uint8)
  cases = [
      # (la scores, ha scores, label)
      ([0.1, 0.7, 0.2], [0.05, 0.8, 0.15], 1),    # confident fg in both -> la class
      ([0.1, 0.2, 0.7], [0.9, 0.05, 0.05], 0),    # ha bg wins over la fg
      ([0.6, 0.3, 0.1], [0.2, 0.7, 0.1], 255),    # la bg, ha fg -> unsure
      ([0.8, 0.1, 0.1], [0.6, 0.3, 0.1], 0),      # la bg and ha bg -> bg (rule 3 over 2)
      ([0.0, 0.0, 0.0], [0.0, 0.0, 0.0], 255),    # padding: argmax 0 everywhere, but no score
      ([0.0, 0.0, 9e-6], [9e-6, 0.0, 0.0], 255),  # all < 1e-5 -> no score beats ha bg
      ([0.0, 0.0, 9e-6], [0.0, 2e-5, 0.0], 2),    # one ha score >= 1e-5: scored, la class 2
      ([0.4, 0.4, 0.2], [0.1, 0.45, 0.45], 255),  # la tie bg/fg -> lowest (bg) -> unsure
  ]
  for i, (a, b, lab) in enumerate(cases):
    la[i // 4, i % 4], ha[i // 4, i % 4], want[i // 4, i % 4] = a, b, lab
  return la, ha, want


def test_label_map_crafted():
  la, ha, want = _crafted_scores()
  got = al.label_map_from_crf(la, ha)
  assert got.dtype == np.uint8
  np.testing.assert_array_equal(got, want)


def _np_label(la_px, ha_px):
  """One pixel, rules checked from the strongest down (independent of the code's order)."""
  if max(la_px.max(), ha_px.max()) < 1e-5:
    return 255
  if int(np.argmax(ha_px)) == 0:
    return 0
  a = int(np.argmax(la_px))
  return 255 if a == 0 else a


def test_label_map_random_and_stride():
  rng = np.random.default_rng(1)
  # Unpooled 8x-stride stacks with a zero-padded border (as a crop) and sparse scores.
  la = rng.random((37, 45, 4)).astype(np.float32) * (rng.random((37, 45, 1)) < 0.9)
  ha = rng.random((37, 45, 4)).astype(np.float32) * (rng.random((37, 45, 1)) < 0.9)
  la[:, 30:] = 0
  ha[:, 30:] = 0
  got = al.label_map_from_crf(la, ha, stride=8)
  np.testing.assert_array_equal(
      got, al.label_map_from_crf(al.pool_scores(la), al.pool_scores(ha)))
  pla, pha = al.pool_scores(la), al.pool_scores(ha)
  want = np.array([[_np_label(pla[i, j], pha[i, j]) for j in range(pla.shape[1])]
                   for i in range(pla.shape[0])], np.uint8)
  np.testing.assert_array_equal(got, want)
  assert {0, 255} <= set(np.unique(got)) and len(np.unique(got)) > 2


# ----------------------------------------------------------------------------------------------
# Pair labels
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("h,w", [(14, 15), (9, 12), (6, 5)])
def test_pair_labels_equal_pair_scan(h, w):
  rng = np.random.default_rng(h * w)
  label = rng.choice(np.array([0, 1, 2, 3, 255], np.uint8), size=(h, w), p=[.3, .2, .2, .1, .2])
  got = al.pair_labels(label, 5)
  ind_from, ind_to = al.pair_indices(h, w, 5)
  kinds = {}
  for (y, x), (y2, x2) in ro.np_pairs(h, w, 5):
    kinds[(y * w + x, y2 * w + x2)] = ro.np_pair_kind(int(label[y, x]), int(label[y2, x2]))
  for name in ("bg", "fg", "neg"):
    assert got[name].dtype == np.float32 and got[name].shape == ind_to.shape
    want = np.array([[kinds[(int(ind_from[p]), int(ind_to[k, p]))] == name
                      for p in range(ind_to.shape[1])] for k in range(ind_to.shape[0])],
                    np.float32)
    np.testing.assert_array_equal(got[name], want)
  total = got["bg"] + got["fg"] + got["neg"]
  assert total.max() <= 1 and 0 < total.sum() < total.size   # disjoint; some pairs ignored
  assert min(got[k].sum() for k in got) > 0


def test_pair_labels_no_offsets():
  got = al.pair_labels(np.zeros((4, 4), np.uint8), 5)     # effective radius 1: no pairs
  assert all(v.shape[0] == 0 for v in got.values())


# ----------------------------------------------------------------------------------------------
# Pair affinity and loss
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("h,w", [(12, 13), (9, 10)])
def test_pair_affinity_equals_pair_scan(h, w):
  f = np.random.default_rng(2).random((2, h, w, 6)).astype(np.float32)
  got = np.asarray(pair_affinity(jnp.asarray(f), 5))
  ind_from, ind_to = al.pair_indices(h, w, 5)
  assert got.shape == (2,) + ind_to.shape
  vals = {}
  f64 = f.astype(np.float64)
  for (y, x), (y2, x2) in ro.np_pairs(h, w, 5):
    vals[(y * w + x, y2 * w + x2)] = np.exp(-np.mean(np.abs(f64[:, y, x] - f64[:, y2, x2]),
                                                     axis=-1))
  want = np.zeros(got.shape)
  for k in range(ind_to.shape[0]):
    for p in range(ind_to.shape[1]):
      want[:, k, p] = vals[(int(ind_from[p]), int(ind_to[k, p]))]
  # float32 abs-diff, 6-term mean and exp against float64: a few ulp.
  np.testing.assert_allclose(got, want, rtol=2e-6, atol=0)


def test_pair_affinity_no_offsets():
  assert pair_affinity(jnp.ones((2, 4, 6, 3)), 5).shape == (2, 0, 24)


def _batch_labels(rng, b, h, w):
  labels = [al.pair_labels(rng.choice(np.array([0, 1, 2, 255], np.uint8), size=(h, w)), 5)
            for _ in range(b)]
  return {k: np.stack([lab[k] for lab in labels]) for k in ("bg", "fg", "neg")}


def _np_loss(aff, bg, fg, neg):
  aff = aff.astype(np.float64)
  bgl = np.sum(-bg * np.log(aff + 1e-5)) / (bg.sum() + 1e-5)
  fgl = np.sum(-fg * np.log(aff + 1e-5)) / (fg.sum() + 1e-5)
  negl = np.sum(-neg * np.log(1 + 1e-5 - aff)) / (neg.sum() + 1e-5)
  return bgl / 4 + fgl / 4 + negl / 2, bgl, fgl, negl


def test_loss_value_batch_joint():
  rng = np.random.default_rng(3)
  lab = _batch_labels(rng, 3, 12, 14)
  aff = rng.uniform(0.01, 0.999, lab["bg"].shape).astype(np.float32)
  aff[0, 0, :3] = 1.0                   # aff == 1 exactly: the neg log stays finite (1e-5)
  loss, m = affinity_loss(jnp.asarray(aff), lab["bg"], lab["fg"], lab["neg"])
  want, bgl, fgl, negl = _np_loss(aff, lab["bg"], lab["fg"], lab["neg"])
  # float32 sums of ~2k logs vs float64: relative 1e-5 covers the reduction order.
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  np.testing.assert_allclose([float(m["bg_loss"]), float(m["fg_loss"]), float(m["neg_loss"])],
                             [bgl, fgl, negl], rtol=1e-5)
  for k in ("bg", "fg", "neg"):
    assert float(m[f"{k}_count"]) == lab[k].sum()
  # Joint over the batch, not a mean of per-image losses (images have different pair counts).
  per_image = np.mean([_np_loss(aff[i], lab["bg"][i], lab["fg"][i], lab["neg"][i])[0]
                       for i in range(3)])
  assert abs(per_image - want) > 1e-4


def test_loss_empty_kind_is_zero():
  aff = jnp.full((1, 4, 5), 0.5)
  zeros = np.zeros((1, 4, 5), np.float32)
  neg = np.ones((1, 4, 5), np.float32)
  loss, m = affinity_loss(aff, zeros, zeros, neg)
  assert float(m["bg_loss"]) == 0 and float(m["fg_loss"]) == 0
  # float32 log(0.50001) vs float64.
  np.testing.assert_allclose(float(loss), -np.log(0.50001) / 2 * 20 / (20 + 1e-5), rtol=1e-6)


def test_gradient_flows_to_features_not_labels():
  rng = np.random.default_rng(4)
  h, w = 12, 13
  f = jnp.asarray(rng.random((2, h, w, 5)), jnp.float32)
  maps = rng.choice(np.array([0, 1, 2, 255], np.uint8), size=(2, h, w))
  labels = [al.pair_labels(m, 5) for m in maps]
  lab = {k: np.stack([x[k] for x in labels]) for k in ("bg", "fg", "neg")}

  def loss_fn(feats, bg, fg, neg):
    return affinity_loss(pair_affinity(feats, 5), bg, fg, neg)[0]

  g_f, g_bg, g_fg, g_neg = jax.grad(loss_fn, argnums=(0, 1, 2, 3))(
      f, *(jnp.asarray(lab[k]) for k in ("bg", "fg", "neg")))
  g_f = np.asarray(g_f)
  assert np.all(np.isfinite(g_f)) and np.abs(g_f).max() > 0
  # Exactly the pixels in some counted pair get a gradient: never a 255 pixel (no kind counts a
  # pair with an ignored end), nor one whose partners are all 255 or that has no pair at all
  # (the top-left corner: left of the from window and above nothing).
  ind_from, ind_to = al.pair_indices(h, w, 5)
  want = np.zeros((2, h * w), bool)
  for i in range(2):
    counted = (lab["bg"][i] + lab["fg"][i] + lab["neg"][i]) > 0
    want[i, np.broadcast_to(ind_from, ind_to.shape)[counted]] = True
    want[i, ind_to[counted]] = True
  assert not np.any(want.reshape(2, h, w) & (maps == 255))
  np.testing.assert_array_equal(np.abs(g_f).sum(axis=-1) > 0, want.reshape(2, h, w))
  for g in (g_bg, g_fg, g_neg):
    assert not np.any(np.asarray(g))


def test_torch_oracle_affinity_and_loss():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(5)
  b, h, w, c = 2, 11, 12, 7
  f = rng.random((b, h, w, c)).astype(np.float32)
  lab = _batch_labels(rng, b, h, w)
  # The reference's forward: index_select the from / to pixels of the flattened NCHW map.
  ind_from, ind_to = al.pair_indices(h, w, 5)
  x = torch.from_numpy(f.transpose(0, 3, 1, 2).copy()).view(b, c, -1)
  ff = torch.index_select(x, 2, torch.from_numpy(ind_from.astype(np.int64))).unsqueeze(2)
  ft = torch.index_select(x, 2, torch.from_numpy(ind_to.reshape(-1).astype(np.int64)))
  ft = ft.view(b, c, -1, ff.size(3))
  aff_t = torch.exp(-torch.mean(torch.abs(ft - ff), dim=1))
  bg, fg, neg = (torch.from_numpy(lab[k]) for k in ("bg", "fg", "neg"))
  loss_t = (torch.sum(-bg * torch.log(aff_t + 1e-5)) / (torch.sum(bg) + 1e-5) / 4
            + torch.sum(-fg * torch.log(aff_t + 1e-5)) / (torch.sum(fg) + 1e-5) / 4
            + torch.sum(-neg * torch.log(1. + 1e-5 - aff_t)) / (torch.sum(neg) + 1e-5) / 2)
  aff = pair_affinity(jnp.asarray(f), 5)
  loss, _ = affinity_loss(aff, lab["bg"], lab["fg"], lab["neg"])
  # Both float32; only the 7-channel mean / batch sums may associate differently.
  np.testing.assert_allclose(np.asarray(aff), aff_t.numpy(), rtol=1e-6, atol=0)
  np.testing.assert_allclose(float(loss), float(loss_t), rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# AffinityNet
# ----------------------------------------------------------------------------------------------
TINY = dict(width_divisor=16, stage_blocks=(1, 1, 1, 1))


def _fill(shapes, seed=0):
  """Random variables of the given shapes without compiling init (conv U(+-sqrt(3/fan_in)))."""
  rng = np.random.default_rng(seed)
  out = {}
  for col, tree in shapes.items():
    flat = {}
    for path, v in flax.traverse_util.flatten_dict(tree).items():
      leaf, shp = path[-1], v.shape
      if leaf == "kernel":
        val = rng.uniform(-1, 1, shp) * math.sqrt(3.0 / np.prod(shp[:-1]))
      elif leaf in ("scale", "var"):
        val = rng.uniform(0.5, 1.5, shp)
      else:
        val = rng.normal(0, 0.2, shp)
      flat[path] = jnp.asarray(val, jnp.float32)
    out[col] = flax.traverse_util.unflatten_dict(flat)
  return out


def _shapes(model, shape):
  return jax.eval_shape(
      lambda: model.init({"params": jax.random.key(0)}, jnp.zeros(shape, jnp.float32)))


def test_registry_and_full_size_shapes():
  model = get_model("affinity_net")
  assert isinstance(model, AffinityNet)
  shapes = _shapes(model, (1, 448, 448, 3))
  params = shapes["params"]
  assert params["f8_3"]["kernel"].shape == (1, 1, 512, 64)
  assert params["f8_4"]["kernel"].shape == (1, 1, 1024, 128)
  assert params["f8_5"]["kernel"].shape == (1, 1, 4096, 256)
  assert params["f9"]["kernel"].shape == (1, 1, 448, 448)
  assert set(params) == {"backbone", "f8_3", "f8_4", "f8_5", "f9"}
  n_heads = sum(int(np.prod(leaf.shape)) for head in ("f8_3", "f8_4", "f8_5", "f9")
                for leaf in jax.tree.leaves(params[head]))
  assert n_heads == 32768 + 131072 + 1048576 + 200704
  out = jax.eval_shape(lambda v, x: model.apply(v, x), shapes,
                       jax.ShapeDtypeStruct((2, 448, 448, 3), jnp.float32))
  assert out["features"].shape == (2, 56, 56, 448)
  assert out["features"].dtype == jnp.float32
  # A padded VOC image (500x375 -> 504x376) gives the random walk's 63x47 map.
  out = jax.eval_shape(lambda v, x: model.apply(v, x), shapes,
                       jax.ShapeDtypeStruct((1, 376, 504, 3), jnp.float32))
  assert out["features"].shape == (1, 47, 63, 448)


def test_optimizer_groups():
  params = _shapes(get_model("affinity_net"), (1, 64, 64, 3))["params"]
  cfg = config_lib.optim_config(frozen=config_lib.AFFINITY_FROZEN, new=config_lib.AFFINITY_NEW)
  groups = {optim.path_str(p): g for p, g in
            jax.tree_util.tree_flatten_with_path(optim.param_groups(params, cfg))[0]}
  for head in ("f8_3", "f8_4", "f8_5", "f9"):
    assert groups[f"{head}/kernel"] == optim.NEW
  assert groups["backbone/conv1a/kernel"] == optim.FROZEN
  assert groups["backbone/b2_2/conv_branch2b1/kernel"] == optim.FROZEN
  assert groups["backbone/b3/bn_branch2a/scale"] == optim.FROZEN
  assert groups["backbone/bn7/bias"] == optim.FROZEN
  assert groups["backbone/b3/conv_branch2a/kernel"] == optim.BACKBONE
  assert groups["backbone/b7/conv_branch2b2/kernel"] == optim.BACKBONE


def test_initialisers_match_torch_statistics():
  key = jax.random.key(0)
  # kaiming_normal_ (fan_in, gain sqrt 2): std sqrt(2 / 4096) for f8_5.
  k = np.asarray(affinity_net.kaiming_normal(key, (1, 1, 4096, 256)))
  # 1M samples: the sample std is within 0.5% of the true one.
  np.testing.assert_allclose(k.std(), math.sqrt(2 / 4096), rtol=5e-3)
  # xavier_uniform_(gain=4): U(+-4 sqrt(6 / (448 + 448))) for f9.
  x = np.asarray(affinity_net.xavier_uniform_gain4(key, (1, 1, 448, 448)))
  bound = 4 * math.sqrt(6 / 896)
  assert np.abs(x).max() <= bound
  np.testing.assert_allclose(np.abs(x).max(), bound, rtol=1e-3)   # 200k samples reach the edge


def test_tiny_model_heads_and_output():
  model = AffinityNet(**TINY)
  x = np.random.default_rng(6).normal(size=(2, 40, 24, 3)).astype(np.float32)
  variables = _fill(_shapes(model, x.shape))
  out, state = jax.jit(lambda v, x: model.apply(v, x, capture_intermediates=True,
                                                mutable=["intermediates"]))(variables, x)
  feats = np.asarray(out["features"])
  assert feats.shape == (2, 5, 3, 28)                       # 448 / 16 channels
  assert np.all(np.isfinite(feats)) and feats.min() >= -1   # ELU output
  # Heads re-derived in numpy from the captured backbone taps: which tap feeds which head, the
  # concatenation order f8_3 | f8_4 | f8_5, ELU after every conv.
  taps = state["intermediates"]["backbone"]["__call__"][0]
  p = variables["params"]

  def elu(z):
    return np.where(z > 0, z, np.expm1(np.minimum(z, 0)))

  def conv(z, name):
    return np.einsum("bhwc,cd->bhwd", np.asarray(z, np.float64),
                     np.asarray(p[name]["kernel"][0, 0], np.float64))

  cat = np.concatenate([elu(conv(taps["conv4"], "f8_3")), elu(conv(taps["conv5"], "f8_4")),
                        elu(conv(taps["conv6"], "f8_5"))], axis=-1)
  want = elu(conv(cat, "f9"))
  # float32 1x1 convs (fan-in up to 256) against float64.
  np.testing.assert_allclose(feats, want, rtol=1e-4, atol=1e-5)
  # Train mode: the backbone's Dropout2d changes the features, the shape stays.
  out_tr = jax.jit(lambda v, x, k: model.apply(v, x, train=True, rngs={"dropout": k}))(
      variables, x, jax.random.key(1))
  assert out_tr["features"].shape == feats.shape
  assert not np.allclose(np.asarray(out_tr["features"]), feats)
