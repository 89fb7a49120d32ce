"""Stage 3 pieces against independent re-derivations: the loss with ignore (torch), the four LR
groups and their SGD update (numpy), the OpenCV-style image ops (per-pixel loops), the tf.data
input (shapes, padding, resume, named errors), the multi-scale + flip aggregation (a numpy loop
over per-scale forwards), the sharded step (8 fake devices vs 1), and training + inference
through the entry points with an exact resume.
"""

import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import PIL.Image
import pytest
import torch

from data_fixtures import synth_root, voc_copy  # noqa: F401  (fixtures)
import e2e_fixtures as e2e
import oracles
from ppc_jax import optim
from ppc_jax import config_lib
from ppc_jax import sharding as shd
from ppc_jax import train_state
from ppc_jax.data import voc
from ppc_jax.segment import seg_loss
from ppc_jax.segment import seg_augment
from ppc_jax.segment import seg_data
from ppc_jax.segment import seg_infer
from ppc_jax.segment import seg_step
from ppc_jax.segment import seg_trainer


def tiny_seg_config(root, mask_dir, workdir_steps=4):
  config = config_lib.segmentation_config(
      config_lib.parse_arg("runlocal", **config_lib.VARIANT_DEFAULTS))
  config.input.data_dir = root
  config.input.batch_size = 8           # one image per fake device
  config.input.crop_size = 32
  config.input.num_parallel_calls = 2
  config.model.width_divisor = 32
  config.model.num_classes = voc.load_classes("", root).num_classes
  config.segment.mask_dir = mask_dir
  config.infer.scales = (0.5, 1.0)
  config.infer.max_images = 3
  config.total_steps = workdir_steps
  config.ckpt_every_steps = 2
  config.ckpt_max_to_keep = 10
  config.log_every_steps = 2
  config.progress_bar = False
  config.tensorboard = False
  return config


# ------------------------------------------------------------------------------------------------
# Loss.

def test_cross_entropy_with_ignore_equals_torch():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 6, 4)).astype(np.float32)
  labels = rng.integers(0, 4, size=(2, 5, 6)).astype(np.uint8)
  labels[0, :2] = 255
  loss, n = seg_loss.cross_entropy_ignore(jnp.asarray(logits), jnp.asarray(labels))
  want = torch.nn.functional.cross_entropy(
      torch.from_numpy(logits).permute(0, 3, 1, 2), torch.from_numpy(labels.astype(np.int64)),
      ignore_index=255)
  np.testing.assert_allclose(float(loss), float(want), rtol=1e-6)
  assert int(n) == labels.size - 12
  # Ignored pixels get no gradient; an all-ignored batch is 0 (torch: nan), not a NaN run.
  grad = jax.grad(lambda x: seg_loss.cross_entropy_ignore(x, jnp.asarray(labels))[0])(
      jnp.asarray(logits))
  assert np.all(np.asarray(grad)[0, :2] == 0) and np.any(np.asarray(grad)[0, 2:] != 0)
  empty = jnp.full(labels.shape, 255, jnp.uint8)
  assert float(seg_loss.cross_entropy_ignore(jnp.asarray(logits), empty)[0]) == 0.0


# ------------------------------------------------------------------------------------------------
# Optimizer.

def _toy_params():
  rng = np.random.default_rng(1)
  return {
      "backbone": {"b2": {"conv_branch2a": {"kernel": rng.normal(size=(3, 3, 2, 2))}},
                   "bn7": {"scale": rng.normal(size=(2,)), "bias": rng.normal(size=(2,))}},
      "conv_fov": {"kernel": rng.normal(size=(1, 1, 2, 3))},
      "bn_fov": {"scale": rng.normal(size=(3,)), "bias": rng.normal(size=(3,))},
      "cls_conv": {"kernel": rng.normal(size=(1, 1, 3, 4)), "bias": rng.normal(size=(4,))},
  }


def test_param_groups_and_two_sgd_steps_against_numpy():
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), _toy_params())
  ocfg = config_lib.segmentation_config(config_lib.parse_arg(
      None, **config_lib.VARIANT_DEFAULTS)).optim
  assert ocfg.momentum_mode == "corrected" and ocfg.lr == 1e-3
  num_steps = 10
  tx, schedule, groups = optim.make_optimizer(ocfg, num_steps, params)
  assert groups["backbone"]["b2"]["conv_branch2a"]["kernel"] == "backbone"
  assert groups["backbone"]["bn7"]["scale"] == optim.FROZEN
  assert groups["bn_fov"]["bias"] == optim.FROZEN
  assert groups["conv_fov"]["kernel"] == "new"
  assert groups["cls_conv"]["kernel"] == "new"
  assert groups["cls_conv"]["bias"] == "new_bias"
  # Training BN (a departure from the reference): its group made trainable by config alone.
  trained_cfg = ocfg.copy_and_resolve_references()
  trained_cfg.groups.frozen.frozen = False
  trained_cfg.groups.frozen.lr_mult = 1.0
  assert optim.param_groups(params, trained_cfg)["bn_fov"]["scale"] == "frozen"
  state = tx.init(params)
  rng = np.random.default_rng(2)
  grads = [jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
           for _ in range(2)]
  p = params
  for g in grads:
    updates, state = tx.update(g, state, p)
    p = jax.tree.map(lambda a, u: a + u, p, updates)
  # numpy: torch SGD per group (weight decay on weights only, momentum 0.9, buf_1 = g_1).
  mult = {"backbone": 1, "bias": 2, "new": 10, "new_bias": 20}
  lr = [1e-3 * (1 - t / (num_steps + 1)) ** 0.9 for t in range(2)]
  flat_p = jax.tree_util.tree_leaves_with_path(params)
  flat_g = [jax.tree.leaves(g) for g in grads]
  flat_groups = jax.tree.leaves(groups)
  for k, ((path, w0), group) in enumerate(zip(flat_p, flat_groups)):
    w = np.asarray(w0, np.float64)
    buf = None
    for t in range(2):
      if group == optim.FROZEN:
        continue
      d = np.asarray(flat_g[t][k], np.float64)
      if group in ("backbone", "new"):
        d = d + 5e-4 * w
      buf = d if buf is None else 0.9 * buf + d
      w = w - lr[t] * mult[group] * buf
    got = np.asarray(jax.tree.leaves(p)[k])
    np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-7, err_msg=str(path))
  np.testing.assert_allclose(float(schedule(9)), 1e-3 * (1 - 9 / 11) ** 0.9, rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# Image ops.

def _cubic_loop(img, oh, ow, fy, fx):
  """Per-pixel OpenCV-convention bicubic (A = -0.75, replicated edges), float64."""
  def w(t):
    t = abs(t)
    a = -0.75
    if t <= 1:
      return (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1
    if t < 2:
      return a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a
    return 0.0
  h, wd = img.shape[:2]
  out = np.zeros((oh, ow, img.shape[2]))
  for i in range(oh):
    sy = (i + 0.5) / fy - 0.5
    y0 = int(np.floor(sy))
    for j in range(ow):
      sx = (j + 0.5) / fx - 0.5
      x0 = int(np.floor(sx))
      acc = 0.0
      for dy in range(-1, 3):
        for dx in range(-1, 3):
          yy = min(max(y0 + dy, 0), h - 1)
          xx = min(max(x0 + dx, 0), wd - 1)
          acc = acc + w(sy - (y0 + dy)) * w(sx - (x0 + dx)) * img[yy, xx].astype(np.float64)
      out[i, j] = acc
  return out


@pytest.mark.parametrize("factor", [0.5, 0.73, 1.0, 1.37])
def test_cubic_and_nearest_resize_against_loops(factor):
  rng = np.random.default_rng(3)
  img = rng.integers(0, 256, size=(7, 9, 3)).astype(np.uint8)
  got = seg_augment.resize_cubic(img, factor)
  oh, ow = int(np.rint(7 * factor)), int(np.rint(9 * factor))
  assert got.shape == (oh, ow, 3) and got.dtype == np.uint8
  want = np.rint(_cubic_loop(img, oh, ow, factor, factor)).clip(0, 255)
  np.testing.assert_array_equal(got, want)
  f = seg_augment.resize_cubic(img.astype(np.float32), factor)
  np.testing.assert_allclose(f, _cubic_loop(img, oh, ow, factor, factor), rtol=1e-5, atol=1e-3)
  mask = rng.integers(0, 5, size=(7, 9)).astype(np.uint8)
  near = seg_augment.resize_nearest(mask, factor)
  for i in range(oh):
    for j in range(ow):
      assert near[i, j] == mask[min(int(np.floor(i / factor)), 6), min(int(np.floor(j / factor)), 8)]


def test_hsv_conversion_known_values_and_round_trip():
  rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128], [255, 255, 0]]],
                 np.uint8)
  hsv = seg_augment.rgb_to_hsv_u8(rgb)
  np.testing.assert_array_equal(hsv[0], [[0, 255, 255], [60, 255, 255], [120, 255, 255],
                                         [0, 0, 128], [30, 255, 255]])
  np.testing.assert_array_equal(seg_augment.hsv_to_rgb_u8(hsv), rgb)
  rng = np.random.default_rng(4)
  img = rng.integers(0, 256, size=(16, 16, 3)).astype(np.uint8)
  back = seg_augment.hsv_to_rgb_u8(seg_augment.rgb_to_hsv_u8(img)).astype(int)
  # 8-bit HSV keeps hue in 2-degree steps: a round trip moves a channel by a few levels at most.
  assert np.abs(back - img).max() <= 6
  np.testing.assert_array_equal(seg_augment.random_hsv(rgb, 0, 0, 0), rgb)
  shifted = seg_augment.rgb_to_hsv_u8(seg_augment.random_hsv(rgb[:, :3], 10, 0, 0))
  np.testing.assert_array_equal(shifted[0, :, 0], [10, 70, 130])


def test_example_geometry_padding_and_draws():
  rng = np.random.default_rng(5)
  img = rng.integers(0, 256, size=(20, 30, 3)).astype(np.uint8)
  mask = rng.integers(0, 3, size=(20, 30)).astype(np.uint8)
  draws = np.array([0.0, 0.9, 0.5, 0.5, 0.5] + [0.0] * 5 + [0.0, 0.0])
  params = seg_augment.decode_params(draws)
  assert params["factor"] == 0.5 and not params["flip"] and params["hsv"] == (0, 0, 0)
  image, out_mask = seg_augment.make_example(img, mask, params, 16)
  # Scaled to 10x15 and placed at the container's top-left (u = 0): padding is 0 / 255.
  assert image.shape == (16, 16, 3) and out_mask.shape == (16, 16)
  assert np.all(image[10:] == 0) and np.all(out_mask[10:] == 255) and np.all(out_mask[:, 15:] == 255)
  np.testing.assert_array_equal(out_mask[:10, :15], seg_augment.resize_nearest(mask, 0.5))
  # The HSV conversion runs even with zero deltas (8-bit HSV round trip), as the reference's.
  np.testing.assert_allclose(image[:10, :15], seg_augment.normalize_float32(
      seg_augment.resize_cubic(seg_augment.random_hsv(img, 0, 0, 0), 0.5)))
  high = seg_augment.decode_params(np.array([0.999999, 0.1, 0.999999, 0.0, 0.5] + [0.0] * 7))
  assert high["flip"] and high["hsv"] == (10, -10, 0) and 1.49 < high["factor"] < 1.5


# ------------------------------------------------------------------------------------------------
# Input pipeline.

def _config_for(root, mask_dir):
  return tiny_seg_config(root, mask_dir)


def test_seg_iterator_shapes_resume_and_named_errors(voc_copy):  # noqa: F811
  mask_dir = os.path.join(voc_copy, "SegmentationClassAug")
  config = _config_for(voc_copy, mask_dir)
  config.input.batch_size = 4
  source = seg_data.seg_source(config)
  with seg_data.make_seg_iterator(config, source, process_index=0, process_count=1) as it:
    batches = [next(it) for _ in range(4)]
  assert batches[0]["image"].shape == (4, 32, 32, 3) and batches[0]["mask"].dtype == np.uint8
  values = np.unique(np.concatenate([b["mask"].ravel() for b in batches]))
  assert set(values) <= set(range(source.classes.num_classes)) | {255}
  with seg_data.make_seg_iterator(config, source, start_step=2, process_index=0,
                                  process_count=1) as it:
    tail = [next(it) for _ in range(2)]
  for a, b in zip(batches[2:], tail):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  # Two processes' shards are the global batch's halves.
  halves = []
  for p in range(2):
    with seg_data.make_seg_iterator(config, source, process_index=p, process_count=2) as it:
      halves.append(next(it))
  np.testing.assert_array_equal(np.concatenate([h["mask"] for h in halves]), batches[0]["mask"])
  # A mask with a value outside the class list is named.
  bad = os.path.join(mask_dir, source.ids[0] + ".png")
  arr = np.array(PIL.Image.open(bad))
  arr[0, 0] = 200
  PIL.Image.fromarray(arr, mode="L").save(bad)
  with pytest.raises(voc.DataError, match=source.ids[0]):
    config.input.verify = "full"
    seg_data.seg_source(config)
  with pytest.raises(voc.DataError, match="pseudo-mask directory"):
    seg_data.seg_source(_config_for(voc_copy, os.path.join(voc_copy, "nope")))


# ------------------------------------------------------------------------------------------------
# Inference aggregation.

def test_multiscale_flip_aggregation_against_a_numpy_loop():
  from test_segment_models import flax_model  # pylint: disable=import-outside-toplevel
  model = flax_model("resnet38", "v1", wd=32)
  variables = train_state.init_variables(model, jax.random.PRNGKey(1), (24, 32, 3))
  rng = np.random.default_rng(6)
  image = rng.normal(size=(19, 26, 3)).astype(np.float32)
  scales = (0.5, 1.0, 1.5)
  got = seg_infer.predict_logits(model, variables, image, scales, True)
  total = np.zeros((19, 26, 5))
  for s in scales:
    x = image if s == 1.0 else seg_augment.resize_cubic(image, s)
    for flip in (False, True):
      inp = x[:, ::-1] if flip else x
      out = np.asarray(model.apply(variables, jnp.asarray(inp[None]), train=False)["logits"])
      up = oracles.np_resize_ac(out.astype(np.float64), (19, 26))[0]
      total += up[:, ::-1] if flip else up
  np.testing.assert_allclose(got, total / 6, rtol=1e-4, atol=1e-4)
  probs = seg_infer.softmax(got)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# The sharded step, training and inference end to end.

def test_sharded_step_equals_the_single_device_step():
  """Batch sharded over 8 fake devices vs one device: BN statistics and the loss are global
  means, so the two differ only in fp32 reduction order: ~1e-7 relative per sum over 8 shards,
  through BN's normalisation and two SGD steps; 1e-5 relative leaves two orders of margin."""
  from test_segment_models import flax_model  # pylint: disable=import-outside-toplevel
  model = flax_model("resnet38", "v1", wd=32)
  # Host copies: the step donates its state, which may alias arrays put on one device.
  variables = jax.device_get(train_state.init_variables(model, jax.random.PRNGKey(2), (24, 24, 3)))
  ocfg = config_lib.segmentation_config(config_lib.parse_arg(
      None, **config_lib.VARIANT_DEFAULTS)).optim
  ocfg.lr = 0.01
  tx, schedule, groups = optim.make_optimizer(ocfg, 4, variables["params"])
  rng = np.random.default_rng(7)
  batches = [{"image": rng.normal(size=(8, 24, 24, 3)).astype(np.float32),
              "mask": rng.integers(0, 5, size=(8, 24, 24)).astype(np.uint8)} for _ in range(2)]
  results = []
  for n in (1, 8):
    mesh = shd.make_mesh(n)
    step = train_state.jit_train_step(seg_step.make_seg_train_step(model, tx, schedule, groups), mesh)
    state = jax.device_put(jax.device_get(train_state.create_state(variables, tx)),
                           shd.replicated(mesh))
    with jax.set_mesh(mesh):
      for b in batches:
        state, metrics = step(state, shd.to_global(b, shd.batch_sharding(mesh)),
                              jax.device_put(jax.random.PRNGKey(3), shd.replicated(mesh)))
    results.append(jax.device_get((state, metrics)))
  (s1, m1), (s8, m8) = results
  for a, b in zip(jax.tree.leaves(s1["params"]) + jax.tree.leaves(s1["batch_stats"]),
                  jax.tree.leaves(s8["params"]) + jax.tree.leaves(s8["batch_stats"])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-5)
  # BN running statistics moved (batch statistics), frozen BN scale did not.
  assert not np.allclose(s1["batch_stats"]["bn_fov"]["mean"],
                         variables["batch_stats"]["bn_fov"]["mean"])
  np.testing.assert_array_equal(s1["params"]["bn_fov"]["scale"],
                                variables["params"]["bn_fov"]["scale"])


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
  root = e2e.synth_root(tmp_path_factory)
  workdir = str(tmp_path_factory.mktemp("seg_run"))
  config = tiny_seg_config(root, os.path.join(root, "SegmentationClassAug"))
  metrics = seg_trainer.train_segmentation(config, workdir)
  return dict(root=root, workdir=workdir, config=config, metrics=metrics)


def test_training_resumes_to_the_uninterrupted_parameters(seg_run, tmp_path):
  config = seg_run["config"]
  assert np.isfinite(seg_run["metrics"]["loss"]) and e2e.checkpoint_steps(seg_run["workdir"]) == [
      2, 4]
  workdir = str(tmp_path / "resumed")
  shutil.copytree(seg_run["workdir"], workdir)
  shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))  # as if stopped after step 2
  seg_trainer.train_segmentation(config, workdir)
  resumed = e2e.load_state(config, workdir)
  uninterrupted = e2e.load_state(config, seg_run["workdir"])
  # The same programs on the same inputs from the same state: identical, BN statistics included.
  assert e2e.max_abs_diff(resumed["params"], uninterrupted["params"]) == 0.0
  assert e2e.max_abs_diff(resumed["batch_stats"], uninterrupted["batch_stats"]) == 0.0


def test_segmentation_inference_writes_server_pngs_and_scores(seg_run, tmp_path):
  config = ml_collections.ConfigDict(seg_run["config"].to_dict())
  config.infer.split = "train"   # the shared tiny set has no val images
  out = str(tmp_path / "seg_train")
  summary = seg_infer.run_segmentation(config, seg_run["workdir"], out_dir=out)
  pred_dir = seg_infer.prediction_dir(out, "train")
  assert pred_dir.endswith(os.path.join("results", "VOC2012", "Segmentation",
                                        "comp6_train_cls"))
  files = sorted(os.listdir(pred_dir))
  assert len(files) == 3 and summary["computed"] == 3
  img = PIL.Image.open(os.path.join(pred_dir, files[0]))
  assert img.mode == "P"
  assert 0.0 <= summary["result"]["miou"] <= 1.0
  again = seg_infer.run_segmentation(config, seg_run["workdir"], out_dir=out)
  assert again["computed"] == 0   # resumed: every PNG exists
