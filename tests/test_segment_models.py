"""DeepLab (stage 3) against an independent torch oracle of the reference on seeded weights: eval
and training-mode forward, the running statistics torch's BN leaves behind, key mapping both ways
(through real torch.save files), the ImageNet ResNet-101 load, output stride, and full-size shapes.

Tolerances: the same convolutions in fp32 on XLA:CPU and torch's CPU kernels differ only in
summation order, O(1e-6) relative per layer; over at most ~15 layers at these widths the logits
agree to 1e-4 relative (`assert_close`), an order of magnitude above that estimate. Batch
statistics are means over B*H*W values, rounding-order differences of the same size.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ppc_jax import models
from ppc_jax import train_state
from ppc_jax import weights
from ppc_jax.models import batchnorm
from ppc_jax.segment import seg_weights
from seg_oracles import seeded_model
from test_models import assert_close
from test_weights import random_like

# One worker: its tests share the op-by-op compilations of the two backbones' initialisations.
pytestmark = pytest.mark.xdist_group("deeplab_oracle")

CASES = [("resnet38", "v1"), ("resnet101", "v1"), ("resnet101", "v2")]


def flax_model(backbone, head, num_classes=5, wd=16, **kwargs):
  return models.get_model("deeplab", backbone=backbone, head=head, num_classes=num_classes,
                          width_divisor=wd, stage_blocks=(1, 1, 1, 1), layers=(1, 1, 2, 1),
                          dropout_b6=0.0, dropout_b7=0.0, head_dropout=0.0, **kwargs)


def _state_dict(model):
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _shapes(model, image_shape):
  """The model's variables as jax.ShapeDtypeStruct (no initialiser runs)."""
  return jax.eval_shape(
      lambda: train_state.init_variables(model, jax.random.PRNGKey(0), image_shape))


def _convert(model, tmodel, shape=(2, 40, 48, 3)):
  template = _shapes(model, shape[1:])
  return seg_weights.from_deeplab_state_dict(_state_dict(tmodel), template=template, strict=True)


def _image(shape=(2, 40, 48, 3), seed=3):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("backbone,head", CASES)
def test_eval_forward_equals_the_reference(backbone, head):
  tmodel = seeded_model(backbone, head).eval()
  model = flax_model(backbone, head)
  variables = _convert(model, tmodel)
  x = _image()
  with torch.no_grad():
    want = tmodel(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
  got = model.apply(variables, jnp.asarray(x), train=False)["logits"]
  assert_close(got, want)


@pytest.mark.parametrize("backbone,head", CASES)
def test_training_forward_and_running_statistics_equal_the_reference(backbone, head):
  """Training mode (the reference never leaves it): batch statistics in every BN, and the running
  statistics torch updates (its momentum, unbiased variance) are the ones the step keeps."""
  tmodel = seeded_model(backbone, head).train()
  model = flax_model(backbone, head)
  variables = _convert(model, tmodel)
  x = _image(seed=4)
  want = tmodel(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()
  out, updates = model.apply(variables, jnp.asarray(x), train=True, mutable=["batch_stats"])
  assert_close(out["logits"], want)
  got_sd = seg_weights.to_deeplab_state_dict(
      {"params": variables["params"], "batch_stats": updates["batch_stats"]})
  want_sd = _state_dict(tmodel)
  running = [k for k in want_sd if k.endswith(("running_mean", "running_var"))]
  assert running
  for key in running:
    assert_close(got_sd[key], want_sd[key], tol=1e-5)
  # Something moved: momentum 0.0003 on ResNet38 and the heads, 0.1 on ResNet-101's backbone.
  before = _state_dict(seeded_model(backbone, head))
  assert max(np.abs(want_sd[k] - before[k]).max() for k in running) > 0


def test_torch_batchnorm_against_numpy():
  """TorchBatchNorm re-derived: batch mean / biased variance normalise, the running variance
  averages the unbiased one with torch's momentum; eval mode uses the running statistics."""
  rng = np.random.default_rng(0)
  x = rng.normal(2.0, 3.0, size=(3, 4, 5, 6)).astype(np.float32)
  bn = batchnorm.TorchBatchNorm(momentum=0.25)
  variables = bn.init(jax.random.PRNGKey(0), x, use_batch_stats=False)
  scale = rng.normal(size=6).astype(np.float32)
  variables = {"params": {"scale": scale, "bias": np.full(6, 0.5, np.float32)},
               "batch_stats": {"mean": np.full(6, 0.1, np.float32),
                               "var": np.full(6, 2.0, np.float32)}}
  y, upd = bn.apply(variables, x, use_batch_stats=True, mutable=["batch_stats"])
  x64 = x.astype(np.float64)
  mean = x64.mean(axis=(0, 1, 2))
  var = x64.var(axis=(0, 1, 2))
  n = 3 * 4 * 5
  np.testing.assert_allclose(y, (x64 - mean) / np.sqrt(var + 1e-5) * scale + 0.5, rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(upd["batch_stats"]["mean"], 0.75 * 0.1 + 0.25 * mean, rtol=1e-6)
  np.testing.assert_allclose(upd["batch_stats"]["var"], 0.75 * 2.0 + 0.25 * var * n / (n - 1),
                             rtol=1e-5)
  y_eval = bn.apply(variables, x, use_batch_stats=False)
  np.testing.assert_allclose(y_eval, (x64 - 0.1) / np.sqrt(2.0 + 1e-5) * scale + 0.5, rtol=1e-5,
                             atol=1e-5)


@pytest.mark.parametrize("backbone,head", CASES)
def test_state_dict_round_trip_through_torch_save(backbone, head, tmp_path):
  """torch names -> Flax -> torch names through real .pth files; the result loads into the
  reference module with strict=True and gives the same output."""
  tmodel = seeded_model(backbone, head).eval()
  model = flax_model(backbone, head)
  path = str(tmp_path / "deeplab.pth")
  torch.save(tmodel.state_dict(), path)
  template = _shapes(model, (40, 48, 3))
  variables = seg_weights.from_deeplab_state_dict(weights.load_torch_file(path),
                                                  template=template, strict=True)
  back = seg_weights.to_deeplab_state_dict(variables)
  out_path = str(tmp_path / "back.pth")
  weights.save_torch_file(back, out_path)
  reloaded = seeded_model(backbone, head, seed=7).eval()
  reloaded.load_state_dict(torch.load(out_path, weights_only=True), strict=True)
  want = _state_dict(tmodel)
  for key, value in _state_dict(reloaded).items():
    if not key.endswith("num_batches_tracked"):
      np.testing.assert_array_equal(value, want[key], err_msg=key)


def test_key_renames_are_inverse_and_cover_the_reference_names():
  tmodel = seeded_model("resnet101", "v2")
  for key in tmodel.state_dict():
    flax_key = seg_weights.torch_to_flax_key(key)
    assert seg_weights.flax_to_torch_key(flax_key) == key
    module = flax_key.rsplit(".", 2)[-2]
    # Every BatchNorm's Flax name starts with 'bn' (the converter's rule), every conv's does not.
    is_bn = key.endswith(("running_mean", "running_var", "num_batches_tracked")) or (
        isinstance(dict(tmodel.named_modules())[key.rsplit(".", 1)[0]], torch.nn.BatchNorm2d))
    assert module.startswith("bn") == is_bn, key


def test_imagenet_resnet101_backbone_loads_and_a_torchvision_one_is_refused(tmp_path):
  tmodel = seeded_model("resnet101", "v2")
  backbone_sd = {k[len("backbone."):]: v for k, v in _state_dict(tmodel).items()
                 if k.startswith("backbone.")}
  backbone_sd["fc.weight"] = np.zeros((1000, 2048 // 16), np.float32)  # the ImageNet classifier
  backbone_sd["fc.bias"] = np.zeros((1000,), np.float32)
  model = flax_model("resnet101", "v2")
  template = random_like(_shapes(model, (40, 48, 3)))
  variables = seg_weights.from_resnet101_imagenet(backbone_sd, template=template, name="r101s")
  np.testing.assert_array_equal(
      variables["params"]["backbone"]["layer3_1"]["conv2"]["kernel"],
      backbone_sd["layer3.1.conv2.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables["batch_stats"]["backbone"]["bn1_4"]["var"],
                                backbone_sd["conv1.4.running_var"])
  # The heads keep the template's values.
  np.testing.assert_array_equal(variables["params"]["cls_conv"]["bias"],
                                template["params"]["cls_conv"]["bias"])
  # torchvision's layout: one 7x7 stem conv and a 64-channel bn1.
  tv = {k: v for k, v in backbone_sd.items() if not k.startswith("conv1.")}
  tv["conv1.weight"] = np.zeros((4, 3, 7, 7), np.float32)
  with pytest.raises(ValueError, match="resnet101.pth.*not the deep-stem ResNet-101"):
    seg_weights.from_resnet101_imagenet(tv, template=template, name="resnet101.pth")


@pytest.mark.parametrize("backbone,head", [("resnet38", "v1"), ("resnet101", "v2"),
                                           ("resnet101", "v1")])
def test_full_size_shapes_and_output_stride(backbone, head):
  """The reference widths at crop 448, shapes only (jax.eval_shape): output stride 8."""
  model = models.get_model("deeplab", backbone=backbone, head=head, num_classes=21)
  x = jax.ShapeDtypeStruct((1, 448, 448, 3), jnp.float32)
  variables = jax.eval_shape(lambda: train_state.init_variables(model, jax.random.PRNGKey(0),
                                                          (448, 448, 3)))
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  assert out["logits"].shape == (1, 448, 448, 21)
  assert out["logits_down"].shape == (1, 56, 56, 21)
  params = variables["params"]
  if backbone == "resnet101":
    bb = params["backbone"]
    assert bb["conv1_0"]["kernel"].shape == (3, 3, 3, 64)
    assert bb["bn1"]["scale"].shape == (128,)
    assert bb["layer1_0"]["conv1"]["kernel"].shape == (1, 1, 128, 64)
    assert sum(1 for k in bb if k.startswith("layer3_")) == 23
    assert bb["layer4_2"]["conv3"]["kernel"].shape == (1, 1, 512, 2048)
    n = sum(np.prod(v.shape) for v in jax.tree.leaves(bb))
    # torchvision's ResNet-101 has 42.5M backbone parameters (fc excluded); the deep stem adds
    # 3x3 convs 3->64, 64->64, 64->128 (+112,320 - 9,408 of the 7x7) and a 128-channel bn1.
    assert 42_600_000 < n < 42_800_000, n
  if head == "v1":
    assert params["conv_fov"]["kernel"].shape[:2] == (3, 3)
    assert params["cls_conv"]["kernel"].shape[-2:] == (512, 21)
  else:
    assert params["aspp"]["conv_cat_0"]["kernel"].shape == (1, 1, 1280, 256)
    assert params["cls_conv"]["bias"].shape == (21,)


def test_bad_model_settings_are_named():
  x = jnp.zeros((1, 32, 32, 3))
  with pytest.raises(ValueError, match="model.backbone"):
    models.get_model("deeplab", backbone="vgg16").init(jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match="model.head"):
    models.get_model("deeplab", head="v3").init(jax.random.PRNGKey(0), x)


def test_convert_imports_and_exports_a_reference_deeplab(tmp_path):
  """`ppc_jax.convert` with a segmentation config: a reference DeepLab .pth -> a work directory
  (step-0 checkpoint) -> a .pth that loads into the reference module and computes the same."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  from ppc_jax import convert  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location(
      "seg_eps", __file__.replace("tests/test_segment_models.py", "configs/seg_eps_ppc_voc12.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("runlocal")
  config.model.num_classes = 5
  config.model.layers = (1, 1, 2, 1)
  config.model.head_dropout = 0.0
  tmodel = seeded_model("resnet101", "v2").eval()
  src = str(tmp_path / "ref.pth")
  torch.save(tmodel.state_dict(), src)
  workdir = str(tmp_path / "run")
  meta = convert.import_weights(config, src, workdir)
  assert meta["layout"] == "deeplab"
  out = str(tmp_path / "back.pth")
  result = convert.export_weights(config, workdir, out)
  assert result["step"] == 0
  reloaded = seeded_model("resnet101", "v2", seed=5).eval()
  reloaded.load_state_dict(torch.load(out, weights_only=True), strict=True)
  x = torch.from_numpy(_image()).permute(0, 3, 1, 2)
  with torch.no_grad():
    np.testing.assert_array_equal(reloaded(x).numpy(), tmodel(x).numpy())


def test_imagenet_resnet38_params_initialise_the_deeplab_backbone(tmp_path):
  """The SEAM-based DeepLab starts from the MXNet ImageNet ResNet38 as stage 1 does (the same
  file reader and renaming); the head keeps its initialisation."""
  from ppc_jax import config_lib  # pylint: disable=import-outside-toplevel
  from ppc_jax import pretrained as pretrained_lib  # pylint: disable=import-outside-toplevel
  from ppc_jax import stages  # pylint: disable=import-outside-toplevel
  from ppc_jax.segment import seg_trainer  # pylint: disable=import-outside-toplevel
  from test_mxnet_params import model_a1_file  # pylint: disable=import-outside-toplevel
  model = flax_model("resnet38", "v1")
  template = random_like(_shapes(model, (32, 32, 3)))
  pretrained = random_like(_shapes(model, (32, 32, 3)), seed=9)
  path = str(tmp_path / "a1.params")
  backbone_only = {"params": {"backbone": pretrained["params"]["backbone"]},
                   "batch_stats": {"backbone": pretrained["batch_stats"]["backbone"]}}
  model_a1_file(path, backbone_only, header="v2")
  config = config_lib.segmentation_config(config_lib.parse_arg(None,
                                                               **config_lib.VARIANT_DEFAULTS))
  config.init.mxnet_params = path
  out = pretrained_lib.load(config, template, seg_trainer.import_torch)
  for col in ("params", "batch_stats"):
    for a, b in zip(jax.tree.leaves(out[col]["backbone"]),
                    jax.tree.leaves(pretrained[col]["backbone"])):
      np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(out["params"]["conv_fov"]["kernel"],
                                template["params"]["conv_fov"]["kernel"])
  config.model.backbone = "resnet101"
  with pytest.raises(ValueError, match="ImageNet ResNet38"):
    stages.of(config)
