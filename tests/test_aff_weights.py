"""AffinityNet weights in the reference layout 'aff', both ways, and the random walk they drive.

* `layouts` / `weights`: a reference AffinityNet state_dict (PSA / wseg `resnet38_aff.Net`: heads
  f8_3, f8_4, f8_5, f9, no fc8) is detected as 'aff', imports strictly into `AffinityNet` and
  exports back to itself; it is refused by a stage-1 model and a stage-1 checkpoint by AffinityNet
  (even with strict=False), and head sets that fit no network keep a clear error.
* `python -m ppc_jax.convert`: a seeded torch re-implementation of `resnet38_aff.Net`, saved with
  `torch.save` (DataParallel's `module.` prefix included), imports into a work directory with an
  AffinityNet config, and the exported `.pth` loads into the torch network with strict=True and
  equals the original.
* `ppc_jax.refine.rw_infer` on the converted work directory writes the masks of the reference's
  `aff_infer.py` loop (re-stated in torch below, on the same weights, images and cam_dicts), pixel
  for pixel apart from near-ties bounded by the error analysis at `_score_bound`.
"""

import os
import subprocess
import sys

import flax
import jax
import numpy as np
import PIL.Image
import pytest

import e2e_fixtures as e2e
import test_convert
from test_models import torch_reference_classes

from ppc_jax import config_lib
from ppc_jax import layouts
from ppc_jax import models
from ppc_jax import restore
from ppc_jax import train_state
from ppc_jax import weights
from ppc_jax.data import synth
from ppc_jax.data import voc
from ppc_jax.data import voc_meta
from ppc_jax.ops.resize import resize_bilinear
from ppc_jax.refine import random_walk as rw
from ppc_jax.refine import rw_infer
from ppc_jax.data import cam_io

pytestmark = pytest.mark.xdist_group("convert")

# The tiny AffinityNet of these tests (the same widths on both sides): heads 4 / 8 / 16, f9 28.
WD, BLOCKS = 16, (1, 1, 1, 1)
AFF_HEADS = ("f8_3.weight", "f8_4.weight", "f8_5.weight", "f9.weight")


# ------------------------------------------------------------------------------------------------
# The reference network and inference loop, re-stated in torch.
# ------------------------------------------------------------------------------------------------


def ref_pair_indices(h, w, radius=5):
  """The reference's pairs (METHOD 11.8) as (from [P], to [D * P]) flat indices, offset-major.

  Offsets: the half-disc dy > 0 or (dy == 0, dx > 0) with dx^2 + dy^2 < r^2, r shrunk to
  (min(h, w) - 1) // 2 below 2 * radius + 1. From pixels: not in the last r - 1 rows, nor in the
  first / last r - 1 columns.
  """
  r = (min(h, w) - 1) // 2 if min(h, w) < 2 * radius + 1 else radius
  m = r - 1
  offsets = [(dy, dx) for dy in range(r) for dx in range(-m, r)
             if (dy > 0 or dx > 0) and dx * dx + dy * dy < r * r]
  ys, xs = np.mgrid[0:h - m, m:w - m]
  ind_from = (ys * w + xs).reshape(-1)
  ind_to = np.concatenate([((ys + dy) * w + xs + dx).reshape(-1) for dy, dx in offsets])
  return ind_from.astype(np.int64), ind_to.astype(np.int64)


def torch_aff_net(torch, wd=WD, blocks=BLOCKS):
  """`resnet38_aff.Net` on tests/test_models.py's ResNet38 oracle, widths divided by wd as
  `AffinityNet(width_divisor=wd)` divides them (f8_* floored at 1, f9 square)."""
  nn, F = torch.nn, torch.nn.functional
  TResNet38, _ = torch_reference_classes(torch)

  class TAffNet(TResNet38):

    def __init__(self):
      super().__init__(wd, blocks)
      n3, n4, n5 = (max(1, c // wd) for c in (64, 128, 256))
      self.f8_3 = nn.Conv2d(512 // wd, n3, 1, bias=False)
      self.f8_4 = nn.Conv2d(1024 // wd, n4, 1, bias=False)
      self.f8_5 = nn.Conv2d(4096 // wd, n5, 1, bias=False)
      self.f9 = nn.Conv2d(n3 + n4 + n5, n3 + n4 + n5, 1, bias=False)
      for head in (self.f8_3, self.f8_4, self.f8_5):
        nn.init.kaiming_normal_(head.weight)
      nn.init.xavier_uniform_(self.f9.weight, gain=4)

    def features(self, x):
      d = self.forward_as_dict(x)
      f = torch.cat([F.elu(self.f8_3(d["conv4"])), F.elu(self.f8_4(d["conv5"])),
                     F.elu(self.f8_5(d["conv6"]))], dim=1)
      return F.elu(self.f9(f))

    def forward(self, x, to_dense=False):
      """Pair affinities exp(-mean_c |f_from - f_to|) [1, D, P]; to_dense: the symmetric
      [N, N] matrix with a unit diagonal, built as the reference does (sparse -> dense)."""
      f = self.features(x)
      n = f.shape[2] * f.shape[3]
      ind_from, ind_to = (torch.from_numpy(i) for i in ref_pair_indices(f.shape[2], f.shape[3]))
      f = f.view(f.shape[0], f.shape[1], -1)
      ff = torch.index_select(f, 2, ind_from).unsqueeze(2)
      ft = torch.index_select(f, 2, ind_to).view(f.shape[0], f.shape[1], -1, ff.shape[3])
      aff = torch.exp(-torch.mean(torch.abs(ft - ff), dim=1))
      if not to_dense:
        return aff
      from_exp = ind_from.unsqueeze(0).expand(ft.shape[2], -1).reshape(-1)
      idx = torch.cat([torch.stack([from_exp, ind_to]), torch.stack([torch.arange(n)] * 2),
                       torch.stack([ind_to, from_exp])], dim=1)
      vals = aff.reshape(-1)
      return torch.sparse_coo_tensor(idx, torch.cat([vals, torch.ones(n), vals]), (n, n),
                                     check_invariants=True).to_dense()

  return TAffNet


def seeded_aff_net(torch, seed=0, f9_scale=1.0):
  """A TAffNet with seeded weights and non-trivial frozen BN statistics, in eval mode; f9's
  weights times f9_scale (a larger feature contrast, as training gives)."""
  torch.manual_seed(seed)
  net = torch_aff_net(torch)()
  with torch.no_grad():
    net.f9.weight.mul_(f9_scale)
  test_convert._randomise_bn(torch, net, seed + 1)  # pylint: disable=protected-access
  return net.eval()


def reference_aff_infer(torch, net, image, cam_dict, num_fg, *, beta=8, logt=6, bg=0.27):
  """wseg `aff_infer.py`'s loop for one image (METHOD 4.3, 11.10): normalise, zero-pad to a
  multiple of 8, dense affinity ** beta, / column sums, logt squarings; CAM array with the
  present classes at k + 1 and bg 0.27 set before its zero padding, avg_pool2d 8, cam_vec @ T,
  bilinear Upsample (align_corners=False) to the padded size, crop. Returns the scores
  [num_fg + 1, H, W] (the masks are their argmax) and the walk's first factor P [N, N]."""
  F = torch.nn.functional
  hh, ww = image.shape[:2]
  x = np.empty(image.shape, np.float32)
  for c in range(3):
    x[..., c] = (image[..., c] / 255. - voc_meta.IMAGENET_MEAN[c]) / voc_meta.IMAGENET_STD[c]
  ph, pw = -hh % 8, -ww % 8
  x = F.pad(torch.from_numpy(x.transpose(2, 0, 1).copy())[None], (0, pw, 0, ph))
  h, w = x.shape[2] // 8, x.shape[3] // 8
  cam = np.zeros((num_fg + 1, hh, ww), np.float32)
  for k, v in cam_dict.items():
    cam[k + 1] = v
  cam[0] = bg
  cam = np.pad(cam, ((0, 0), (0, ph), (0, pw)))
  with torch.no_grad():
    aff = torch.pow(net(x, to_dense=True), beta)
    trans = aff / torch.sum(aff, dim=0, keepdim=True)
    first = trans.numpy().copy()
    for _ in range(logt):
      trans = torch.matmul(trans, trans)
    cam_vec = F.avg_pool2d(torch.from_numpy(cam), 8, 8).reshape(num_fg + 1, -1)
    cam_rw = torch.matmul(cam_vec, trans).view(1, num_fg + 1, h, w)
    up = F.interpolate(cam_rw, (8 * h, 8 * w), mode="bilinear", align_corners=False)
  return up[0, :, :hh, :ww].numpy(), first


# ------------------------------------------------------------------------------------------------
# Layouts on their own (numpy only).
# ------------------------------------------------------------------------------------------------


def _random_variables(model_config, seed=0):
  """Distinct random values for every variable of a tiny model (a swapped entry shows)."""
  net = models.build_model(model_config)
  shapes = jax.eval_shape(lambda r: train_state.init_variables(net, r, (16, 16, 3)),
                          jax.random.PRNGKey(0))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)


def _aff_model_config():
  cfg = config_lib.affinity_model_config(width_divisor=WD)
  cfg.stage_blocks = BLOCKS
  return cfg


def _seam_model_config(**kw):
  cfg = config_lib.model_config()
  cfg.update(dict(width_divisor=WD, stage_blocks=BLOCKS, proj_dim=None), **kw)
  return cfg


def _flat(tree):
  return flax.traverse_util.flatten_dict(tree)


def test_aff_layout_detect_import_export():
  """ppc_jax's AffinityNet names are the reference's: the exported dict is the reference layout
  'aff' (f8_5 a head beside f8_3, not a backbone layer), detected with or without `module.`,
  imported strictly, and exported back to the same dict."""
  variables = _random_variables(_aff_model_config())
  assert set(variables["params"]) == {"backbone", "f8_3", "f8_4", "f8_5", "f9"}
  ref = weights.to_reference_state_dict(variables, "aff")
  assert not any(k.startswith(("fc8", "backbone")) for k in ref)
  assert set(AFF_HEADS) <= set(ref)
  assert ref["f8_5.weight"].shape == (256 // WD, 4096 // WD, 1, 1)
  assert ref["f9.weight"].shape == (28, 28, 1, 1)
  for prefix in ("", "module."):   # PSA / wseg save model.module.state_dict(); DataParallel not
    sd = {prefix + k: v for k, v in ref.items()}
    assert layouts.detect(weights.normalise_keys(sd)) == "aff"
    got, name = weights.from_reference_state_dict(sd, template=variables)
    assert name == "aff"
    flat_got, flat_want = _flat(got), _flat(variables)
    assert set(flat_got) == set(flat_want)
    for k, v in flat_want.items():
      np.testing.assert_array_equal(flat_got[k], v, err_msg=str(k))
    back = weights.to_reference_state_dict(got, "aff")
    assert set(back) == set(ref)
    for k, v in ref.items():
      np.testing.assert_array_equal(back[k], v, err_msg=k)
  assert layouts.for_model(_aff_model_config(), "ppc") == "aff"
  # An ImageNet backbone still initialises AffinityNet (the heads keep their values).
  backbone = {k: v for k, v in ref.items() if k not in AFF_HEADS}
  got, name = weights.from_reference_state_dict(backbone, template=variables)
  assert name == "backbone"


def test_aff_layout_refusals_name_the_layout():
  """An AffinityNet checkpoint never loads into a stage-1 model, nor a stage-1 checkpoint into
  AffinityNet (their f8_3 / f8_4 / f9 share names only), strict or not; head sets that fit no
  network keep a clear error."""
  aff_vars = _random_variables(_aff_model_config())
  seam_vars = _random_variables(_seam_model_config())
  aff_sd = weights.to_reference_state_dict(aff_vars, "aff")
  seam_sd = weights.to_reference_state_dict(seam_vars, "seam")
  for strict in (True, False):
    with pytest.raises(ValueError, match=r"the 'aff' checkpoint \(PSA's / wseg's resnet38_aff"
                       r".*does not fit a model that is not an AffinityNet.*'affinity_net'"):
      weights.from_reference_state_dict(aff_sd, template=seam_vars, strict=strict)
    with pytest.raises(ValueError, match=r"the 'seam' checkpoint .*does not fit an AffinityNet"
                       r".*'seam_net'"):
      weights.from_reference_state_dict(seam_sd, template=aff_vars, strict=strict)
  with pytest.raises(ValueError, match=r"has heads \['f8_3', 'f8_4', 'f8_5', 'f9'\], but the "
                     r"'seam' layout"):
    weights.from_reference_state_dict(aff_sd, template=seam_vars, layout="seam")
  # Export: each network only to its own layout.
  with pytest.raises(ValueError, match=r"the model has no \['f8_5'\], which the 'aff' layout"):
    weights.to_reference_state_dict(seam_vars, "aff")
  with pytest.raises(ValueError, match=r"the model has no \['fc8'\], which the 'seam' layout"):
    weights.to_reference_state_dict(aff_vars, "seam")
  # detect(): the PCM's three heads without f8_5 and without fc8 fit nothing; f8_5 only with
  # exactly AffinityNet's other heads.
  pcm_only = {k: v for k, v in aff_sd.items() if not k.startswith("f8_5")}
  with pytest.raises(ValueError, match=r"heads \['f8_3', 'f8_4', 'f9'\] without fc8: no "
                     r"reference network looks like this"):
    layouts.detect(pcm_only)
  with pytest.raises(ValueError, match=r"f8_5 is AffinityNet's"):
    layouts.detect(dict(aff_sd, **{"fc8.weight": seam_sd["fc8.weight"]}))
  with pytest.raises(ValueError, match=r"heads \['f8_4', 'f8_5', 'f9'\]: f8_5 is AffinityNet's"):
    layouts.detect({k: v for k, v in aff_sd.items() if not k.startswith("f8_3")})
  assert layouts.model_settings("aff") == {"name": "affinity_net"}


# ------------------------------------------------------------------------------------------------
# A reference AffinityNet file through `python -m ppc_jax.convert`, and its random walk.
# ------------------------------------------------------------------------------------------------

# Two images: feature maps 13x10 (the radius shrinks to 4) and 12x13 (radius 5). Plain
# backgrounds and one colour per class: piecewise-smooth features, so that the walk of random
# weights stays local enough to leave objects in the masks.
SYNTH = dict(num_train_aug=2, num_train=2, num_val=0, min_size=72, max_size=104,
             aspect_range=(0.75, 1.0), classes=("aeroplane", "bird", "car", "person"), seed=3,
             clutter=0.0, class_colours=True)
# Fresh AffinityNet features (xavier gain 4) differ little between pixels: pair affinities of
# 0.83-0.99, which 64 walk steps mix into one label per image. x16 spreads a^8 over ~1e-5..0.05.
F9_SCALE = 16.0
# configs/aff_demo.py (the random walk's beta 8, logt 6, bg 0.27 of wseg) at the tiny widths.
CONFIG_FLAGS = (f"--config.model.width_divisor={WD}",
                f"--config.model.stage_blocks=({','.join(map(str, BLOCKS))})")


def _aff_demo_config(data_dir):
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location(
      "aff_demo_config", os.path.join(e2e.ROOT, "configs", "aff_demo.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.model.width_divisor = WD           # as CONFIG_FLAGS
  config.model.stage_blocks = BLOCKS
  config.input.data_dir = data_dir
  config.progress_bar = False
  return config


def _convert_cli(cache_dir, *args):
  result = subprocess.run(
      [sys.executable, "-m", "ppc_jax.convert", *map(str, args),
       f"--config={os.path.join(e2e.ROOT, 'configs', 'aff_demo.py')}", *CONFIG_FLAGS],
      cwd=e2e.ROOT, env=e2e.subprocess_env(cache_dir, 1), capture_output=True, text=True,
      timeout=e2e.PROCESS_TIMEOUT_S, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


@pytest.fixture(scope="session")
def converted(tmp_path_factory, cache_dir):
  """A seeded reference AffinityNet saved by torch as DataParallel does, imported by the CLI."""
  torch = pytest.importorskip("torch")
  tmp = tmp_path_factory.mktemp("convert_aff")
  net = seeded_aff_net(torch, seed=0, f9_scale=F9_SCALE)
  pth = tmp / "res38_aff.pth"
  torch.save({"module." + k: v for k, v in net.state_dict().items()}, str(pth))
  workdir = tmp / "work"
  stdout = _convert_cli(cache_dir, pth, workdir)
  root = synth.generate(str(tmp / "voc"), **SYNTH)
  return dict(torch=torch, net=net, pth=pth, workdir=str(workdir), stdout=stdout, tmp=tmp,
              config=_aff_demo_config(root))


@pytest.mark.integration  # the converter's command line, in a subprocess
def test_cli_round_trip_of_a_reference_affinitynet(converted, cache_dir):
  """Import detects 'aff' and writes step 0; export gives back the file, loadable with
  strict=True into the reference network."""
  torch, net = converted["torch"], converted["net"]
  assert '"layout": "aff"' in converted["stdout"]
  assert e2e.checkpoint_steps(converted["workdir"]) == [0]
  _, state = restore.restore_state(converted["config"], converted["workdir"])
  params = jax.device_get(state["params"])
  np.testing.assert_array_equal(params["f8_5"]["kernel"][0, 0],
                                net.f8_5.weight.detach().numpy()[:, :, 0, 0].T)
  assert "f8_5" not in params["backbone"]

  back_path = converted["tmp"] / "res38_aff_back.pth"
  stdout = _convert_cli(cache_dir, converted["workdir"], back_path)
  assert '"layout": "aff"' in stdout
  back = torch.load(str(back_path), weights_only=True)
  fresh = torch_aff_net(torch)()
  fresh.load_state_dict(back, strict=True)
  want = net.state_dict()
  assert set(back) == set(want)
  for key, value in want.items():
    assert torch.equal(back[key], value), key


def _score_bound(first_err, n):
  """Bound on |ours - reference| of every random-walk score (upsampled, any pixel and channel),
  both walks in float32 (u = 2^-24, gamma_n = n u / (1 - n u)), to first order in the errors.

  first_err: the max column 1-norm of P_ours - P_ref, the walks' first factors (A^8 over its
  column sums), measured with one evaluation of ours; the features' differences end up there.
  Another evaluation order of ours (rw_infer's jitted one) moves P by <= 2 (gamma_n + 14 u) more
  per column: exp, the integer power (3 squarings, x8 on exp's error), the column sum, the
  division, on each of the two evaluations. n: feature pixels.
  * Squarings: with D_k = T_ours - T_ref after k of them, D_(k+1) = T_ours D_k + D_k T_ref + two
    roundings. Column-stochastic factors have 1-norm 1 and an fp32 product of two rounds by
    <= gamma_n per column in 1-norm, so ||D_(k+1)||_1 <= 2 ||D_k||_1 + 2 gamma_n, and after six
    ||D_6||_1 <= 64 ||D_0||_1 + 126 gamma_n. (The Dobrushin coefficients of P's powers, which
    could shrink the 64, are 1 - 1e-6 for these local walks.)
  * out[:, j] = sum_i cam[i] T[i, j] with 0 <= cam <= 1: |d out| <= ||D_6[:, j]||_1, plus
    gamma_n per side for this product and 64 u per side for the 8x8 means; the bilinear
    upsampling is a convex combination (4 u per side for its weights).
  Here it is 2.3e-3 and 2.9e-3, almost all worst-case rounding (the n-term sums); the scores of
  the two walks actually differ by ~2.3e-6.
  """
  u = 2.0 ** -24
  gamma = n * u / (1 - n * u)
  d0 = first_err + 2 * (gamma + 14 * u)
  return 64 * d0 + 128 * gamma + 2 * (64 + 4) * u


def _seed_like_cams(source, cam_dir, seed):
  """cam_dicts of the present classes: each GT object blurred, shifted and unevenly scaled (a
  CAM that the walk has something to correct), max-normalised."""
  from scipy import ndimage  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  for i, image_id in enumerate(source.ids):
    mask = source.mask(i)
    norm = np.zeros(mask.shape + (source.classes.num_fg,), np.float32)
    for k in np.flatnonzero(source.labels[i]):
      cam = ndimage.gaussian_filter((mask == k + 1).astype(np.float64), 4)
      cam = np.roll(cam, tuple(rng.integers(-6, 7, size=2)), axis=(0, 1))
      cam *= ndimage.gaussian_filter(rng.uniform(0.2, 1.0, mask.shape), 8)
      norm[..., k] = cam / cam.max()
    cam_io.save_cam_dict(os.path.join(cam_dir, image_id), norm, source.labels[i])


@pytest.mark.integration  # the converter's command line, in a subprocess
def test_random_walk_of_a_converted_affinitynet_equals_aff_infer(converted):
  """`rw_infer` on the converted work directory = the reference's aff_infer.py loop in torch on
  the same weights, images and cam_dicts, pixel for pixel outside the near-ties."""
  torch, net, config = converted["torch"], converted["net"], converted["config"]
  rc = config.refine
  assert (rc.beta, rc.logt, rc.bg_mode, rc.bg_value, rc.radius) == (8, 6, "constant", 0.27, 5)
  cam_dir = converted["tmp"] / "cams"
  cam_dir.mkdir()
  source = voc.VOCSource(config.input.data_dir, "train", need_masks=True)
  _seed_like_cams(source, str(cam_dir), seed=4)
  out_dir = converted["tmp"] / "rw"
  summary = rw_infer.run_random_walk(config, converted["workdir"], cam_dir=str(cam_dir),
                                     out_dir=str(out_dir), split="train", evaluate_masks=False)
  assert summary["computed"] == len(source.ids) == 2

  model, variables, _ = restore.restore_variables(config, converted["workdir"])
  apply = jax.jit(lambda v, x: model.apply(v, x[None])["features"][0])
  num_fg = source.classes.num_fg
  feature_sizes = []
  for i, image_id in enumerate(source.ids):
    with PIL.Image.open(source.image_paths[i]) as im:
      image = np.asarray(im.convert("RGB"))
    cam_dict = cam_io.load_cam_dict(os.path.join(cam_dir, image_id + ".npz"), num_fg)
    want, ref_first = reference_aff_infer(torch, net, image, cam_dict, num_fg)
    want = want.transpose(1, 2, 0)
    with PIL.Image.open(os.path.join(out_dir, "masks", image_id + ".png")) as im:
      got_mask = np.asarray(im)

    # Our scores step by step, to check the bound the near-ties are taken from.
    padded = np.asarray(rw.pad_to_multiple(voc_meta.normalize(image)))
    feats = np.asarray(apply(variables, padded))
    with torch.no_grad():
      ref_feats = net.features(torch.from_numpy(padded.transpose(2, 0, 1).copy())[None])
    ref_feats = ref_feats[0].numpy().transpose(1, 2, 0)
    feature_err = float(np.abs(feats - ref_feats).max())
    assert feature_err < 1e-4 * max(1.0, float(np.abs(ref_feats).max()))
    h, w = feats.shape[:2]
    feature_sizes.append((h, w))
    cam_fg = rw_infer.cam_fg_array(cam_dict, image.shape[:2], num_fg)
    aff = rw.dense_affinity(feats)
    first_err = float(np.abs(np.asarray(rw.transition_matrix(aff, logt=0)) - ref_first)
                      .sum(axis=0).max())
    out = rw.random_walk(rw.rw_input_cam(cam_fg), rw.transition_matrix(aff))
    got = np.asarray(resize_bilinear(out[None], (8 * h, 8 * w), align_corners=False)[0])
    got = got[:image.shape[0], :image.shape[1]]
    bound = _score_bound(first_err, h * w)
    assert np.abs(got - want).max() <= bound, (image_id, np.abs(got - want).max(), bound)

    # Masks: equal wherever the reference's top two scores are more than 2 bounds apart (beyond
    # that, no pair of score vectors within the bound can order them differently).
    top2 = np.sort(want, axis=-1)[..., -2:]
    sure = top2[..., 1] - top2[..., 0] > 2 * bound
    assert sure.mean() > 0.95, (image_id, sure.mean())   # measured 0.973 and 0.987
    np.testing.assert_array_equal(got_mask[sure], np.argmax(want, axis=-1)[sure],
                                  err_msg=image_id)
    # Not vacuous: several labels, and the walk moved some of them.
    no_walk = np.argmax(np.asarray(resize_bilinear(
        rw.rw_input_cam(cam_fg)[None], (8 * h, 8 * w), align_corners=False)[0])[
            :image.shape[0], :image.shape[1]], axis=-1)
    allowed = {0} | {k + 1 for k in np.flatnonzero(source.labels[i])}
    labels = set(np.unique(got_mask).tolist())
    assert labels <= allowed and 0 in labels and len(labels) >= 2, (image_id, labels)
    assert (got_mask != no_walk).mean() > 0.05, image_id   # measured 0.20 and 0.13
  assert sorted(feature_sizes) == [(12, 13), (13, 10)], feature_sizes   # radius 5, and 4
