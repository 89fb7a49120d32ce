"""The pretrain stage's config schema (configs/pretrain_*.py), on `config_lib.common_config`.

`pretrain_schema()` holds every field a 'pretrain' config has: the common sections (training
loop, `input`, `init`, logs, process setup; `input.split` is the training split and
`input.crop_size` the training crop), the classifier model (`model_config`), SGD with momentum
0.9 and weight decay on the weights only (`optim_groups`), `infer` (the engine's section:
`infer.split` is the evaluation split, `infer.max_images` caps it for quick looks) and the
`pretrain` section (`data_config`: the data set, augmentation, evaluation protocol, schedule).
`pretrain_config(...)` is the ImageNet recipe on it.
"""

import ml_collections

from ppc_jax import config_lib

# BatchNorm scales / offsets and biases: no weight decay (the "no bias decay" of He et al.,
# "Bag of Tricks", 2019); every other parameter is decayed. No group is frozen.
NO_DECAY = r"(^|/)bn[^/]*/|/bias$"


def model_config(*, backbone="resnet38", num_classes=1000, width_divisor=1):
  """`ppc_jax.pretrain.classifier.Classifier`: the backbone of a later stage + GAP + linear."""
  return ml_collections.ConfigDict(dict(
      name="classifier",
      num_classes=num_classes,     # the data set's classes (checked by the trainer)
      backbone=backbone,           # 'resnet38' (stages 1-3) or 'resnet101' (DeepLab, EPS runs)
      width_divisor=width_divisor,  # 1 = the reference widths; 8 = the demo's
      stage_blocks=(3, 3, 6, 3),   # ResNet38 blocks in stages 2..5
      layers=(3, 4, 23, 3),        # ResNet-101 bottlenecks per stage
      dropout_b6=0.0,              # ResNet38's Dropout2d inside b6 / b7
      dropout_b7=0.0,
      dropout=0.0,                 # on the pooled features, before the classifier
      bn_mode="batch",             # batch statistics in training (from scratch)
      bn_momentum=0.1,             # torch's default momentum of the running statistics
      remat=False,                 # ResNet38: recompute blocks in the backward pass
      conv_algorithm="auto",       # ResNet38's 3x3 convolutions (config_lib.model_config)
      winograd_min_channels=256,
      dtype="float32",             # 'bfloat16' on accelerators (parameters stay float32)
  ))


def optim_groups():
  """(config.optim.groups, group_order): no decay on BN and biases, decay on the rest."""
  groups = {
      "no_decay": dict(match=NO_DECAY, lr_mult=1.0, decay=False, frozen=False),
      "weights": dict(match="", lr_mult=1.0, decay=True, frozen=False),
  }
  return groups, ("no_decay", "weights")


def data_config():
  """`config.pretrain`: where the images come from, augmentation, evaluation, schedule."""
  return ml_collections.ConfigDict(dict(
      # 'tfds' (a TFDS image-classification set, array_record) or 'folders' (class folders).
      source="tfds",
      tfds_name="imagenet2012",
      tfds_data_dir="",            # '' = ~/tensorflow_datasets; local or gs://
      tfds_manual_dir="",          # ImageNet's manually downloaded archives (preparing only)
      tfds_cache_dir="~/.cache/ppc_jax/tfds",  # local copy of a bucket-prepared set
      tfds_image_key="image",
      tfds_label_key="label",
      folder_dir="",               # <folder_dir>/<split>/<class_name>/*.jpg|jpeg|png
      # Random-resized crop: share of the image area and aspect ratio (w / h) ranges; the crop
      # is resized to config.input.crop_size.
      area_range=(0.08, 1.0),
      aspect_range=(3.0 / 4.0, 4.0 / 3.0),
      # Evaluation (of config.infer.split): the central square of eval_crop_fraction x the short
      # side, resized to eval_size (224 of 256: the standard single crop); global batch; every
      # eval_every_steps steps (0: at the end only) and at the end.
      eval_size=224,
      eval_crop_fraction=0.875,
      eval_batch_size=256,
      eval_every_steps=0,
      label_smoothing=0.0,         # 0 = the single-label softmax cross entropy
      # LR schedule after a linear warm-up of warmup_epochs: 'cosine' to 0, 'step' (x
      # step_factor at each of step_epochs) or 'poly' (config.optim.poly_power).
      schedule="cosine",
      warmup_epochs=5.0,
      step_epochs=(30.0, 60.0, 80.0),
      step_factor=0.1,
  ))


def pretrain_schema():
  """Every field of a 'pretrain' config, with its default (the ImageNet recipe at batch 256)."""
  optim = config_lib.optim_config(momentum_mode="corrected")  # explicit: torch SGD momentum 0.9
  optim.groups, optim.group_order = optim_groups()
  config = config_lib.common_config(
      "pretrain", model=model_config(), optim=optim,
      infer=config_lib.engine_config("validation"))
  config.pretrain = data_config()
  config.input.data_dir = ""       # the images come from config.pretrain
  config.input.split = "train"     # the training split
  config.input.batch_size = 256
  config.input.crop_size = 224
  config.optim.lr = 0.1
  config.optim.weight_decay = 1e-4
  config.num_epochs = 90
  config.log_every_steps = 100
  config.ckpt_every_steps = 2000
  return config


def pretrain_config(*, backbone, num_classes, batch_size, crop_size=224, width_divisor=1):
  """`pretrain_schema()` with the ImageNet recipe at `batch_size` (global): SGD, momentum 0.9,
  weight decay 1e-4 (not on BN / biases), lr = 0.1 x batch / 256 (Goyal et al., "Accurate, Large
  Minibatch SGD", 2017), 5 warm-up epochs then cosine, 90 epochs."""
  config = pretrain_schema()
  config.model.backbone = backbone
  config.model.num_classes = num_classes
  config.model.width_divisor = width_divisor
  config.input.batch_size = batch_size
  config.input.crop_size = crop_size
  config.optim.lr = 0.1 * batch_size / 256
  return config
