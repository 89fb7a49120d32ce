"""`python -m ppc_jax.convert` and the reference key layouts (ppc_jax.layouts).

The CAM test is the one that matters: weights saved by a torch re-implementation of the reference
network (tests/test_models.py's oracle, seeded, with `module.` prefixes as DataParallel saves
them) go through the command into a work directory, `ppc_jax.seeds.infer` evaluates that directory,
and its CAM dicts equal the reference's multi-scale inference loop run in torch on the same
weights and images (METHOD 4.1).
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
from test_models import torch_reference_classes

from ppc_jax.data import cam_io
from ppc_jax import convert
from ppc_jax import restore
from ppc_jax.seeds import infer
from ppc_jax import layouts
from ppc_jax import models
from ppc_jax import train_state
from ppc_jax import weights
from ppc_jax.data import voc

pytestmark = pytest.mark.xdist_group("convert")

# Min-max normalised CAMs lie in [-1, 1]; the forward passes agree to ~1e-6 relative (fp32
# summation order in the convs of two libraries, test_models.py), which the per-class
# normalisation by (max - min) amplifies by at most 1/range (>= 0.05 here): 1e-4 as there.
CAM_TOL = 1e-4


def _torch():
  return pytest.importorskip("torch")


def _randomise_bn(torch, net, seed):
  """Non-trivial frozen BN statistics and affine parameters (defaults would be identities)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        n = m.num_features
        m.weight.copy_(0.5 + torch.rand(n, generator=gen))
        m.bias.copy_(0.1 * torch.randn(n, generator=gen))
        m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
        m.running_var.copy_(0.5 + torch.rand(n, generator=gen))


def _eps_nets(torch, wd, blocks, proj_dim):
  """The `esp` branch's two networks on the oracle backbone: resnet38_eps.Net (fc8 only) and
  resnet38_contrast.Net (fc8, proj_fc, PCM), background LAST, no dropout7, nothing upsampled."""
  nn, F = torch.nn, torch.nn.functional
  TResNet38, TSeamNet = torch_reference_classes(torch)

  class TEps(TResNet38):

    def __init__(self):
      super().__init__(wd, blocks)
      self.fc8 = nn.Conv2d(4096 // wd, 21, 1, bias=False)

    def forward(self, x):
      return dict(cam=self.fc8(self.forward_as_dict(x)["conv6"]))

  class TEspContrast(TSeamNet):
    """SEAM's layers (its PCM reused) with esp's names and background-last cam_d_norm."""

    def __init__(self):
      super().__init__(wd, blocks, proj_dim)
      self.proj_fc = self.fc_proj
      del self.fc_proj, self.dropout7

    def forward(self, x):
      d = self.forward_as_dict(x)
      cam = self.fc8(d["conv6"])
      n, c, _, _ = cam.shape
      with torch.no_grad():
        cam_d = F.relu(cam.detach())
        cam_d_max = torch.max(cam_d.view(n, c, -1), dim=-1)[0].view(n, c, 1, 1) + 1e-5
        cdn = F.relu(cam_d - 1e-5) / cam_d_max
        cdn[:, -1] = 1 - torch.max(cdn[:, :-1], dim=1)[0]
        cam_max = torch.max(cdn[:, :-1], dim=1, keepdim=True)[0]
        cdn[:, :-1][cdn[:, :-1] < cam_max] = 0
      return dict(cam=cam, cam_rv=self.pcm(x, d, cdn), proj=F.relu(self.proj_fc(d["conv6"])))

  return TEps, TEspContrast


def _save_reference(torch, net, path, prefix="module."):
  """torch.save of the net's state_dict as the reference scripts save it (DataParallel)."""
  torch.save({prefix + k: v for k, v in net.state_dict().items()}, str(path))


def _config(tmp_path_factory, **model):
  config = e2e.tiny_config(e2e.synth_root(tmp_path_factory))
  config.model.update(model)
  return config


def _reference_multiscale_cams(torch, net, source, scales):
  """The reference's seed inference (contrast_infer.py / infer_SEAM.py, METHOD 4.1), in torch:
  PIL-bicubic scales with Python's round, + flips, cam_rv resized (align_corners=False) to the
  image, x labels, un-flipped, summed, clipped at 0, per-class min-max normalised."""
  F = torch.nn.functional
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  out = {}
  for i, path in enumerate(source.image_paths):
    with PIL.Image.open(path) as im:
      img = im.convert("RGB")
    w, h = img.size
    labels = source.labels[i]
    total = 0.0
    for s in scales:
      scaled = np.asarray(img.resize((round(w * s), round(h * s)), PIL.Image.BICUBIC))
      x = ((scaled / 255.0 - mean) / std).astype(np.float32).transpose(2, 0, 1)
      for flip in (False, True):
        xi = np.ascontiguousarray(x[:, :, ::-1] if flip else x)[None]
        with torch.no_grad():
          cam = net(torch.from_numpy(xi))["cam_rv"]
          cam = F.interpolate(cam[:, 1:], (h, w), mode="bilinear", align_corners=False)
        cam = cam[0].numpy() * labels[:, None, None]
        total = total + (cam[:, :, ::-1] if flip else cam)
    x = np.maximum(total, 0).astype(np.float32)
    lo = x.min(axis=(1, 2), keepdims=True)
    hi = x.max(axis=(1, 2), keepdims=True)
    x = np.where(x < lo + 1e-5, 0, x)
    norm = (x - lo - 1e-5) / (hi - lo + 1e-5)
    out[source.ids[i]] = {c: norm[c] for c in np.flatnonzero(labels)}
  return out


def test_cams_from_a_converted_reference_checkpoint_equal_the_reference(tmp_path_factory,
                                                                         cache_dir):
  """SEAM+PPC reference weights -> `python -m ppc_jax.convert` -> `ppc_jax.seeds.infer` = torch."""
  torch = _torch()
  _, TSeamNet = torch_reference_classes(torch)
  config = _config(tmp_path_factory)
  torch.manual_seed(0)
  net = TSeamNet(config.model.width_divisor, config.model.stage_blocks,
                 config.model.proj_dim).eval()
  _randomise_bn(torch, net, seed=1)
  tmp = tmp_path_factory.mktemp("convert_cams")
  pth = tmp / "resnet38_contrast.pth"
  _save_reference(torch, net, pth)
  config_file = e2e.write_config_file(config, tmp / "config.py")
  workdir = tmp / "converted"

  result = subprocess.run(
      [sys.executable, "-m", "ppc_jax.convert", str(pth), str(workdir), f"--config={config_file}"],
      cwd=e2e.ROOT, env=e2e.subprocess_env(cache_dir, 1), capture_output=True, text=True,
      timeout=e2e.PROCESS_TIMEOUT_S, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert '"layout": "ppc"' in result.stdout
  assert e2e.checkpoint_steps(str(workdir)) == [0]

  summary = infer.run_inference(config, str(workdir), split="train")
  assert summary["checkpoint_step"] == 0
  classes = voc.load_classes(config.input.classes, config.input.data_dir)
  source = voc.VOCSource(config.input.data_dir, "train", classes=classes)
  want = _reference_multiscale_cams(torch, net, source, config.infer.scales)
  for image_id, expected in want.items():
    got = cam_io.load_cam_dict(os.path.join(summary["out_dir"], "cams", image_id + ".npz"))
    assert sorted(got) == sorted(expected), image_id
    for c in expected:
      np.testing.assert_allclose(got[c], expected[c], rtol=0, atol=CAM_TOL,
                                 err_msg=f"{image_id} class {c}")
  # Not vacuous: random heads leave some present classes without any winning pixel (flat maps),
  # but others have real structure.
  assert sum(float(np.ptp(m)) > 0.5 for e in want.values() for m in e.values()) >= 3


@pytest.mark.parametrize("layout", ["eps", "eps_ppc"])
def test_eps_checkpoints_convert_with_the_background_moved_first(layout, tmp_path_factory):
  """EPS's networks keep the background LAST; ppc_jax's fc8 row 0 is the background. The
  converted model's maps equal the reference's with the channels rotated, and the export puts
  the row back (the file loads into the reference net with strict=True and equals it)."""
  torch = _torch()
  eps_model = dict(pcm=layout == "eps_ppc", dropout_fea=0.0,
                   proj_dim=16 if layout == "eps_ppc" else None)
  config = _config(tmp_path_factory, **eps_model)
  config.loss.variant = "cam"  # the model only matters here; 'eps' variants name the layout
  TEps, TEspContrast = _eps_nets(torch, config.model.width_divisor, config.model.stage_blocks,
                                 16)
  torch.manual_seed(2)
  net = (TEps() if layout == "eps" else TEspContrast()).eval()
  _randomise_bn(torch, net, seed=3)
  tmp = tmp_path_factory.mktemp("convert_" + layout)
  _save_reference(torch, net, tmp / "eps.pth", prefix="")

  meta = convert.import_weights(config, str(tmp / "eps.pth"), str(tmp / "work"))
  assert meta["layout"] == layout
  model, state = restore.restore_state(config, str(tmp / "work"))
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  x = np.random.default_rng(4).normal(size=(2, 40, 33, 3)).astype(np.float32)
  got = jax.device_get(jax.jit(lambda v, x: model.apply(v, x, upsample=False))(variables, x))
  with torch.no_grad():
    want = net(torch.from_numpy(x.transpose(0, 3, 1, 2)))
  rotate = lambda t: np.roll(t.numpy().transpose(0, 2, 3, 1), 1, axis=-1)  # noqa: E731 bg last->first
  np.testing.assert_allclose(got["cam_down"], rotate(want["cam"]), rtol=1e-4, atol=1e-4)
  if layout == "eps_ppc":
    np.testing.assert_allclose(got["cam_rv_down"], rotate(want["cam_rv"]), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got["proj"], want["proj"].numpy().transpose(0, 2, 3, 1),
                               rtol=1e-4, atol=1e-4)
  else:
    assert "cam_rv_down" not in got and "proj" not in got

  config.loss.variant = "eps" if layout == "eps" else "eps_ppc"  # what export's 'auto' reads
  convert.export_weights(config, str(tmp / "work"), str(tmp / "back.pth"))
  back = torch.load(str(tmp / "back.pth"), weights_only=True)
  fresh = (TEps() if layout == "eps" else TEspContrast())
  fresh.load_state_dict(back, strict=True)
  for key, value in net.state_dict().items():
    assert torch.equal(back[key], value), key


def test_export_round_trip_and_layout_choice(tmp_path_factory):
  """Import a SEAM+PPC file, export it as 'ppc' (bit-identical to the file) and as 'seam' (the
  projection dropped; loads into SEAM's network); a SEAM file into a model with a projection
  head is refused naming the setting, and an existing work directory is never overwritten."""
  torch = _torch()
  _, TSeamNet = torch_reference_classes(torch)
  config = _config(tmp_path_factory)
  wd, blocks, proj = config.model.width_divisor, config.model.stage_blocks, config.model.proj_dim
  torch.manual_seed(5)
  net = TSeamNet(wd, blocks, proj).eval()
  _randomise_bn(torch, net, seed=6)
  tmp = tmp_path_factory.mktemp("convert_export")
  _save_reference(torch, net, tmp / "ppc.pth")
  convert.import_weights(config, str(tmp / "ppc.pth"), str(tmp / "work"))

  info = convert.export_weights(config, str(tmp / "work"), str(tmp / "ppc_back.pth"))
  assert info == dict(layout="ppc", step=0, keys=len(net.state_dict()))
  back = torch.load(str(tmp / "ppc_back.pth"), weights_only=True)
  assert set(back) == set(net.state_dict())
  for key, value in net.state_dict().items():
    assert torch.equal(back[key], value), key

  convert.export_weights(config, str(tmp / "work"), str(tmp / "seam.pth"), layout="seam")
  seam_sd = torch.load(str(tmp / "seam.pth"), weights_only=True)
  assert not any(k.startswith("fc_proj") for k in seam_sd)
  seam_net = TSeamNet(wd, blocks, proj)
  del seam_net.fc_proj
  seam_net.load_state_dict(seam_sd, strict=True)

  with pytest.raises(FileExistsError, match="already holds step 0"):
    convert.import_weights(config, str(tmp / "ppc.pth"), str(tmp / "work"))
  with pytest.raises(ValueError, match=r"'seam' checkpoint .*lacks the model's fc_proj.weight"
                     r".*'proj_dim': None"):
    convert.import_weights(config, str(tmp / "seam.pth"), str(tmp / "work2"))
  # --nostrict: the projection head keeps its initialisation.
  convert.import_weights(config, str(tmp / "seam.pth"), str(tmp / "work3"), strict=False)
  _, state = restore.restore_state(config, str(tmp / "work3"))
  np.testing.assert_array_equal(
      np.asarray(state["params"]["fc8"]["kernel"])[0, 0],
      net.fc8.weight.detach().numpy()[:, :, 0, 0].T)


def test_trainer_starts_from_the_converted_directory(tmp_path_factory, cache_dir):
  """`python -m ppc_jax.train --workdir=DST` resumes at step 0 from the converted weights: after
  one step the frozen layers (conv1a, b2*, every BN) still hold the file's values exactly."""
  from ppc_jax.seeds import seed_trainer  # pylint: disable=g-import-not-at-top
  del cache_dir  # fixture: the shared compilation cache
  torch = _torch()
  _, TSeamNet = torch_reference_classes(torch)
  config = _config(tmp_path_factory)
  torch.manual_seed(7)
  net = TSeamNet(config.model.width_divisor, config.model.stage_blocks, config.model.proj_dim)
  _randomise_bn(torch, net, seed=8)
  tmp = tmp_path_factory.mktemp("convert_train")
  _save_reference(torch, net, tmp / "ppc.pth")
  convert.import_weights(config, str(tmp / "ppc.pth"), str(tmp / "work"))
  config.total_steps = 1
  config.log_images_every_steps = 0
  seed_trainer.train_and_evaluate(config, str(tmp / "work"))
  assert e2e.checkpoint_steps(str(tmp / "work")) == [0, 1]
  after = e2e.load_state(config, str(tmp / "work"), step=1)
  ref = net.state_dict()
  np.testing.assert_array_equal(after["params"]["backbone"]["conv1a"]["kernel"],
                                ref["conv1a.weight"].numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(after["batch_stats"]["backbone"]["b5"]["bn_branch2a"]["mean"],
                                ref["b5.bn_branch2a.running_mean"].numpy())
  trained = after["params"]["fc8"]["kernel"][0, 0]
  assert not np.array_equal(trained, ref["fc8.weight"].numpy()[:, :, 0, 0].T)  # it did train


# ------------------------------------------------------------------------------------------------
# Layouts on their own (numpy only).
# ------------------------------------------------------------------------------------------------


def _canonical_state_dict(**model):
  """A reference-named state_dict of a tiny ppc_jax model with distinct random values."""
  cfg = e2e.tiny_config("unused").model
  cfg.update(model)
  net = models.build_model(cfg)
  shapes = jax.eval_shape(lambda r: train_state.init_variables(net, r, (16, 16, 3)),
                          jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)
  return weights.to_torch_state_dict(variables, num_batches_tracked=False), variables


@pytest.mark.parametrize("layout,model", [
    ("seam", dict(proj_dim=None)),
    ("ppc", dict(proj_dim=16)),
    ("psa", dict(proj_dim=None, pcm=False)),
    ("eps", dict(proj_dim=None, pcm=False)),
    ("eps_ppc", dict(proj_dim=16)),
])
def test_layouts_detect_and_invert(layout, model):
  canonical, variables = _canonical_state_dict(**model)
  ref = layouts.from_canonical(canonical, layout)
  assert layouts.detect(ref) == layout
  fc8 = canonical["fc8.weight"]
  if layout in ("eps", "eps_ppc"):
    np.testing.assert_array_equal(ref["fc8.weight"][-1], fc8[0])     # background last
    np.testing.assert_array_equal(ref["fc8.weight"][:-1], fc8[1:])
  elif layout == "psa":
    np.testing.assert_array_equal(ref["fc8.weight"], fc8[1:])        # no background row
  else:
    np.testing.assert_array_equal(ref["fc8.weight"], fc8)
  assert ("proj_fc.weight" in ref) == (layout == "eps_ppc")
  assert ("fc_proj.weight" in ref) == (layout == "ppc")
  back = layouts.to_canonical(ref, layout)
  if layout == "psa":
    np.testing.assert_array_equal(back["fc8.weight"][0], 0)
    back["fc8.weight"] = fc8
  assert set(back) == set(canonical)
  for k in canonical:
    np.testing.assert_array_equal(back[k], canonical[k], err_msg=k)
  # And into Flax variables through the strict check.
  got, name = weights.from_reference_state_dict(
      {"module." + k: v for k, v in ref.items()}, template=variables)
  assert name == layout
  if layout != "psa":
    flat_got = flax.traverse_util.flatten_dict(got)
    flat_want = flax.traverse_util.flatten_dict(variables)
    assert set(flat_got) == set(flat_want)
    for k in flat_want:
      np.testing.assert_array_equal(flat_got[k], flat_want[k], err_msg=str(k))


def test_layout_errors_name_the_problem():
  canonical, variables = _canonical_state_dict(proj_dim=16)
  with pytest.raises(ValueError, match="incomplete PCM"):
    layouts.detect({k: v for k, v in canonical.items() if not k.startswith("f9.")})
  with pytest.raises(ValueError, match="both proj_fc .* and fc_proj"):
    layouts.detect(dict(canonical, **{"proj_fc.weight": canonical["fc_proj.weight"]}))
  no_pcm = {k: v for k, v in canonical.items() if not k.startswith(("f8_", "f9", "fc_proj"))}
  with pytest.raises(ValueError, match="fc8 has 7 rows"):
    layouts.detect(dict(no_pcm, **{"fc8.weight": canonical["fc8.weight"][:7]}))
  with pytest.raises(ValueError, match="unknown layout 'dino'"):
    layouts.get("dino")
  with pytest.raises(ValueError, match=r"has heads \[.*'fc_proj'\], but the 'seam' layout"):
    layouts.to_canonical(canonical, "seam")
  backbone_only = {k: v for k, v in canonical.items()
                   if not k.startswith(("fc8", "f8_", "f9", "fc_proj"))}
  got, name = weights.from_reference_state_dict(backbone_only, template=variables)
  assert name == "backbone"  # heads keep the template's values
  np.testing.assert_array_equal(got["params"]["fc8"]["kernel"],
                                variables["params"]["fc8"]["kernel"])
  with pytest.raises(ValueError, match="lacks the model's b5.conv_branch1.weight"):
    weights.from_reference_state_dict(
        {k: v for k, v in backbone_only.items() if not k.startswith("b5.conv_branch1")},
        template=variables)


def test_mxnet_params_convert_into_a_work_directory(tmp_path_factory):
  """The ImageNet route: a Model A1 `.params` file -> convert (md5 checked) -> a step-0
  checkpoint whose backbone is the file's and whose heads are the trainer's seeded init."""
  import hashlib  # pylint: disable=g-import-not-at-top
  from test_mxnet_params import model_a1_file  # pylint: disable=g-import-not-at-top
  from ppc_jax import untrusted  # pylint: disable=g-import-not-at-top

  config = _config(tmp_path_factory)
  _, variables = _canonical_state_dict()
  tmp = tmp_path_factory.mktemp("convert_mxnet")
  path = tmp / "a1.params"
  model_a1_file(path, variables, header="v2")
  with pytest.raises(untrusted.UntrustedFileError, match="md5"):
    convert.import_weights(config, str(path), str(tmp / "bad"), md5="a1")
  md5 = hashlib.md5(path.read_bytes()).hexdigest()
  meta = convert.import_weights(config, str(path), str(tmp / "work"), md5=md5)
  assert meta["format"] == "mxnet" and meta["layout"] == "backbone"
  _, state = restore.restore_state(config, str(tmp / "work"))
  got = jax.device_get({"params": state["params"], "batch_stats": state["batch_stats"]})
  for col in ("params", "batch_stats"):
    flat_got = flax.traverse_util.flatten_dict(got[col]["backbone"])
    for k, v in flax.traverse_util.flatten_dict(variables[col]["backbone"]).items():
      np.testing.assert_array_equal(flat_got[k], v, err_msg=str(k))
  # Heads: the seeded initialisation of the trainer (config.seed), not the file.
  model = models.build_model(config.model)
  init_rng, _ = jax.random.split(jax.random.PRNGKey(config.seed))
  shape = (config.input.crop_size, config.input.crop_size, 3)
  init = jax.device_get(train_state.init_variables(model, init_rng, shape))
  np.testing.assert_array_equal(got["params"]["fc8"]["kernel"], init["params"]["fc8"]["kernel"])
