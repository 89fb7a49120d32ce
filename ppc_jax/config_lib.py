"""Shared config pieces (used by configs/*.py) and the typed `path.py:key=value,...` parser.

Every experiment file in configs/ builds on its stage's schema (`seeds_config`, `affinity_config`,
result it is expected to reach in its docstring.
"""

import ml_collections
from ml_collections import config_dict


def load_sibling_config(here, name, arg=None):
  """`get_config(arg)` of the config file `<name>.py` next to the file `here` (configs/*.py
  compose the stage configs of a pipeline this way)."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  path = os.path.join(os.path.dirname(os.path.abspath(here)), name + ".py")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def _config_file_and_arg(argv, flag):
  """(path, arg) of `--<flag>=path[:arg]` (or `--<flag> path[:arg]`) in argv, or None."""
  for i, token in enumerate(argv):
    value = None
    if token.startswith(f"--{flag}="):
      value = token.split("=", 1)[1]
    elif token == f"--{flag}" and i + 1 < len(argv):
      value = argv[i + 1]
    if value:
      path, _, arg = value.partition(":")
      return path, arg or None
  return None


def missing_field(config, path):
  """The first field of `path` (a tuple of names) that `config` lacks, as a dotted prefix, or
  None when every field exists (a leaf ends the walk)."""
  node = config
  for i, name in enumerate(path):
    if not isinstance(node, ml_collections.ConfigDict):
      return None
    if name not in node:
      return ".".join(path[:i + 1])
    node = node[name]
  return None


def unknown_override_message(config, path, source=""):
  """Why `--config.<path>` cannot be set on `config` (naming its stage), or None if it can."""
  missing = missing_field(config, path)
  if missing is None:
    return None
  parent = missing.rpartition(".")[0]
  node = config
  for name in parent.split(".") if parent else ():
    node = node[name]
  owner = (f"the '{config.stage}' stage's config" if "stage" in config and isinstance(
      config.stage, str) else "the pipeline config")
  where = f" ({source})" if source else ""
  return (f"--config.{'.'.join(path)}: {owner}{where} has no field {missing!r}; "
          f"{parent or 'its top level'} has: {', '.join(sorted(node.keys()))}")


def check_overrides(argv, flag="config"):
  """Raises ValueError for each `--config.<field>` override in argv that the config file given by
  `--config=FILE[:arg]` does not declare, naming the config's stage and the field (config_flags
  would raise a bare KeyError during flag parsing). Does nothing when argv names no config file
  or the file cannot be loaded here (the flag parser then reports that itself)."""
  import os  # pylint: disable=import-outside-toplevel
  found = _config_file_and_arg(argv, flag)
  if found is None or not os.path.isfile(found[0]):
    return
  path, arg = found
  try:
    config = load_sibling_config(path, os.path.splitext(os.path.basename(path))[0], arg)
  except Exception:  # pylint: disable=broad-except  (reported by the flag parser with context)
    return
  problems = []
  for token in argv:
    if token.startswith(f"--{flag}."):
      name = token[len(flag) + 3:].split("=", 1)[0]
      message = unknown_override_message(config, tuple(name.split(".")), path)
      if message:
        problems.append(message)
  if problems:
    raise ValueError("\n".join(problems))


def parse_config_flags(argv):
  """The locked config that an entry point builds from `argv` (its `--config=FILE` and
  `--config.<field>=value` flags; `argv[0]` is the program name), parsed in process with fresh absl
  flag values, so tests and benchmarks see exactly what `python -m ppc_jax.train argv[1:]` trains.
  Unknown fields and misspelt overrides raise as they do on the command line."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  argv = list(argv)
  values = flags.FlagValues()
  # sys_argv: config_flags finds the `--config.<field>=` overrides in the command line it is given.
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True,
                                  sys_argv=argv)
  values(argv)
  return values.config


def parse_arg(arg, **defaults):
  """Parses 'k1=v1,k2=v2,flag' into a ConfigDict typed by `defaults`.

  A bare key sets a boolean default to True. Unknown keys raise, so a typo in a variant string
  fails loudly instead of being ignored.

  Args:
    arg: the string after ':' in `--config=path.py:arg`, or None.
    **defaults: the accepted keys and their default values (which fix the types).

  Returns:
    ml_collections.ConfigDict with every default, overridden by `arg`.
  """
  cfg = ml_collections.ConfigDict(dict(defaults))
  if not arg:
    return cfg
  for token in arg.split(","):
    token = token.strip()
    if not token:
      continue
    key, sep, value = token.partition("=")
    if key not in defaults:
      raise ValueError(
          f"config argument {key!r} is not one of {sorted(defaults)} (from {arg!r})")
    default = defaults[key]
    if not sep:
      if not isinstance(default, bool):
        raise ValueError(f"config argument {key!r} needs a value (e.g. {key}={default})")
      cfg[key] = True
    elif isinstance(default, bool):
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"config argument {key!r} expects true/false, got {value!r}")
      cfg[key] = value.lower() in ("true", "1")
    else:
      try:
        cfg[key] = type(default)(value)
      except ValueError as e:
        raise ValueError(
            f"config argument {key!r} expects {type(default).__name__}, got {value!r}") from e
  return cfg


def model_config(*, width_divisor=1, proj_dim=128):
  """SeamNet hyper-parameters (reference values at width_divisor=1)."""
  return ml_collections.ConfigDict(dict(
      name="seam_net",
      num_classes=21,          # background (channel 0) + 20 VOC classes; must equal the class
                               # list's count (input.classes), checked by train and infer
      width_divisor=width_divisor,  # 1 = the full ResNet38; 8, 16, ... give small test/demo nets
      stage_blocks=(3, 3, 6, 3),    # ResBlocks in stages 2..5 (b2.., b3.., b4.., b5..)
      # PPC projection width; None removes the head. Typed int even when None (a placeholder), so
      # `--config.model.proj_dim=128` parses on configs without the head.
      proj_dim=config_dict.FieldReference(proj_dim, field_type=int),
      dropout_b6=0.3,          # Dropout2d inside b6 (PyTorch port)
      dropout_b7=0.5,          # Dropout2d inside b7
      dropout_fea=0.5,         # Dropout2d on conv6, shared by fc8 and fc_proj
      freeze_stem=True,        # no backward pass through the frozen conv1a/b2* (as torch, requires_grad=False)
      pcm=True,                # False: no PCM (f8_3, f8_4, f9) and no cam_rv, as EPS's network
      # Compute dtype of the convolutions ('float32' = the reference; 'bfloat16' for
      # accelerators: parameters, BN statistics, the PCM and the losses stay float32).
      dtype="float32",
      remat=False,             # recompute backbone blocks in the backward pass (less memory)
      # 3x3 convolutions: 'direct' (XLA's), 'winograd' (Winograd F(2x2, 3x3), ops/winograd.py)
      # or 'auto': Winograd in forward-only passes (inference) on the CPU in float32, for
      # stride-1 convs with at least winograd_min_channels in and out channels (XLA:CPU's
      # convolutions are the bottleneck there; 1.4x faster CAM inference at full size); XLA's in
      # training and on GPU / TPU. The same parameters; the results differ from 'direct' by
      # float32 rounding only (docs/benchmarks.md, "Winograd convolutions").
      conv_algorithm="auto",
      winograd_min_channels=256,
  ))


def loss_config(variant="seam_ppc"):
  """Loss variant and weights. variant: 'cam' (cls only), 'seam', 'seam_ppc', 'eps', 'eps_ppc'."""
  return ml_collections.ConfigDict(dict(
      variant=variant,
      rvmin_weight=1.0,        # adaptive min pooling on cam_rv (reference folds it into loss_cls)
      er_weight=1.0,
      ecr_weight=1.0,
      ecr_topk_frac=0.2,       # k = int(21 * h2 * w2 * 0.2) per image
      # True: ECR's targets use wseg@esp's max_onehot, which misses its background-last channel
      # order (aeroplane never zeroed, background competes; METHOD 11.5). The EPS+PPC config's
      # default, for exactness; False is the evident intent.
      max_onehot_bug=False,
      eps=dict(                # EPS saliency loss (variants 'eps', 'eps_ppc')
          weight=1.0,
          tau=0.4,             # overlap threshold of a valid class (the scripts' 0.4)
          lam=0.5,             # S_hat = lam * fg_map + (1 - lam) * bg_map (0.5 VOC, 0.9 COCO)
      ),
      ppc=dict(
          temperature=0.1,
          bg_threshold=0.20,   # constant background score of the contrast pseudo-labels
          topk_divisor=8,      # prototype K = h * w // 8 (32 on a 16x16 map)
          cross_prototype_weight=0.1,
          cross_label_weight=0.1,
          intra_weight=0.1,
          mining_skip=3,       # semi-hard mining drops the 3 most similar prototypes ...
          mining_top=13,       # ... of the top 13, keeping ranks 4-13 (<= model.num_classes)
          hard_pixel_upper=0.6,  # hard pixels: ascending-similarity ranks [int(.6L)-L//2, int(.6L))
      ),
  ))


# Parameter groups of each stage's reference optimizer (`optim.lr_groups`): regexes over
# '/'-joined parameter paths. Stage 1 (SEAM's PolyOptimizer): conv1a, b2* and every BN frozen.
SEEDS_FROZEN = r"^backbone/(conv1a|b2|b2_1|b2_2)/|/bn[^/]*/"
SEEDS_NEW = r"^(fc8|f8_3|f8_4|f9|fc_proj)/"
# AffinityNet (aff_train.py): the same frozen set; its own heads are the new layers.
AFFINITY_FROZEN = SEEDS_FROZEN
AFFINITY_NEW = r"^(f8_3|f8_4|f8_5|f9)/"
# DeepLab (segmentation train.py): only conv parameters are in its optimizer, so every BN scale
# and bias is frozen; the head's layers are new.
SEGMENT_FROZEN = r"(^|/)bn[^/]*/"
SEGMENT_NEW = r"^(conv_fov|conv_fov2|cls_conv|aspp)/"


def optim_config(*, momentum_mode="reference", frozen=SEEDS_FROZEN, new=SEEDS_NEW):
  """SGD + poly as PolyOptimizer. momentum_mode: 'reference' (5e-4, the known bug) or 'corrected' (0.9)."""
  from ppc_jax import optim  # pylint: disable=import-outside-toplevel
  groups, order = optim.lr_groups(frozen=frozen, new=new)
  return ml_collections.ConfigDict(dict(
      lr=0.01,
      poly_power=0.9,
      # PolyOptimizer's max_step: lr_t = lr * (1 - t / M) ** power, frozen at its step M - 1
      # value after M (the reference stops updating the LR). 0 = the run's total steps plus
      # poly_max_step_offset (stage 3's reference: T + 1).
      poly_max_step=0,
      poly_max_step_offset=0,
      weight_decay=5e-4,       # coupled L2, added to the gradient before momentum
      momentum_mode=momentum_mode,
      # {name: {match: regex over the parameter path, lr_mult, decay, frozen}}, tried in
      # group_order (first match wins; the last group catches the rest): the reference's groups.
      groups=groups,
      group_order=order,
  ))


def input_config(*, data_dir="data/VOCdevkit/VOC2012", split="train_aug", batch_size=8,
                 crop_size=448):
  """The training input every stage reads (its augmentation fields are the stage's own:
  `seeds_input_config`, `affinity_config`, `segment_config`)."""
  return ml_collections.ConfigDict(dict(
      data_dir=data_dir,       # a VOCdevkit/VOC2012 tree (or the synthetic one), local or gs://
      # Where every stage reads its images (training, CAM inference, the random walk, DeepLab
      # training and inference; `sources.open_source`): 'directory' (data_dir's tree) or
      # 'tfds' (the voc2012_wsss data set prepared in tfds_data_dir, local or gs://; '' = TFDS's
      # default ~/tensorflow_datasets; ppc_jax/data/tfds_voc.py builds it from data_dir's tree or
      # the VOC archives). Files the stages write (CAMs, CRF labels, pseudo-masks) stay files,
      # and evaluation still reads the GT masks from data_dir.
      source="directory",
      tfds_data_dir="",
      # A data set on a bucket is copied here once per host before reading (array_record reads
      # local files only); files already there with the right size are kept.
      tfds_cache_dir="~/.cache/ppc_jax/tfds",
      # "" = <data_dir>/classes.txt if present, else VOC's 20; "voc"; a classes file (.txt); or
      # comma-separated foreground names. model.num_classes must be its count + 1.
      classes="",
      split=split,
      batch_size=batch_size,   # GLOBAL batch; split over processes and devices
      crop_size=crop_size,     # random crop with zero padding
      hflip=True,
      shuffle_buffer=0,        # 0 = a full permutation per epoch (as the reference's shuffle)
      seed=0,
      with_saliency=False,     # True: also read SALImages/<id>.png (batch 'saliency', for EPS)
      skip_bad=False,          # True: skip unreadable examples with a counted warning
      # Where the image-level labels come from. cls_labels: path of a cls_labels.npy ("" =
      # <data_dir>/cls_labels.npy). labels: 'auto' (cls_labels.npy, else the XML annotations,
      # else the masks), 'npy', 'xml' or 'masks'.
      cls_labels="",
      labels="auto",
      # Checks of every listed file before training: 'none' (existence only), 'header' (open
      # each file: format and size) or 'full' (decode everything).
      verify="header",
      max_images=0,            # > 0: only the first N ids of the split (quick runs)
      # tf.data: parallel decode + augment calls (<= 0: AUTOTUNE); a private thread pool of this
      # many threads (0: TF's shared pool); batches prefetched ahead of the step (>= 0).
      num_parallel_calls=-1,
      threads=0,
      prefetch=2,
  ))


def seeds_input_config():
  """Stage 1's dual-view input: the common input plus its augmentation (the reference's)."""
  config = input_config()
  config.view2_size = 128        # view 2: align-corners bilinear resize of view 1
  config.resize_long = (448, 768)  # random long side, inclusive, PIL-style bicubic
  config.jitter = (0.3, 0.3, 0.3, 0.1)  # brightness, contrast, saturation, hue
  return config


def affinity_model_config(*, width_divisor=1):
  """AffinityNet (ppc_jax.refine.affinity_net): ResNet38 + f8_3 / f8_4 / f8_5 / f9 heads."""
  return ml_collections.ConfigDict(dict(
      name="affinity_net",
      width_divisor=width_divisor,
      stage_blocks=(3, 3, 6, 3),
      dropout_b6=0.3,          # the backbone's Dropout2d, active in the reference's training
      dropout_b7=0.5,
      freeze_stem=True,        # conv1a / b2* get no update (reference `not_training`)
      # The backbone's 3x3 convolutions ('auto': Winograd in CPU inference); see model_config.
      conv_algorithm="auto",
      winograd_min_channels=256,
  ))


def affinity_config(arg):
  """Stage 2's schema, with what the AffinityNet configs share (reference aff_train.py, METHOD
  4.3): batch 8, crop 448, 8 epochs, lr 0.01 (10x on f8_3 .. f9), wd 5e-4, the reference's
  momentum, colour jitter, no random resize; the random walk of `infer.split` ('train').
  `arg` from `parse_arg(.., **VARIANT_DEFAULTS)`."""
  # Explicit: the reference's effective momentum 5e-4.
  config = common_config(
      "affinity", model=affinity_model_config(), infer=engine_config("train"),
      optim=optim_config(momentum_mode="reference", frozen=AFFINITY_FROZEN, new=AFFINITY_NEW))
  config.input.jitter = (0.3, 0.3, 0.3, 0.1)  # aff_train.py: jitter, crop, flip only
  config.optim.lr = 0.01
  config.num_epochs = 8
  config.refine = refine_config()
  return with_variant(config, arg)


def refine_config():
  """Stage 2: AffinityNet training and random-walk refinement (METHOD 4.3, 11.8-11.10)."""
  return ml_collections.ConfigDict(dict(
      # la / ha CRF score files of the training split (`python -m ppc_jax.refine.crf_labels`):
      # <dir>/<id>.npz (keys [K] with 0 = bg, k + 1 = class k; maps [K, H, W]).
      la_dir="",
      ha_dir="",
      # 'npz' (ppc_jax's files, no pickle) or 'reference_npy' (the reference's pickled dicts,
      # read through the restricted unpickler) for the CRF score files and the cam files.
      crf_format="npz",
      cam_format="npz",
      radius=5,                # affinity pairs within this radius on the feature grid
      # Random walk (ppc_jax.refine.random_walk): T = column-normalised aff ** beta, squared logt
      # times; the CAM's background 'constant' (wseg aff_infer: bg_value 0.27) or 'power'
      # (SEAM: (1 - max)^bg_power).
      beta=8.0,
      logt=6,
      bg_mode="constant",
      bg_value=0.27,
      bg_power=6.0,
      cam_dir="",              # stage-1 cam files to refine (python -m ppc_jax.seeds.infer ... /cams)
  ))


def segment_config():
  """Stage 3: DeepLab on the pseudo-masks (reference `segmentation/`, METHOD 4.3, 11.11-11.14)."""
  return ml_collections.ConfigDict(dict(
      # Pseudo-mask PNGs of input.split (<dir>/<id>.png: random-walk masks, or seed PNGs for
      # EPS-based runs).
      mask_dir="",
      scale_range=(0.5, 1.5),  # RandomScale factor range (empty = no rescaling)
      hsv=(10, 10, 10),        # RandomHSV ranges of the H (0..179), S and V deltas
      crf=True,                # dense CRF on the averaged softmax (the reference's TEST_CRF)
      # DeepLab-v2's VOC CRF (the reference's missing dense_crf_from_deeplabv2; seg_infer.py).
      crf_params=dict(iterations=10, gauss_sxy=1.0, gauss_compat=3.0, bi_sxy=67.0, bi_srgb=3.0,
                      bi_compat=4.0),
  ))


def deeplab_model_config(*, backbone="resnet38", head="v1"):
  """`models.DeepLab`: reference widths, batch-statistics BN (METHOD 11.13)."""
  return ml_collections.ConfigDict(dict(
      name="deeplab",
      num_classes=21,
      backbone=backbone,       # 'resnet38' (SEAM-based runs) or 'resnet101' (deep stem, EPS)
      head=head,               # 'v1' (conv_fov) or 'v2' (ASPP with image pooling)
      width_divisor=1,
      stage_blocks=(3, 3, 6, 3),   # ResNet38
      layers=(3, 4, 23, 3),        # ResNet-101
      dropout_b6=0.3,          # ResNet38's Dropout2d: active, the reference trains in train mode
      dropout_b7=0.5,
      head_dropout=0.5,
      bn_mode="batch",         # batch statistics in training (the reference); 'frozen'
      bn_momentum=0.0003,      # torch momentum: ResNet38 and the heads
      backbone_bn_momentum=0.1,  # torch momentum: the ResNet-101 backbone
      # The ResNet38 backbone's 3x3 convolutions (ResNet-101: XLA's always); see model_config.
      conv_algorithm="auto",
      winograd_min_channels=256,
  ))


def segmentation_config(arg, *, backbone="resnet38", head="v1"):
  """Stage 3's schema, with what the segmentation configs share (reference
  `segmentation/experiment/*/config.py`): train_aug pseudo-masks, batch 10, crop 448, 20k steps,
  SGD lr 1e-3 with the 1/2/10/20 groups, real momentum 0.9 (the reference's torch.optim.SGD gets it
  right here: 'corrected'), weight decay 5e-4, poly 0.9 over T + 1; test on `infer.split` ('val')
  at scales 0.5-1.75 x flip. `arg` from `parse_arg(.., **VARIANT_DEFAULTS)`."""
  infer = engine_config("val")
  infer.scales = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # test scales, x flip
  infer.flip = True
  # Explicit: torch SGD momentum 0.9, as the reference.
  config = common_config(
      "segment", model=deeplab_model_config(backbone=backbone, head=head), infer=infer,
      optim=optim_config(momentum_mode="corrected", frozen=SEGMENT_FROZEN, new=SEGMENT_NEW))
  config.input.batch_size = 10
  config.optim.lr = 1e-3
  config.optim.poly_max_step_offset = 1  # lr (1 - t / (T + 1)) ** 0.9
  config.total_steps = 20000
  config.log_every_steps = 50
  config.ckpt_every_steps = 1000
  config.segment = segment_config()
  config = with_variant(config, arg)
  if arg.runlocal:  # with_variant's smoke-run sizes, and the segmentation stage's own
    config.model.layers = (1, 1, 1, 1)
    config.infer.scales = (0.5, 1.0)
    config.segment.crf = False
  return config


def common_config(stage, *, model, optim, infer, input=None):  # pylint: disable=redefined-builtin
  """What every stage's config holds: its stage name, training loop, input, model, optimizer,
  initialisation, inference engine settings, logs and process setup. A stage's schema
  (`seeds_config`, `affinity_config`, `segmentation_config`, the pretrain stage's
  `ppc_jax.pretrain.defaults.pretrain_schema`) adds its own sections."""
  return ml_collections.ConfigDict(dict(
      # Which stage this config is for (`ppc_jax.stages`): 'pretrain' (stage 0: classification
      # pretraining of a backbone), 'seeds' (stage 1: CAM / SEAM / PPC / EPS), 'affinity'
      # (stage 2: AffinityNet and the random walk) or 'segment' (stage 3: DeepLab). `python -m ppc_jax.train` runs its trainer, the inference commands its
      # inference.
      stage=stage,
      seed=0,                  # init, dropout / sampling keys (data order: input.seed)
      num_devices=0,           # 0 = all devices, > 0 = the first N (single process)
      num_epochs=8,
      total_steps=-1,          # > 0 overrides floor(num_images / batch) * num_epochs
      input=input_config() if input is None else input,
      infer=infer,
      model=model,
      optim=optim,
      init=dict(
          torch_checkpoint="",  # a torch.save'd reference state_dict (e.g. converted ImageNet A1)
          strict=False,         # False: heads absent from the file keep their initialisation
          # Which reference network wrote torch_checkpoint (ppc_jax.layouts: backbone, psa,
          # seam, ppc, eps, eps_ppc); 'auto' tells from its keys.
          layout="auto",
          # The MXNet ImageNet ResNet38 itself (ilsvrc-cls_rna-a1_cls1000_ep-0001.params), read
          # without mxnet; it must cover the whole backbone, the heads keep their initialisation.
          # Exclusive with torch_checkpoint.
          mxnet_params="",
          # md5 (hex) the mxnet_params file must have; 'a1' = the published one of Model A1
          # (ppc_jax.mxnet_params.RESNET38_A1_MD5); "" = no check.
          mxnet_md5="",
          # A ppc_jax work directory of any stage (its config.json and latest checkpoint) whose
          # ResNet38 backbone, of the same widths, initialises this model's: the pipeline's
          # hand-over from stage 1 without ImageNet weights (the demo). Exclusive with the files.
          backbone_workdir="",
          # > 0 (runs without pretrained weights): set the frozen BN statistics from this many
          # training crops before step 0 (ppc_jax/seeds/bn_calibration.py). 0 keeps mean 0 / var 1.
          calibrate_bn_images=0,
      ),
      log_every_steps=50,
      log_images_every_steps=0,
      log_images_count=4,
      ckpt_every_steps=1000,
      ckpt_max_to_keep=3,
      tensorboard=True,
      progress_bar=True,
      # ppc_jax.runtime.CPU_XLA_FLAGS for runs on the CPU backend (1.8x faster full-size step
      # on 2 cores); False keeps JAX's own XLA:CPU defaults. Read by the entry points before JAX
      # starts; ignored by accelerators.
      xla_cpu_flags=True,
      # Persistent XLA compilation cache (runtime.setup_host): every compiled program is stored
      # here and reused by later runs and processes (inference compiles one program per image
      # size). '' = off; the environment's JAX_COMPILATION_CACHE_DIR, if set, wins.
      # JAX keys entries by the program, devices, XLA flags and versions, so an entry is only
      # reused where it is valid. Inference also keeps each program exported in its
      # ppc_jax_programs/ (ppc_jax.program_cache), so a rerun does not trace the model again.
      compilation_cache_dir="~/.cache/ppc_jax/xla",
      # Least recently used entries are dropped above this size (the exported programs: above a
      # quarter of it). A size limit also makes JAX lock the directory (filelock) around reads
      # and writes, so concurrent processes are safe.
      compilation_cache_max_gb=4.0,
  ))


def seeds_config():
  """Stage 1's schema (CAM / SEAM / SEAM+PPC / EPS / EPS+PPC): the common sections, SeamNet, the
  loss, its dual-view input and multi-scale CAM inference. Experiment files override fields."""
  config = common_config("seeds", model=model_config(), optim=optim_config(),
                         infer=cam_infer_config(), input=seeds_input_config())
  # Steps [0, N) train the CAM-only objective (loss variant 'cam'), steps [N, total) the
  # configured loss.variant, with one optimizer and one poly LR schedule over the whole run.
  # 0 = none; must leave at least one step of a 'seam' / 'seam_ppc' run; ignored by 'cam'.
  config.cam_warmup_steps = 0
  config.loss = loss_config()
  return config


def engine_config(split):
  """The inference engine's settings (`ppc_jax.inference`), in every stage's `infer` section."""
  return ml_collections.ConfigDict(dict(
      split=split,             # the split the stage's inference runs on (and evaluates)
      max_images=0,            # > 0: only the first N ids of the split (quick looks)
      # Same-size images each local device computes per call, one after the other; a call
      # takes up to (local devices) x this many images.
      images_per_device=1,
      # Threads compiling the programs of the next image sizes while the current ones compute
      # (XLA compiles outside the GIL); 0 = one per usable CPU. More threads than free cores slow
      # the computation beside them.
      compile_threads=1,
  ))


def cam_infer_config():
  """Stage 1's multi-scale CAM inference and seeds (METHOD 4.1, 4.3) on the engine."""
  config = engine_config("train")  # seeds are evaluated on VOC train (1,464 images)
  config.scales = (0.5, 1.0, 1.5, 2.0)
  config.flip = True
  # 'seam': the map cam_key, min-max normalised (METHOD 4.1); 'eps': softmax of the raw fc8
  # output at feature resolution (cam_key 'cam_down'), max-normalised (METHOD 4.2).
  config.mode = "seam"
  config.cam_key = "cam_rv"  # 'cam_rv' (PCM-refined, SEAM/PPC), 'cam' (raw fc8), 'cam_down' (eps)
  config.bg_threshold = 0.26  # background score of the seed PNGs (the reference's png output)
  # The cam files: 'npz' (ppc_jax's, no pickle) or 'reference_npy' (the reference's pickled
  # dicts, for its own scripts).
  config.cam_format = "npz"
  config.num_overlays = 16   # CAM overlay JPEGs written for the first N images
  return config


def with_variant(config, arg):
  """Applies the common `:key=value` variants of the VOC configs to `config` in place."""
  if arg.runlocal:
    # A smoke run anywhere: tiny net, small crops, a few steps.
    config.model.width_divisor = 16
    config.model.stage_blocks = (1, 1, 1, 1)
    config.input.batch_size = 2
    config.input.crop_size = 64
    if config.stage == "seeds":
      config.input.view2_size = 32
      config.input.resize_long = (64, 96)
    config.total_steps = 4
    config.log_every_steps = 2
    config.ckpt_every_steps = 2
    config.infer.max_images = 4
  if arg.data_dir:
    config.input.data_dir = arg.data_dir
  if arg.batch:
    config.input.batch_size = arg.batch
  if arg.momentum_mode:
    config.optim.momentum_mode = arg.momentum_mode
  return config


# The stage-1 methods, each defined once (`apply_method`): the loss, the network heads, how
# seeds are inferred and their background score.
METHODS = ("cam", "seam", "seam_ppc", "eps", "eps_ppc")


def apply_method(config, method):
  """Sets a stage-1 config's method-defining fields (in place) and returns it.

    cam       fc8's CAM, no PCM in the seeds, no projection head (background score 0.26)
    seam      + PCM-refined CAM (`cam_rv`) and SEAM's equivariance losses
    seam_ppc  + the projection head and PPC's contrast (METHOD 3.1-3.5)
    eps       EPS: saliency loss, no PCM, seeds from softmax(fc8) at feature resolution (EPS's
              inference, METHOD 4.2), background 0.20 (EPS's --thr), no dropout on conv6
    eps_ppc   wseg@esp: EPS + SEAM's losses + PPC, with the branch's settings (K = h*w // 16,
              contrast background 0.10, max_onehot's channel bug) and background 0.22

  Data, schedule and sizes stay the config's own.
  """
  if method not in METHODS:
    raise ValueError(f"method {method!r}: expected one of {METHODS}")
  eps = method in ("eps", "eps_ppc")
  config.loss = loss_config(method)
  config.model.proj_dim = 128 if method in ("seam_ppc", "eps_ppc") else None
  config.model.pcm = method != "eps"
  config.input.with_saliency = eps
  config.infer.mode = "eps" if eps else "seam"
  config.infer.cam_key = {"cam": "cam", "eps": "cam_down", "eps_ppc": "cam_down"}.get(
      method, "cam_rv")
  config.infer.bg_threshold = {"eps": 0.20, "eps_ppc": 0.22}.get(method, 0.26)
  if eps:
    config.model.dropout_fea = 0.0  # resnet38_eps / esp resnet38_contrast: no dropout7
  if method == "eps_ppc":
    config.loss.max_onehot_bug = True     # the esp branch's ECR targets (METHOD 11.5)
    config.loss.ppc.topk_divisor = 16     # K = h * w // 16 = 16 on the 16x16 map
    config.loss.ppc.bg_threshold = 0.10
  return config


VARIANT_DEFAULTS = dict(runlocal=False, data_dir="", batch=0, momentum_mode="")


def pipeline_config(*, name, seeds, affinity, segment, refine, paper, paper_source, synth=None):
  """A `python -m ppc_jax.pipeline` config: the three stage configs and what ties them together.

  Args:
    name: the experiment, for the report's title (the data set is named beside it).
    seeds, affinity, segment: full experiment configs of stage 1, AffinityNet and DeepLab.
    refine: 'affinity' (CRF labels, AffinityNet, random walk) or 'seeds' (the seed PNGs are the
      pseudo-masks: EPS-based methods).
    paper: the paper's numbers for this setting {seed, mask, segment_val, segment_test} (None
      where it gives none).
    paper_source: where they come from.
    synth: the synthetic data set's parameters (demo configs), or None (an existing data set).
  """
  config = ml_collections.ConfigDict(dict(
      name=name,
      # Every stage's input.data_dir and input.classes ('' = the data set's classes.txt, else
      # VOC's 20), and where every stage reads its images (source 'directory' or 'tfds',
      # tfds_data_dir, tfds_cache_dir; see input_config): the same field names as in a stage
      # config. data_dir's tree is read with either source by the evaluation (GT masks) and the
      # CRF stage.
      input=dict(data_dir="data/VOCdevkit/VOC2012", classes="", source="directory",
                 tfds_data_dir="", tfds_cache_dir="~/.cache/ppc_jax/tfds"),
      refine=refine,
      refine_split="train_aug",  # CAMs, CRF labels and pseudo-masks of this split train DeepLab
      eval_split="train",      # seed and mask mIoU (VOC train, 1,464 images)
      crf_alphas=(4, 24),      # la / ha background powers (SEAM's infer)
      crf_processes=0,         # CRF worker processes (0 = one per usable CPU)
      # The ImageNet ResNet38 (.params) for every ResNet38 stage whose own config.init names no
      # file; and its md5 ('a1' = the published one, '' = no check).
      init_mxnet_params="",
      init_mxnet_md5="",
      # True: AffinityNet and DeepLab start from the trained stage-1 backbone (no ImageNet file).
      init_from_stage1=False,
      progress_bar=True,
      num_overlays=8,          # CAM and segmentation overlays shown in the report
      baselines=False,         # the report adds the evaluator's trivial baselines (the demo)
      # Typed placeholders: None (no paper number) must stay overridable from the command line.
      paper={k: config_dict.FieldReference(v, field_type=float) for k, v in paper.items()},
      paper_source=paper_source,
      seeds=seeds,
      affinity=affinity,
      segment=segment,
  ))
  if synth is not None:
    config.synth = synth
  else:
    config.synth = config_dict.FieldReference(None, field_type=ml_collections.ConfigDict)
  return config

