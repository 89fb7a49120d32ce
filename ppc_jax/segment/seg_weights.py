"""The segmentation reference's torch state dicts <-> `models.DeepLab` variables.

The Flax modules keep the reference's names where Flax allows them; where torch names a child of
an `nn.Sequential` by its index, or a BatchNorm by a name not starting with 'bn' (the rule
`ppc_jax.weights` uses to tell BN from conv), the Flax name differs by these renames:

  torch (segmentation/lib/net)                 Flax (models/resnet101.py, models/deeplab.py)
  backbone.conv1.0 / .3 / .6                   backbone/conv1_0 / conv1_3 / conv1_6
  backbone.conv1.1 / .4                        backbone/bn1_1 / bn1_4
  backbone.layer3.7.conv2                      backbone/layer3_7/conv2
  backbone.layer2.0.downsample.0 / .1          backbone/layer2_0/downsample_0 / bn_downsample_1
  aspp.branch2.0 / aspp.branch2.1              aspp/branch2_0 / aspp/bn_branch2_1
  aspp.branch5_conv / aspp.branch5_bn          aspp/branch5_conv / aspp/bn_branch5
  aspp.conv_cat.0 / aspp.conv_cat.1            aspp/conv_cat_0 / aspp/bn_conv_cat_1
ResNet38 DeepLab-v1 keys (backbone.b4_3.conv_branch2a, conv_fov, bn_fov, cls_conv, ...) need no
rename. The ImageNet "resnet101s" file has the backbone's keys without 'backbone.' plus the
classifier `fc.*`, which is dropped (the reference loads it with strict=False).
"""

import re

from ppc_jax import weights

# (torch pattern, flax-dotted replacement), applied in order; and the inverse list.
_TO_FLAX = (
    (r"(^|\.)conv1\.([14])\.", r"\1bn1_\2."),
    (r"(^|\.)conv1\.([036])\.", r"\1conv1_\2."),
    (r"(^|\.)layer(\d)\.(\d+)\.", r"\1layer\2_\3."),
    (r"\.downsample\.0\.", r".downsample_0."),
    (r"\.downsample\.1\.", r".bn_downsample_1."),
    (r"(^|\.)aspp\.branch5_bn\.", r"\1aspp.bn_branch5."),
    (r"(^|\.)aspp\.branch(\d)\.0\.", r"\1aspp.branch\2_0."),
    (r"(^|\.)aspp\.branch(\d)\.1\.", r"\1aspp.bn_branch\2_1."),
    (r"(^|\.)aspp\.conv_cat\.0\.", r"\1aspp.conv_cat_0."),
    (r"(^|\.)aspp\.conv_cat\.1\.", r"\1aspp.bn_conv_cat_1."),
)
_TO_TORCH = (
    (r"(^|\.)bn1_([14])\.", r"\1conv1.\2."),
    (r"(^|\.)conv1_([036])\.", r"\1conv1.\2."),
    (r"(^|\.)layer(\d)_(\d+)\.", r"\1layer\2.\3."),
    (r"\.downsample_0\.", r".downsample.0."),
    (r"\.bn_downsample_1\.", r".downsample.1."),
    (r"(^|\.)aspp\.bn_branch5\.", r"\1aspp.branch5_bn."),
    (r"(^|\.)aspp\.branch(\d)_0\.", r"\1aspp.branch\2.0."),
    (r"(^|\.)aspp\.bn_branch(\d)_1\.", r"\1aspp.branch\2.1."),
    (r"(^|\.)aspp\.conv_cat_0\.", r"\1aspp.conv_cat.0."),
    (r"(^|\.)aspp\.bn_conv_cat_1\.", r"\1aspp.conv_cat.1."),
)


def _apply(rules, key):
  for pattern, repl in rules:
    key = re.sub(pattern, repl, key)
  return key


def torch_to_flax_key(key):
  """'backbone.layer2.0.downsample.1.weight' -> 'backbone.layer2_0.bn_downsample_1.weight'."""
  return _apply(_TO_FLAX, key)


def flax_to_torch_key(key):
  """Inverse of `torch_to_flax_key`."""
  return _apply(_TO_TORCH, key)


def from_deeplab_state_dict(state_dict, *, template=None, strict=True):
  """A reference DeepLab state_dict (keys 'backbone.*', heads at the top) -> Flax variables.

  Args and errors as `weights.from_torch_state_dict` (names in its messages are the renamed
  ones of the module docstring's table).
  """
  renamed = {torch_to_flax_key(k): v for k, v in weights.normalise_keys(state_dict).items()}
  return weights.from_torch_state_dict(renamed, template=template, strict=strict,
                                       backbone_scope=None, conv_bias=True)


def to_deeplab_state_dict(variables):
  """Flax DeepLab variables -> a reference-named torch state_dict (conv weights OIHW)."""
  flat = weights.to_torch_state_dict(variables, backbone_scope=None)
  return {flax_to_torch_key(k): v for k, v in flat.items()}


def from_resnet101_imagenet(state_dict, *, template, name="<state_dict>"):
  """The ImageNet "resnet101s" backbone into a DeepLab template (heads keep their values).

  Args:
    state_dict: the file's {key: array} (keys without 'backbone.'; `fc.*` is dropped).
    template: initialised Flax DeepLab variables with backbone 'resnet101'.
    name: the file, for errors.

  Raises:
    ValueError naming the file: a backbone variable the file lacks, or a file key the backbone
    has no place for (a torchvision resnet101 has a 64-channel bn1 and fails on its shape).
  """
  sd = {k: v for k, v in weights.normalise_keys(state_dict).items() if not k.startswith("fc.")}
  renamed = {"backbone." + torch_to_flax_key(k): v for k, v in sd.items()}
  want = {k for k in weights.template_keys(template, None) if k.startswith("backbone.")}
  missing, unexpected = want - set(renamed), set(renamed) - want
  if missing or unexpected:
    raise ValueError(
        f"{name}: not the deep-stem ResNet-101 backbone of config.model: "
        f"{len(missing)} backbone variables missing ({sorted(missing)[:5]}), {len(unexpected)} "
        f"unexpected keys ({sorted(unexpected)[:5]})")
  try:
    return weights.from_torch_state_dict(renamed, template=template, strict=False,
                                         backbone_scope=None, conv_bias=True)
  except ValueError as e:
    raise ValueError(f"{name}: {e}") from None
