"""Winograd F(2x2, 3x3) convolutions (`ppc_jax.ops.winograd`) and the models' conv_algorithm switch.

The op is checked against a float64 numpy convolution written from the definition, with a
tolerance from the standard rounding-error bound of the algorithm (below); its gradients against
float64 numpy gradients; the models' Winograd path against XLA's convolutions and, through the
torch oracle of test_models.py, against the reference network.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppc_jax.models import AffinityNet, DeepLab, ResNet38, SeamNet
from ppc_jax.models.resnet38 import uses_winograd
from ppc_jax.ops.winograd import conv3x3_winograd, kernel_transform

# One worker: its tests share the module fixture (two compiled initialisations).
pytestmark = pytest.mark.xdist_group("winograd")

EPS32 = np.finfo(np.float32).eps

# The 1-D F(2, 3) transforms, written here again from Lavin & Gray (2016), for the bound.
BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float64)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)


def numpy_conv(x, w, d):
  """The definition: y[n, i, j, k] = sum_{a, b, c} x[n, i + d(a-1), j + d(b-1), c] w[a, b, c, k]."""
  x, w = x.astype(np.float64), w.astype(np.float64)
  n, h, wd, _ = x.shape
  xp = np.pad(x, ((0, 0), (d, d), (d, d), (0, 0)))
  y = np.zeros((n, h, wd, w.shape[3]))
  for a in range(3):
    for b in range(3):
      y += xp[:, a * d:a * d + h, b * d:b * d + wd] @ w[a, b]
  return y


def winograd_error_bound(x, w, d):
  """First-order bound on |winograd(x, w) - conv(x, w)| in float32, per output.

  Every output is A^T [sum_c (G g G^T) * (B^T D B)] A of its 4x4 input patch D (rows / columns
  2d*t + s + d*u of the input padded by d). Standard rounding analysis (Higham, ch. 3): a value
  computed through a chain of m roundings carries a relative error of at most m * eps against
  its inputs' absolute values, so the error is at most m * eps times the same pipeline run on
  absolute values with absolute transform matrices. The longest chain: 4 additions of the input
  transform (2 per axis), 6 of the kernel transform (2 additions and one halving per axis), one
  product, C - 1 additions of the channel sum, 4 additions of the output transform, so m = C + 15.
  """
  x, w = np.abs(x.astype(np.float64)), np.abs(w.astype(np.float64))
  n, h, wd, c = x.shape
  th, tw = -(-h // (2 * d)), -(-wd // (2 * d))
  xp = np.pad(x, ((0, 0), (d, 2 * d * th + d - h), (d, 2 * d * tw + d - wd), (0, 0)))
  i = np.arange(h)
  rows = (2 * d * (i // (2 * d)) + i % d)[:, None] + d * np.arange(4)   # [h, 4]: patch rows
  p = (i % (2 * d)) // d                                                 # output row in tile
  j = np.arange(wd)
  cols = (2 * d * (j // (2 * d)) + j % d)[:, None] + d * np.arange(4)
  q = (j % (2 * d)) // d
  patch = xp[:, rows[:, None, :, None], cols[None, :, None, :]]          # [n, h, w, 4, 4, c]
  v = np.einsum("iu,nhwuvc,jv->nhwijc", np.abs(BT), patch, np.abs(BT))
  u = np.einsum("ia,abck,jb->ijck", np.abs(G), w, np.abs(G))
  m = np.einsum("nhwijc,ijck->nhwijk", v, u)
  at = np.abs(AT)
  bound = np.einsum("hi,nhwijk,wj->nhwk", at[p], m, at[q])
  return (c + 15) * EPS32 * bound


@pytest.mark.parametrize("hw,d", [
    ((1, 1), 1), ((2, 3), 1), ((5, 7), 1), ((8, 8), 1), ((13, 6), 2), ((9, 10), 2),
    ((7, 11), 3), ((5, 4), 4), ((17, 9), 4),
])
def test_winograd_matches_the_definition_within_its_error_bound(hw, d):
  rng = np.random.default_rng(sum(hw) * 10 + d)
  x = rng.normal(size=(2, *hw, 6)).astype(np.float32)
  w = rng.normal(size=(3, 3, 6, 5)).astype(np.float32) / np.sqrt(54)
  got = np.asarray(jax.jit(conv3x3_winograd, static_argnums=2)(x, w, d))
  want = numpy_conv(x, w, d)
  bound = winograd_error_bound(x, w, d)
  assert got.shape == want.shape == (2, *hw, 5)
  # A transform that mixed up a row, a column or a phase would err by O(1), ~1e5 times the bound.
  assert np.all(np.abs(got - want) <= bound), float(np.max(np.abs(got - want) - bound))


def test_winograd_bound_is_tight_enough_to_catch_a_wrong_tap():
  """The bound above must not be so loose that a small slip passes: one kernel tap off by 1e-3
  (far below the data's scale of 1) breaks it."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1, 6, 6, 4)).astype(np.float32)
  w = rng.normal(size=(3, 3, 4, 3)).astype(np.float32) / 6
  w_bad = w.copy()
  w_bad[2, 1, 0, 0] += 1e-3
  got = np.asarray(conv3x3_winograd(jnp.asarray(x), jnp.asarray(w_bad), 1))
  assert np.any(np.abs(got - numpy_conv(x, w, 1)) > winograd_error_bound(x, w, 1))


def test_kernel_transform_matches_numpy():
  w = np.random.default_rng(1).normal(size=(3, 3, 2, 3)).astype(np.float32)
  want = np.einsum("ia,abck,jb->ijck", G, w.astype(np.float64), G)
  # Each entry: at most 9 taps, each times two G entries (|G| <= 1; halving is exact), summed:
  # at most 8 roundings, so |error| <= 8 eps sum |w| (Higham's gamma_8, first order).
  np.testing.assert_allclose(np.asarray(kernel_transform(jnp.asarray(w))), want, rtol=0,
                             atol=8 * EPS32 * np.abs(w).sum(axis=(0, 1)).max())


@pytest.mark.parametrize("d", [1, 2])
def test_winograd_gradients_match_numpy(d):
  """d/dx and d/dw of <conv(x, w), ct>, against float64 numpy (both operands get gradients)."""
  rng = np.random.default_rng(d)
  n, h, wd, c, k = 2, 7, 6, 4, 3
  x = rng.normal(size=(n, h, wd, c)).astype(np.float32)
  w = rng.normal(size=(3, 3, c, k)).astype(np.float32) / 6
  ct = rng.normal(size=(n, h, wd, k)).astype(np.float32)
  gx, gw = jax.jit(jax.grad(lambda x, w: jnp.vdot(conv3x3_winograd(x, w, d), ct),
                            argnums=(0, 1)))(x, w)
  # The definition's adjoints: dx[n, i', j', c] = sum ct[n, i, j, k] w[a, b, c, k] over the
  # (i, j, a, b) with i' = i + d(a-1), j' = j + d(b-1); dw[a, b] = sum_{n,i,j} xp[...]^T ct.
  xp = np.pad(x.astype(np.float64), ((0, 0), (d, d), (d, d), (0, 0)))
  want_gw = np.zeros((3, 3, c, k))
  want_gxp = np.zeros_like(xp)
  for a in range(3):
    for b in range(3):
      patch = xp[:, a * d:a * d + h, b * d:b * d + wd]
      want_gw[a, b] = np.einsum("nhwc,nhwk->ck", patch, ct)
      want_gxp[:, a * d:a * d + h, b * d:b * d + wd] += ct.astype(np.float64) @ w[a, b].T
  want_gx = want_gxp[:, d:d + h, d:d + wd]
  # Each gradient entry is a float32 sum of at most n*h*w*k*9 = 2,268 products, through transforms
  # like those above. Its typical rounding error (random signs) is about sqrt(2,268) * 2**-24 ~ 3e-6
  # of the partial sums' scale, itself about the largest entry (measured here: <= 2.1e-7 of it):
  # 1e-4 of the largest entry leaves a margin of ~30 over the typical error, while a wrong adjoint
  # (a tap, phase or transpose mixed up) errs by O(1) of it.
  for got, want in ((gx, want_gx), (gw, want_gw)):
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-4 * np.abs(want).max())
    assert np.abs(np.asarray(got)).max() > 0


def test_winograd_rejects_bad_shapes():
  with pytest.raises(ValueError, match="kernel input channels 3 != x channels 4"):
    conv3x3_winograd(jnp.zeros((1, 4, 4, 4)), jnp.zeros((3, 3, 3, 2)))
  with pytest.raises(ValueError, match=r"\[3, 3, C, K\]"):
    conv3x3_winograd(jnp.zeros((1, 4, 4, 4)), jnp.zeros((1, 1, 4, 2)))
  with pytest.raises(ValueError, match="dilation must be >= 1"):
    conv3x3_winograd(jnp.zeros((1, 4, 4, 4)), jnp.zeros((3, 3, 4, 2)), 0)


def test_conv_algorithm_policy():
  common = dict(kernel=3, stride=1, in_channels=512, out_channels=1024, min_channels=256,
                train=False)
  f32, bf16 = jnp.float32, jnp.bfloat16
  assert uses_winograd("auto", dtype=f32, backend="cpu", **common)
  assert not uses_winograd("auto", dtype=f32, backend="gpu", **common)
  assert not uses_winograd("auto", dtype=f32, backend="tpu", **common)
  assert not uses_winograd("auto", dtype=bf16, backend="cpu", **common)
  # Training keeps XLA's convolutions under 'auto' (Winograd's backward is slower on XLA:CPU).
  assert not uses_winograd("auto", dtype=f32, backend="cpu", **dict(common, train=True))
  assert uses_winograd("winograd", dtype=f32, backend="cpu", **dict(common, train=True))
  assert not uses_winograd("direct", dtype=f32, backend="cpu", **common)
  assert uses_winograd("winograd", dtype=bf16, backend="gpu", **common)
  # Never for strided, 1x1 or too narrow convolutions.
  for change in (dict(stride=2), dict(kernel=1), dict(in_channels=128), dict(out_channels=255)):
    assert not uses_winograd("winograd", dtype=f32, backend="cpu", **dict(common, **change))
  with pytest.raises(ValueError, match="conv_algorithm must be one of"):
    uses_winograd("fast", dtype=f32, backend="cpu", **common)


def _conv_kernel_sizes(fn, *args):
  """Spatial kernel sizes of every conv_general_dilated in fn's jaxpr (nested jaxprs included)."""
  sizes = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "conv_general_dilated":
        sizes.append(tuple(eqn.invars[1].aval.shape[:2]))
      for sub in jax.core.jaxprs_in_params(eqn.params):
        walk(sub)

  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return sizes


@pytest.fixture(scope="module")
def tiny_pair():
  """A small SeamNet with XLA's and with Winograd convolutions (every eligible conv), one set of
  variables (the same parameter tree for both), an input, jitted forwards."""
  kw = dict(width_divisor=16, stage_blocks=(1, 1, 2, 2), proj_dim=16)
  direct = SeamNet(**kw, conv_algorithm="direct")
  wino = SeamNet(**kw, conv_algorithm="winograd", winograd_min_channels=1)
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 37, 30, 3)), jnp.float32)
  # One program for both: XLA merges their identical random initialisers, which take most of an
  # init's compile time.
  variables, wino_vars = jax.jit(lambda k, x: (direct.init(k, x), wino.init(k, x)))(
      jax.random.key(0), x)
  return direct, wino, variables, wino_vars, x


def test_winograd_model_has_the_same_parameters(tiny_pair):
  _, _, variables, wino_vars, _ = tiny_pair
  # Same names, shapes and (the same initialiser at the same paths) values: checkpoints, torch
  # weights and converters serve both algorithms.
  jax.tree.map(np.testing.assert_array_equal, variables, wino_vars)


def test_winograd_switch_replaces_the_stride1_3x3_convs(tiny_pair):
  direct, wino, variables, _, x = tiny_pair
  k_direct = _conv_kernel_sizes(direct.apply, variables, x)
  k_wino = _conv_kernel_sizes(wino.apply, variables, x)
  # 3x3 convs: conv1a; 2 in b2, 2 in b3, 4 in b4 + b4_1; 4 in b5 + b5_1; 1 in b6; 1 in b7. The
  # stride-2 ones that open b2, b3 and b4 stay XLA's; every other one becomes Winograd.
  assert k_direct.count((3, 3)) == 1 + 2 + 2 + 4 + 4 + 1 + 1
  assert k_wino.count((3, 3)) == 3
  assert k_wino.count((1, 1)) == k_direct.count((1, 1))


def test_winograd_model_matches_direct_and_its_gradients(tiny_pair):
  direct, wino, variables, _, x = tiny_pair

  def loss(model, params, x):
    out = model.apply({**variables, "params": params}, x)
    return jnp.sum(out["cam"] ** 2) + jnp.sum(out["cam_rv"] ** 2) + jnp.sum(out["proj"])

  f_direct = jax.jit(jax.value_and_grad(functools.partial(loss, direct)))
  f_wino = jax.jit(jax.value_and_grad(functools.partial(loss, wino)))
  (l_d, g_d), (l_w, g_w) = f_direct(variables["params"], x), f_wino(variables["params"], x)
  # ~20 convolutions deep: each layer's float32 rounding (direct ~1e-7, Winograd a few 1e-7
  # relative) compounds to ~1e-5 relative at the output; 1e-4 of each tensor's largest entry
  # leaves a margin of 10, while a wrong tap or phase anywhere moves outputs by O(1).
  np.testing.assert_allclose(float(l_w), float(l_d), rtol=1e-4)
  jax.tree_util.tree_map_with_path(
      lambda path, gd, gw: np.testing.assert_allclose(
          np.asarray(gw), np.asarray(gd), rtol=0, atol=1e-4 * max(float(np.abs(gd).max()), 1e-30),
          err_msg=jax.tree_util.keystr(path)),
      g_d, g_w)


def test_auto_is_winograd_in_cpu_inference_only_where_eligible():
  model = ResNet38(width_divisor=16, stage_blocks=(1, 1, 1, 1), conv_algorithm="auto")
  x = jnp.zeros((1, 24, 24, 3))
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  # 11 3x3 convs at width 1/16: conv1a, 2 per block of b2, b3, b4, b5, then b6 and b7. The widest
  # is b7's, 64 -> 128 channels: below the default 256, so 'auto' keeps XLA's everywhere.
  assert jax.default_backend() == "cpu"
  assert _conv_kernel_sizes(model.apply, variables, x).count((3, 3)) == 11
  # With the threshold at 64 only b7's qualifies (b6's is 32 -> 64, b5's 32 -> 32 and 32 -> 64).
  wide = model.clone(winograd_min_channels=64)
  assert _conv_kernel_sizes(wide.apply, variables, x).count((3, 3)) == 10
  # ... in forward-only passes: a training pass keeps XLA's.
  train_fn = lambda v, x: wide.apply(v, x, train=True, rngs={"dropout": jax.random.key(1)})
  assert _conv_kernel_sizes(train_fn, variables, x).count((3, 3)) == 11


@pytest.mark.parametrize("cls,kwargs", [
    (SeamNet, dict(proj_dim=8)),
    (AffinityNet, {}),
    (DeepLab, dict(backbone="resnet38", head="v1")),
])
def test_every_resnet38_model_passes_the_switch_to_its_backbone(cls, kwargs):
  kw = dict(kwargs, width_divisor=16, stage_blocks=(1, 1, 1, 1))
  x = jnp.zeros((1, 24, 24, 3))
  direct = cls(**kw, conv_algorithm="direct")
  variables = jax.eval_shape(direct.init, jax.random.key(0), x)
  n_direct = _conv_kernel_sizes(direct.apply, variables, x).count((3, 3))
  wino = cls(**kw, conv_algorithm="winograd", winograd_min_channels=1)
  # The backbone's 11 3x3 convs less the 3 stride-2 ones (DeepLab's head keeps its own).
  assert n_direct - _conv_kernel_sizes(wino.apply, variables, x).count((3, 3)) == 8


def test_deeplab_resnet101_refuses_winograd():
  model = DeepLab(backbone="resnet101", layers=(1, 1, 1, 1), width_divisor=16,
                  conv_algorithm="winograd")
  with pytest.raises(ValueError, match="resnet38 backbone only"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 24, 24, 3)))
