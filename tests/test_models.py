"""ResNet38 / SeamNet: torch-oracle parity, PCM re-derivation, gradient flow, dropout, sizes."""

import functools
import math
import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppc_jax import weights
from ppc_jax.config_lib import model_config, optim_config
from ppc_jax.models import ResNet38, SeamNet, build_model, get_model
from ppc_jax.seeds.seam_net import cam_d_norm, l2_norm, pcm

TINY = dict(width_divisor=16, stage_blocks=(1, 1, 1, 1))


def var_shapes(model, shape):
  """Variable shapes of `model` (jax.ShapeDtypeStruct leaves), no compile."""
  return jax.eval_shape(
      lambda: model.init({"params": jax.random.key(0)}, jnp.zeros(shape, jnp.float32)))


def init_vars(model, shape, seed=0):
  """Random variables for `model` without compiling its init.

  `model.init` under jit spends ~10-20 s of XLA compile on this CPU in the threefry code of its
  ~70 initialisers, so the tests take the variable *shapes* from eval_shape and fill them with
  numpy: conv kernels U(+-sqrt(3/fan_in)) (unit gain), BN scale/bias/mean/var random (instead
  of the identity init, so that a BN mix-up cannot hide in the parity tests).
  """
  shapes = var_shapes(model, shape)
  rng = np.random.default_rng(seed)
  out = {}
  for col, tree in shapes.items():
    new = {}
    for path, v in flax.traverse_util.flatten_dict(tree).items():
      leaf, shp = path[-1], v.shape
      if leaf == "kernel":
        bound = math.sqrt(3.0 / np.prod(shp[:-1]))
        val = rng.uniform(-bound, bound, shp)
      elif col == "params" and leaf == "scale":
        val = rng.uniform(0.5, 1.5, shp)
      elif col == "params" and leaf == "bias":
        val = rng.normal(0, 0.2, shp)
      elif leaf == "mean":
        val = rng.normal(0, 0.2, shp)
      elif leaf == "var":
        val = rng.uniform(0.5, 2.0, shp)
      else:
        raise AssertionError(f"unexpected variable {col}/{'/'.join(path)}")
      new[path] = jnp.asarray(val, jnp.float32)
    out[col] = flax.traverse_util.unflatten_dict(new)
  return out


# ----------------------------------------------------------------------------------------------
# Independent torch re-implementation (the oracle), written from METHOD.md 1.1 / 2.1 / 2.2.
# ----------------------------------------------------------------------------------------------
def torch_reference_classes(torch):
  nn, F = torch.nn, torch.nn.functional

  class TResBlock(nn.Module):

    def __init__(self, cin, mid, cout, stride=1, first_dilation=None, dilation=1):
      super().__init__()
      fd = dilation if first_dilation is None else first_dilation
      self.same_shape = cin == cout and stride == 1
      self.bn_branch2a = nn.BatchNorm2d(cin)
      self.conv_branch2a = nn.Conv2d(cin, mid, 3, stride, padding=fd, dilation=fd, bias=False)
      self.bn_branch2b1 = nn.BatchNorm2d(mid)
      self.conv_branch2b1 = nn.Conv2d(mid, cout, 3, padding=dilation, dilation=dilation,
                                      bias=False)
      if not self.same_shape:
        self.conv_branch1 = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
      a = F.relu(self.bn_branch2a(x))
      b1 = x if self.same_shape else self.conv_branch1(a)
      b2 = self.conv_branch2b1(F.relu(self.bn_branch2b1(self.conv_branch2a(a))))
      return b1 + b2, a

  class TResBlockBot(nn.Module):

    def __init__(self, cin, cout, stride=1, dilation=1, dropout=0.0):
      super().__init__()
      self.bn_branch2a = nn.BatchNorm2d(cin)
      self.conv_branch2a = nn.Conv2d(cin, cout // 4, 1, stride, bias=False)
      self.bn_branch2b1 = nn.BatchNorm2d(cout // 4)
      self.dropout_2b1 = nn.Dropout2d(dropout)
      self.conv_branch2b1 = nn.Conv2d(cout // 4, cout // 2, 3, padding=dilation,
                                      dilation=dilation, bias=False)
      self.bn_branch2b2 = nn.BatchNorm2d(cout // 2)
      self.dropout_2b2 = nn.Dropout2d(dropout)
      self.conv_branch2b2 = nn.Conv2d(cout // 2, cout, 1, bias=False)
      self.conv_branch1 = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
      a = F.relu(self.bn_branch2a(x))
      b2 = self.conv_branch2a(a)
      b2 = self.dropout_2b1(F.relu(self.bn_branch2b1(b2)))
      b2 = self.conv_branch2b1(b2)
      b2 = self.dropout_2b2(F.relu(self.bn_branch2b2(b2)))
      return self.conv_branch1(a) + self.conv_branch2b2(b2), a

  class TResNet38(nn.Module):

    def __init__(self, wd, stage_blocks):
      super().__init__()
      c = lambda n: n // wd  # noqa: E731
      self.conv1a = nn.Conv2d(3, c(64), 3, padding=1, bias=False)
      self.order = []
      cin = c(64)
      specs = {2: (128, 128), 3: (256, 256), 4: (512, 512), 5: (512, 1024)}
      for stage, n in zip((2, 3, 4, 5), stage_blocks):
        mid, cout = c(specs[stage][0]), c(specs[stage][1])
        for i in range(n):
          name = f"b{stage}" if i == 0 else f"b{stage}_{i}"
          if stage < 5:
            blk = TResBlock(cin, mid, cout, stride=2 if i == 0 else 1)
          elif i == 0:
            blk = TResBlock(cin, mid, cout, 1, first_dilation=1, dilation=2)
          else:
            blk = TResBlock(cin, mid, cout, dilation=2)
          setattr(self, name, blk)
          self.order.append(name)
          cin = cout
      self.b6 = TResBlockBot(c(1024), c(2048), dilation=4, dropout=0.3)
      self.b7 = TResBlockBot(c(2048), c(4096), dilation=4, dropout=0.5)
      self.bn7 = nn.BatchNorm2d(c(4096))

    def forward_as_dict(self, x):
      x = self.conv1a(x)
      d = {}
      for name in self.order:
        x, a = getattr(self, name)(x)
        if name == "b4":
          d["conv3"] = a
        if name == "b5":
          d["conv4"] = a
      x, d["conv5"] = self.b6(x)
      x, _ = self.b7(x)
      d["conv6"] = F.relu(self.bn7(x))
      return d

  class TSeamNet(TResNet38):

    def __init__(self, wd, stage_blocks, proj_dim):
      super().__init__(wd, stage_blocks)
      self.dropout7 = nn.Dropout2d(0.5)
      self.fc8 = nn.Conv2d(4096 // wd, 21, 1, bias=False)
      self.fc_proj = nn.Conv2d(4096 // wd, proj_dim, 1, bias=False)
      n3, n4, n9 = max(1, 64 // wd), max(1, 128 // wd), max(1, 192 // wd)
      self.f8_3 = nn.Conv2d(512 // wd, n3, 1, bias=False)
      self.f8_4 = nn.Conv2d(1024 // wd, n4, 1, bias=False)
      self.f9 = nn.Conv2d(3 + n3 + n4, n9, 1, bias=False)

    def forward(self, x):
      H, W = x.shape[2:]
      d = self.forward_as_dict(x)
      fea = self.dropout7(d["conv6"])
      f_proj = F.relu(self.fc_proj(fea))
      cam = self.fc8(fea)
      n, c, h, w = cam.shape
      with torch.no_grad():
        cam_d = F.relu(cam.detach())
        cam_d_max = torch.max(cam_d.view(n, c, -1), dim=-1)[0].view(n, c, 1, 1) + 1e-5
        cdn = F.relu(cam_d - 1e-5) / cam_d_max
        cdn[:, 0] = 1 - torch.max(cdn[:, 1:], dim=1)[0]
        fg_max = torch.max(cdn[:, 1:], dim=1, keepdim=True)[0]
        cdn[:, 1:][cdn[:, 1:] < fg_max] = 0
      cam_rv_down = self.pcm(x, d, cdn)
      cam_rv = F.interpolate(cam_rv_down, (H, W), mode="bilinear", align_corners=True)
      cam_up = F.interpolate(cam, (H, W), mode="bilinear", align_corners=True)
      return dict(cam=cam_up, cam_rv=cam_rv, proj=f_proj, cam_rv_down=cam_rv_down,
                  cam_down=cam, features=d)

    def pcm(self, x, d, cdn):
      """Net.PCM after cam_d_norm: cdn [n, c, h, w] propagated by the f9 affinity."""
      n, c, h, w = cdn.shape
      f8_3 = F.relu(self.f8_3(d["conv4"].detach()))
      f8_4 = F.relu(self.f8_4(d["conv5"].detach()))
      x_s = F.interpolate(x, (h, w), mode="bilinear", align_corners=True)
      f = self.f9(torch.cat([x_s, f8_3, f8_4], dim=1)).view(n, -1, h * w)
      f = f / (torch.norm(f, dim=1, keepdim=True) + 1e-5)
      aff = F.relu(torch.matmul(f.transpose(1, 2), f))
      aff = aff / (torch.sum(aff, dim=1, keepdim=True) + 1e-5)
      return torch.matmul(cdn.view(n, c, h * w), aff).view(n, c, h, w)

  return TResNet38, TSeamNet


def assert_close(got, want, tol=1e-4):
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape, (got.shape, want.shape)
  scale = max(1.0, float(np.abs(want).max()))
  np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)


def nchw_to_nhwc(t):
  return t.detach().numpy().transpose(0, 2, 3, 1)


# 'winograd' with winograd_min_channels=1: every stride-1 3x3 conv by ops.winograd (the CPU
# inference default at full width), against the same torch oracle and tolerance. The shallow
# net has every kind of conv the deep one has (each stride and dilation), so the deep one, whose
# Winograd program alone takes longer to compile than this file's other tests, runs direct only.
@pytest.mark.parametrize("wd,blocks,hw,conv", [
    (16, (2, 1, 2, 2), (45, 37), "direct"),     # odd sizes: padding / stride / ceil arithmetic
    (16, (2, 1, 2, 2), (45, 37), "winograd"),
    (32, (3, 3, 6, 3), (40, 33), "direct"),     # the reference depth and names, thin
])
def test_backbone_matches_torch_oracle(wd, blocks, hw, conv):
  torch = pytest.importorskip("torch")
  TResNet38, _ = torch_reference_classes(torch)
  model = ResNet38(width_divisor=wd, stage_blocks=blocks, conv_algorithm=conv,
                   winograd_min_channels=1)
  variables = init_vars(model, (1, *hw, 3), seed=1)
  ref = TResNet38(wd, blocks).eval()
  sd = weights.to_torch_state_dict(variables, backbone_scope=None)
  ref.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)

  x = np.random.default_rng(3).normal(size=(2, *hw, 3)).astype(np.float32)
  got = jax.jit(model.apply)(variables, jnp.asarray(x))
  with torch.no_grad():
    want = ref.forward_as_dict(torch.from_numpy(x.transpose(0, 3, 1, 2)))
  for k in ("conv3", "conv4", "conv5", "conv6"):
    assert_close(got[k], nchw_to_nhwc(want[k]))
  assert got["conv6"].shape[1:3] == (math.ceil(hw[0] / 8), math.ceil(hw[1] / 8))


@pytest.mark.parametrize("conv", ["direct", "winograd"])
def test_seamnet_forward_matches_torch_oracle(conv):
  torch = pytest.importorskip("torch")
  _, TSeamNet = torch_reference_classes(torch)
  blocks, hw, proj = (2, 1, 1, 2), (50, 43), 16
  model = SeamNet(width_divisor=16, stage_blocks=blocks, proj_dim=proj, conv_algorithm=conv,
                  winograd_min_channels=1)
  variables = init_vars(model, (1, *hw, 3), seed=4)
  ref = TSeamNet(16, blocks, proj).eval()
  sd = weights.to_torch_state_dict(variables)
  ref.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)

  x = np.random.default_rng(6).normal(size=(2, *hw, 3)).astype(np.float32)
  got = jax.jit(model.apply)(variables, jnp.asarray(x))
  with torch.no_grad():
    want = ref(torch.from_numpy(x.transpose(0, 3, 1, 2)))
  for k in ("cam", "cam_rv", "proj", "cam_rv_down", "cam_down"):
    assert_close(got[k], nchw_to_nhwc(want[k]))
  assert got["cam"].shape == (2, *hw, 21)
  assert got["cam_rv_down"].shape == (2, 7, 6, 21)
  assert set(got) == {"cam", "cam_rv", "cam_down", "cam_rv_down", "proj", "features"}
  assert set(got["features"]) == {"conv3", "conv4", "conv5", "conv6"}


# ----------------------------------------------------------------------------------------------
# cam_d_norm and PCM against a numpy re-derivation (NCHW loops, as the prose of METHOD.md 2.2).
# ----------------------------------------------------------------------------------------------
def numpy_cam_d_norm(cam_nhwc):
  cam = cam_nhwc.transpose(0, 3, 1, 2).astype(np.float64)  # [N, C, h, w]
  n, c, _, _ = cam.shape
  out = np.zeros_like(cam)
  for i in range(n):
    for k in range(c):
      cd = np.maximum(cam[i, k], 0)
      out[i, k] = np.maximum(cd - 1e-5, 0) / (cd.max() + 1e-5)
    fg = out[i, 1:].copy()
    fg_max = fg.max(axis=0)
    out[i, 0] = 1 - fg_max
    for k in range(1, c):
      keep = out[i, k] >= fg_max  # values equal to the max survive
      out[i, k] = np.where(keep, out[i, k], 0)
  return out.transpose(0, 2, 3, 1)


def numpy_pcm(cam_nhwc, g_nhwc):
  n, h, w, c = cam_nhwc.shape
  out = np.zeros((n, c, h * w))
  for i in range(n):
    cam = cam_nhwc[i].astype(np.float64).reshape(h * w, c).T        # [C, hw]
    f = g_nhwc[i].astype(np.float64).reshape(h * w, -1).T           # [D, hw]
    f = f / (np.sqrt((f ** 2).sum(0, keepdims=True)) + 1e-5)
    aff = np.maximum(f.T @ f, 0)                                     # [hw, hw]
    for j in range(h * w):
      aff[:, j] /= aff[:, j].sum() + 1e-5
    out[i] = cam @ aff
  return out.reshape(n, c, h, w).transpose(0, 2, 3, 1)


def test_cam_d_norm_and_pcm_match_numpy_with_ties():
  rng = np.random.default_rng(0)
  cam = rng.normal(size=(2, 4, 5, 21)).astype(np.float32)
  cam[..., 7] = cam[..., 3]          # identical fg maps: the WTA keeps both winners
  cam[..., 11] = -np.abs(cam[..., 11]) - 0.1   # never active: divided by 1e-5, stays 0
  cam[0, :, :, 1:] = cam[0, :, :, 1:].max() + 1.0   # image 0: one flat max map for all fg
  want = numpy_cam_d_norm(cam)
  got = np.asarray(jax.jit(cam_d_norm)(jnp.asarray(cam)))
  np.testing.assert_allclose(got, want, atol=1e-6)
  # The tie really occurred where channel 3 wins, and both tied channels kept their value.
  wins3 = got[1, ..., 3] > 0
  assert wins3.any() and np.array_equal(got[1, ..., 7], got[1, ..., 3])
  assert (got[0, ..., 1:] > 0).all()  # all 20 tied in image 0

  g = rng.normal(size=(2, 4, 5, 12)).astype(np.float32)
  g[1, 2, 3] = 0.0   # a zero pixel: safe norm, no NaN
  want_rv = numpy_pcm(want, g)
  cam_in = jnp.asarray(want, jnp.float32)
  got_rv, grad = jax.jit(lambda v: (pcm(cam_in, v),
                                    jax.grad(lambda u: jnp.sum(pcm(cam_in, u) ** 2))(v)))(
                                        jnp.asarray(g))
  np.testing.assert_allclose(np.asarray(got_rv), want_rv, rtol=1e-5, atol=1e-5)
  assert np.isfinite(np.asarray(grad)).all()


def test_cam_d_norm_divides_like_torch():
  # Two classes peaking at the same pixel: (m - 1e-5) / (m + 1e-5) for these two maxima are one
  # float32 ulp apart under true division (torch) but equal under XLA's x * (1 / m) rewrite,
  # which would wrongly keep both winners.
  cam = np.full((1, 2, 2, 3), 0.1, np.float32)
  cam[0, 0, 0, 1], cam[0, 0, 0, 2] = 0.22314733, 0.22333714
  got = np.asarray(jax.jit(cam_d_norm)(jnp.asarray(cam)))
  assert got[0, 0, 0, 1] == 0 and got[0, 0, 0, 2] > 0
  np.testing.assert_allclose(got, numpy_cam_d_norm(cam), atol=1e-7)


def test_l2_norm_safe_at_zero():
  x = jnp.array([[0.0, 0.0], [3.0, 4.0]])
  n, g = jax.jit(lambda v: (l2_norm(v), jax.grad(lambda u: jnp.sum(l2_norm(u)))(v)))(x)
  np.testing.assert_allclose(np.asarray(n), [[0.0], [5.0]])
  np.testing.assert_allclose(np.asarray(g), [[0.0, 0.0], [0.6, 0.8]], atol=1e-7)


# ----------------------------------------------------------------------------------------------
# Gradient flow, dropout.
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
  """A tiny SeamNet, its variables, an input and jitted eval / train forwards (compiled once)."""
  model = SeamNet(**TINY, proj_dim=32)
  variables = init_vars(model, (1, 32, 32, 3), seed=7)
  x = jnp.asarray(np.random.default_rng(9).normal(size=(4, 32, 32, 3)), jnp.float32)
  fwd_eval = jax.jit(functools.partial(model.apply, train=False))
  fwd_train = jax.jit(lambda v, x, key: model.apply(v, x, train=True, rngs={"dropout": key}))
  return model, variables, x, fwd_eval, fwd_train


def test_gradient_flow_pcm_touches_only_pcm_layers(tiny):
  model, variables, x, _, _ = tiny

  def grads(params):
    # train=True: dropout on, the training configuration. One forward, two pull-backs.
    out, pull = jax.vjp(lambda p: model.apply({**variables, "params": p}, x, train=True,
                                               rngs={"dropout": jax.random.key(0)}), params)
    ramp = lambda a: jnp.linspace(-1.0, 1.0, a.size).reshape(a.shape)  # noqa: E731
    zeros = jax.tree.map(jnp.zeros_like, out)
    return (pull({**zeros, "cam_rv": ramp(out["cam_rv"])})[0],
            pull({**zeros, "cam": ramp(out["cam"]), "proj": ramp(out["proj"])})[0])

  grads = jax.jit(grads)(variables["params"])
  from_rv, from_cam_proj = (
      {k for k, v in flax.traverse_util.flatten_dict(g, sep="/").items()
       if np.abs(np.asarray(v)).max() > 0} for g in grads)
  pcm_keys = {"f8_3/kernel", "f8_4/kernel", "f9/kernel"}
  # A loss on cam_rv reaches neither the backbone (conv4/conv5 detached) nor fc8 / fc_proj.
  assert from_rv == pcm_keys
  # cam / proj do train the backbone and their heads, and never the PCM layers.
  assert {"fc8/kernel", "fc_proj/kernel", "backbone/conv1a/kernel",
          "backbone/b7/conv_branch2b2/kernel"} <= from_cam_proj
  assert not from_cam_proj & pcm_keys


def test_freeze_stem_cuts_backward_of_conv1a_and_b2():
  plain = ResNet38(**TINY)
  frozen = ResNet38(**TINY, freeze_stem=True)
  variables = init_vars(plain, (1, 32, 32, 3), seed=12)
  x = jnp.asarray(np.random.default_rng(13).normal(size=(2, 32, 32, 3)), jnp.float32)

  def grads(model):
    # conv3 (b4's input) keeps the graph small; everything after it is dead code.
    def loss(params):
      return jnp.sum(model.apply({**variables, "params": params}, x)["conv3"] ** 2)
    return jax.grad(loss)(variables["params"])

  g_plain, g_frozen = jax.jit(lambda: (grads(plain), grads(frozen)))()
  for g, stem_trains in ((g_plain, True), (g_frozen, False)):
    flat = flax.traverse_util.flatten_dict(g, sep="/")
    nonzero = {k for k, v in flat.items() if np.abs(np.asarray(v)).max() > 0}
    assert bool([k for k in nonzero if re.match(r"(conv1a|b2)/", k)]) == stem_trains
    assert "b3/conv_branch2a/kernel" in nonzero


def _eye_heads(variables, c6):
  """fc8 / fc_proj that copy conv6 channel k to output k (to see the dropout mask)."""
  params = dict(variables["params"])
  params["fc8"] = {"kernel": jnp.eye(c6, 21).reshape(1, 1, c6, 21)}
  params["fc_proj"] = {"kernel": jnp.eye(c6, 32).reshape(1, 1, c6, 32)}
  return {**variables, "params": params}


def test_dropout_mask_shared_by_fc8_and_fc_proj(tiny):
  _, variables, x, _, fwd_train = tiny
  variables = _eye_heads(variables, 4096 // TINY["width_divisor"])
  tr = fwd_train(variables, x, jax.random.key(1))
  conv6 = np.asarray(tr["features"]["conv6"])[..., :21]  # this call's conv6 (b6/b7 dropout on)
  cam, proj = np.asarray(tr["cam_down"]), np.asarray(tr["proj"])
  # Same channels dropped for both heads (conv6 >= 0, so relu(proj) == proj on these channels).
  np.testing.assert_allclose(proj[..., :21], cam, rtol=1e-6, atol=1e-6)
  live = np.abs(conv6).max(axis=(1, 2)) > 0                     # [B, 21] channels with signal
  dropped = np.abs(cam).max(axis=(1, 2)) == 0                   # [B, 21] whole-channel zeros
  kept = live & ~dropped
  assert (dropped & live).any() and kept.any()
  # Kept channels are scaled by 1 / (1 - 0.5) = 2, dropped ones are zero everywhere.
  mask = kept[:, None, None, :]
  np.testing.assert_allclose(cam * mask, 2 * conv6 * mask, rtol=1e-5, atol=1e-6)
  # One Bernoulli draw per (example, channel): the examples' masks differ.
  assert len({tuple(d) for d in dropped}) > 1


def test_dropout_only_in_train(tiny):
  _, variables, x, fwd_eval, fwd_train = tiny
  variables = _eye_heads(variables, 4096 // TINY["width_divisor"])
  ev = fwd_eval(variables, x)  # no rng given: would raise if any dropout were active
  # No mask and no 1/(1-p) scaling on conv6 in eval.
  np.testing.assert_allclose(np.asarray(ev["cam_down"]),
                             np.asarray(ev["features"]["conv6"])[..., :21], rtol=1e-6, atol=1e-6)
  t1 = fwd_train(variables, x, jax.random.key(0))
  t2 = fwd_train(variables, x, jax.random.key(1))
  assert not np.array_equal(np.asarray(t1["cam"]), np.asarray(t2["cam"]))
  # b6 / b7 dropout is active in train mode too (conv6 itself changes).
  assert not np.array_equal(np.asarray(t1["features"]["conv6"]),
                            np.asarray(ev["features"]["conv6"]))


def test_upsample_flag_and_no_proj(tiny):
  model, variables, x, _, _ = tiny
  out = jax.eval_shape(functools.partial(model.apply, upsample=False), variables, x)
  assert "cam" not in out and "cam_rv" not in out and out["cam_down"].shape == (4, 4, 4, 21)
  no_proj = SeamNet(**TINY, proj_dim=None)
  v = var_shapes(no_proj, (1, 32, 32, 3))
  assert "fc_proj" not in v["params"]
  out = jax.eval_shape(no_proj.apply, v, x)
  assert "proj" not in out


# ----------------------------------------------------------------------------------------------
# The full model, through jax.eval_shape only.
# ----------------------------------------------------------------------------------------------
def _count(tree, pred=lambda path: True):
  flat = flax.traverse_util.flatten_dict(tree, sep="/")
  return sum(int(np.prod(v.shape)) for k, v in flat.items() if pred(k))


def test_full_model_parameter_counts():
  model = build_model(model_config())
  v = var_shapes(model, (1, 64, 64, 3))
  params, stats = v["params"], v["batch_stats"]
  is_bb = lambda k: k.startswith("backbone/")  # noqa: E731
  assert _count(params, lambda k: is_bb(k) and k.endswith("/kernel")) == 105_023_168
  assert _count(params, lambda k: is_bb(k) and not k.endswith("/kernel")) == 47_744
  assert _count(stats) == 47_744  # running mean + var
  heads = {"fc8": 86_016, "f8_3": 32_768, "f8_4": 131_072, "f9": 37_440, "fc_proj": 524_288}
  for name, n in heads.items():
    assert _count(params[name]) == n, name
  assert sum(heads.values()) - heads["fc_proj"] == 287_296
  # METHOD.md 10.6 counts torch *parameters* (no BN buffers): 'params' only.
  assert _count(params) == 105_882_496
  # Trainable = minus conv1a, b2* and every BN affine, with the optimiser's own frozen regex.
  frozen = re.compile(optim_config().groups.frozen.match)
  assert _count(params, lambda k: not frozen.search(k)) == 105_013_824


@pytest.mark.parametrize("hw", [(448, 448), (128, 128), (134, 134), (375, 500)])
def test_full_model_output_sizes(hw):
  model = SeamNet()
  v = var_shapes(model, (1, 64, 64, 3))
  out = jax.eval_shape(lambda p: model.apply(p, jnp.zeros((2, *hw, 3))), v)
  h, w = (math.ceil(n / 8) for n in hw)
  assert out["cam"].shape == out["cam_rv"].shape == (2, *hw, 21)
  assert out["cam_down"].shape == out["cam_rv_down"].shape == (2, h, w, 21)
  assert out["proj"].shape == (2, h, w, 128)
  f = out["features"]
  assert f["conv3"].shape == (2, math.ceil(hw[0] / 4), math.ceil(hw[1] / 4), 256)
  assert f["conv4"].shape == (2, h, w, 512)
  assert f["conv5"].shape == (2, h, w, 1024)
  assert f["conv6"].shape == (2, h, w, 4096)


def test_coco_sized_head_shapes_through_model_and_objective():
  """81 classes (COCO: background + 80): the full-size model's head, every output and the full
  SEAM+PPC objective take their class count from the config, with no compute (eval_shape)."""
  from ppc_jax.config_lib import loss_config  # pylint: disable=import-outside-toplevel
  from ppc_jax.seeds.losses import objective  # pylint: disable=import-outside-toplevel
  cfg = model_config()
  cfg.num_classes = 81
  model = build_model(cfg)
  v = var_shapes(model, (1, 64, 64, 3))
  assert v["params"]["fc8"]["kernel"].shape == (1, 1, 4096, 81)
  # fc8 is the only layer whose size depends on the class count: 81 / 21 of VOC's 86,016 weights.
  assert _count(v["params"]["fc8"]) == 86_016 * 81 // 21
  rng = jax.random.key(0)
  views = [jnp.zeros((2, 448, 448, 3)), jnp.zeros((2, 128, 128, 3))]
  out1, out2 = (jax.eval_shape(lambda p, x: model.apply(p, x, train=True, rngs={"dropout": rng}),
                               v, x) for x in views)
  assert out1["cam"].shape == out1["cam_rv"].shape == (2, 448, 448, 81)
  assert out2["cam_rv_down"].shape == (2, 16, 16, 81)
  loss, metrics = jax.eval_shape(
      functools.partial(objective.objective, config=loss_config("seam_ppc")),
      out1, out2, jnp.zeros((2, 80)), rng)
  assert loss.shape == () and metrics["loss_intra"].shape == ()
  with pytest.raises(ValueError, match=r"labels \(2, 20\) need CAMs with 21 channels"):
    jax.eval_shape(functools.partial(objective.objective, config=loss_config("seam_ppc")),
                   out1, out2, jnp.zeros((2, 20)), rng)


def test_registry():
  assert isinstance(get_model("seam_net", width_divisor=8), SeamNet)
  assert isinstance(get_model("resnet38"), ResNet38)
  with pytest.raises(ValueError, match="unknown model 'nope'.*seam_net"):
    get_model("nope")
  with pytest.raises(ValueError, match="no setting.*widht_divisor"):
    get_model("seam_net", widht_divisor=8)
  cfg = model_config(width_divisor=16, proj_dim=None)
  m = build_model(cfg)
  assert (m.width_divisor, m.proj_dim, tuple(m.stage_blocks)) == (16, None, (3, 3, 6, 3))
  with pytest.raises(ValueError, match="width_divisor"):
    var_shapes(SeamNet(width_divisor=3), (1, 32, 32, 3))
