"""ppc_jax.inference: the engine under CAM inference, the random walk and segmentation.

On the 8 fake CPU devices of tests/conftest.py: grouping by exact size, sub-mesh calls for small
groups, k images per device, the process share, skip-done and resume, unreadable images, an
interrupt between groups, and, for the random walk and segmentation, results bit for bit equal to
the per-image programs that ran before the engine (CAM inference: tests/test_infer.py).

Why bit equality can be asserted: each device runs the one-image program (k = 1) on an image of
its own; no padding enters a network and nothing is reduced across images, so the computation
of an image is the same sequence of float operations as its program alone.
"""

import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import config_dict

import e2e_fixtures as e2e
from ppc_jax import inference
from ppc_jax import interrupt
from ppc_jax import models
from ppc_jax import train_state
from ppc_jax.data import voc
from ppc_jax.ops import resize
from ppc_jax.refine import random_walk
from ppc_jax.refine import rw_infer
from ppc_jax.segment import seg_augment
from ppc_jax.segment import seg_infer

# (H, W) per image: two common sizes, a tail of single images (VOC's shape, small).
SIZES = [(12, 16), (16, 12), (12, 16), (12, 16), (10, 14), (16, 12), (12, 16), (9, 20),
         (12, 16), (12, 16), (12, 16), (12, 16), (12, 16), (12, 16)]


def _toy_compute(variables, inputs, size):
  """A per-image function with a convolution, a resize to the image size and a global mean."""
  x = inputs["x"][None]
  y = jax.lax.conv_general_dilated(x, variables["w"], (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  up = resize.resize_bilinear(jnp.tanh(y), size, align_corners=False)[0]
  return {"map": up * inputs["scale"], "mean": jnp.mean(up)}


def _toy_spec(size):
  h, w = size
  return {"x": jax.ShapeDtypeStruct((h // 2 + 1, w // 2 + 1, 3), jnp.float32),
          "scale": jax.ShapeDtypeStruct((), jnp.float32)}


def _toy_inputs(size, seed):
  rng = np.random.RandomState(seed)
  shape = _toy_spec(size)["x"].shape
  return {"x": rng.normal(size=shape).astype(np.float32), "scale": np.float32(seed + 1)}


def _toy_variables():
  return {"w": np.random.RandomState(0).normal(size=(3, 3, 3, 4)).astype(np.float32)}


@pytest.mark.parametrize("images_per_device", [1, 2])
def test_engine_results_equal_each_image_alone(images_per_device):
  variables = _toy_variables()
  engine = inference.Engine(_toy_compute, _toy_spec, variables,
                            images_per_device=images_per_device)
  assert engine.batch_size == 8 * images_per_device
  alone = jax.jit(_toy_compute, static_argnums=2)
  for size, n in [((12, 16), engine.batch_size), ((12, 16), 3), ((9, 20), 1)]:
    inputs = [_toy_inputs(size, seed) for seed in range(n)]
    got = engine(inputs, size)
    assert len(got) == n
    for seed, out in enumerate(got):
      want = jax.device_get(alone(variables, inputs[seed], size))
      if images_per_device == 1:
        np.testing.assert_array_equal(out["map"], want["map"])
        np.testing.assert_array_equal(out["mean"], want["mean"])
      else:
        # lax.map runs the same one-image body in a loop; XLA may fuse its ops differently
        # from the program alone: fp32 rounding of a few ops on values of order 1.
        np.testing.assert_allclose(out["map"], want["map"], rtol=1e-6, atol=1e-6)
  # Small groups run on as few devices as they fill: no device computes a copy.
  assert engine.key(3, (12, 16)) == ((12, 16), -(-3 // images_per_device))
  assert engine.key(1, (9, 20)) == ((9, 20), 1)
  with pytest.raises(ValueError, match="takes 1.."):
    engine.key(engine.batch_size + 1, (9, 20))


def test_size_windows_cover_the_groups_in_order():
  groups = [([0, 1], (2, 3)), ([2], (2, 3)), ([3], (4, 5)), ([4], (6, 7)), ([5], (4, 5)),
            ([6], (8, 9))]
  windows = inference.size_windows(groups, 2)
  assert [g for w in windows for g in w] == groups  # every group once, in loop order
  assert [len({size for _, size in w}) for w in windows] == [2, 2, 1]
  assert inference.size_windows([], 3) == []
  assert inference.size_windows(groups, 8) == [groups]


class _Source:
  """The reading interface the engine uses (ids, image_size, bad, skip_bad); image `bad_index`
  has an unreadable file."""

  def __init__(self, sizes, skip_bad=False, bad_index=None, bad_header=None):
    self.sizes = sizes
    self.ids = [f"im{i:02d}" for i in range(len(sizes))]
    self.skip_bad = skip_bad
    self.bad = voc.BadInputLog("toy")
    self.bad_index, self.bad_header = bad_index, bad_header

  def image_size(self, i):
    if i == self.bad_header:
      raise voc.DataError(f"{self.ids[i]}.jpg", "cannot read image header")
    return self.sizes[i]

  def image(self, i):
    if i == self.bad_index:
      raise voc.DataError(f"{self.ids[i]}.jpg", "cannot decode image")
    return _toy_inputs(self.sizes[i], i)


def _toy_task(source, out_dir, loads, on_load=None):
  def load(i):
    loads.append(i)
    if on_load is not None:
      on_load(i)
    inputs = inference.read_or_skip(source, source.image, i)
    return None if inputs is None else (inputs, source.ids[i])

  def write(i, outputs, image_id):
    assert image_id == source.ids[i]
    np.save(os.path.join(out_dir, image_id + ".npy"), outputs["map"])

  return inference.PerImage(name="toy", compute=_toy_compute, input_spec=_toy_spec, load=load,
                            write=write, done_name=lambda image_id: image_id + ".npy",
                            done_dir=out_dir)


def test_run_split_writes_each_image_once_and_resumes(tmp_path):
  source = _Source(SIZES)
  engine = inference.Engine(_toy_compute, _toy_spec, _toy_variables())
  loads = []
  task = _toy_task(source, str(tmp_path), loads)
  stats = inference.run_split(task, engine, source, range(len(SIZES)), show_progress=False)
  assert stats["computed"] == len(SIZES) and stats["skipped"] == 0
  assert stats["num_sizes"] == 4
  # (12, 16): 9 images = a full group of 8 on 8 devices and 1 on 1; the others 2, 1, 1 images.
  assert stats["num_programs"] == 5
  assert sorted(loads) == list(range(len(SIZES)))
  alone = jax.jit(_toy_compute, static_argnums=2)
  for i, size in enumerate(SIZES):
    want = jax.device_get(alone(_toy_variables(), _toy_inputs(size, i), size))["map"]
    np.testing.assert_array_equal(np.load(tmp_path / f"im{i:02d}.npy"), want)
  # A rerun does nothing; a removed output is computed again, alone.
  loads.clear()
  assert inference.run_split(task, engine, source, range(len(SIZES)),
                             show_progress=False)["computed"] == 0
  os.remove(tmp_path / "im04.npy")
  stats = inference.run_split(task, engine, source, range(len(SIZES)), show_progress=False)
  assert stats["computed"] == 1 and loads == [4]


def test_run_split_takes_this_process_share(tmp_path, monkeypatch):
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  monkeypatch.setattr(jax, "process_count", lambda: 3)
  source = _Source(SIZES)
  engine = inference.Engine(_toy_compute, _toy_spec, _toy_variables())
  stats = inference.run_split(_toy_task(source, str(tmp_path), []), engine, source,
                              range(len(SIZES)), show_progress=False)
  assert stats["num_images"] == len(range(1, len(SIZES), 3))
  assert sorted(os.listdir(tmp_path)) == [f"im{i:02d}.npy" for i in range(1, len(SIZES), 3)]


def test_unreadable_images_are_skipped_or_named(tmp_path):
  engine = inference.Engine(_toy_compute, _toy_spec, _toy_variables())
  source = _Source(SIZES, skip_bad=True, bad_index=3, bad_header=5)
  os.makedirs(tmp_path / "a")
  stats = inference.run_split(_toy_task(source, str(tmp_path / "a"), []), engine, source,
                              range(len(SIZES)), show_progress=False)
  assert stats["skipped"] == 2 and stats["computed"] == len(SIZES) - 2
  assert sorted(os.listdir(tmp_path / "a")) == [f"im{i:02d}.npy" for i in range(len(SIZES))
                                                if i not in (3, 5)]
  os.makedirs(tmp_path / "b")
  source = _Source(SIZES, bad_index=3)
  with pytest.raises(voc.DataError, match="im03.jpg: cannot decode image"):
    inference.run_split(_toy_task(source, str(tmp_path / "b"), []), engine, source,
                        range(len(SIZES)), show_progress=False)


def test_an_interrupt_stops_between_groups_and_a_rerun_finishes(tmp_path):
  source = _Source(SIZES)
  engine = inference.Engine(_toy_compute, _toy_spec, _toy_variables())

  def on_load(i):
    if i == 4:  # image 4 is group 3 of 5; its inputs are read while group 2 computes
      signal.raise_signal(signal.SIGTERM)

  with pytest.raises(interrupt.Interrupted):
    inference.run_split(_toy_task(source, str(tmp_path), [], on_load), engine, source,
                        range(len(SIZES)), show_progress=False)
  written = sorted(os.listdir(tmp_path))
  # Groups in order: (12, 16) x 8, (12, 16) x 2, (16, 12) x 2, (10, 14) [4], (9, 20) [7]. The
  # loop stops after the group during which the signal's flag is first seen (2, or 3 when the
  # read thread had not got to image 4 yet), with every computed group written, whole.
  groups = [[0, 2, 3, 6, 8, 9, 10, 11], [12, 13], [1, 5], [4], [7]]
  prefixes = [sorted(f"im{i:02d}.npy" for g in groups[:n] for i in g) for n in (3, 4)]
  assert written in prefixes
  stats = inference.run_split(_toy_task(source, str(tmp_path), []), engine, source,
                              range(len(SIZES)), show_progress=False)
  assert stats["computed"] == len(SIZES) - len(written)
  assert len(os.listdir(tmp_path)) == len(SIZES)


def test_a_failing_load_surfaces_without_hanging(tmp_path):
  source = _Source(SIZES)
  engine = inference.Engine(_toy_compute, _toy_spec, _toy_variables())

  def on_load(i):
    if i == 2:
      raise FileNotFoundError("cams/im02.npz: no such file")

  with pytest.raises(FileNotFoundError, match="im02.npz"):
    inference.run_split(_toy_task(source, str(tmp_path), [], on_load), engine, source,
                        range(len(SIZES)), show_progress=False)


# ------------------------------------------------------------------------------------------------
# The stages' per-image functions on the engine = their programs before it.
# ------------------------------------------------------------------------------------------------

IMAGE_SIZES = [(20, 27), (27, 20), (20, 27), (19, 22)]


def _images():
  rng = np.random.RandomState(5)
  return [rng.randint(0, 255, hw + (3,)).astype(np.uint8) for hw in IMAGE_SIZES]


def _by_size(items):
  groups = {}
  for i, hw in enumerate(IMAGE_SIZES):
    groups.setdefault(hw, []).append(i)
  return [(hw, [items[i] for i in members], members) for hw, members in groups.items()]


def test_random_walk_on_the_engine_equals_the_per_image_program():
  rc = config_dict.ConfigDict(dict(radius=5, beta=8, logt=3, bg_mode="power", bg_value=0.27,
                                   bg_power=6.0))
  model = models.get_model("affinity_net", width_divisor=32, stage_blocks=(1, 1, 1, 1))
  variables = jax.device_get(train_state.init_variables(model, jax.random.PRNGKey(0),
                                                        (24, 24, 3)))
  rng = np.random.RandomState(2)
  cams = [rng.uniform(size=hw + (4,)).astype(np.float32) * (rng.uniform(size=4) > 0.5)
          for hw in IMAGE_SIZES]
  inputs = [rw_infer.mask_inputs(im, cam) for im, cam in zip(_images(), cams)]

  @jax.jit
  def mask_fn(variables, image, cam_fg):  # the loop before the engine: one image, one device
    features = model.apply(variables, image[None], train=False)["features"][0]
    return random_walk.random_walk_mask(features, cam_fg, radius=5, beta=8, logt=3,
                                        bg_mode="power", bg_value=0.27, alpha=6.0)

  engine = inference.Engine(
      lambda v, x, size: rw_infer.mask_of_image(model, v, x, size, refine_config=rc),
      lambda size: rw_infer.mask_input_spec(size, num_fg=4), variables)
  for hw, group, members in _by_size(inputs):
    for i, got in zip(members, engine(group, hw)):
      want = np.asarray(mask_fn(variables, inputs[i]["image"], inputs[i]["cam"]))
      np.testing.assert_array_equal(got, want)
      assert got.shape == hw


def test_segmentation_on_the_engine_equals_the_per_image_program():
  from test_segment_models import flax_model  # pylint: disable=import-outside-toplevel
  model = flax_model("resnet38", "v1", wd=32)
  variables = jax.device_get(train_state.init_variables(model, jax.random.PRNGKey(1),
                                                        (24, 32, 3)))
  scales = (0.5, 1.0, 1.5)
  norms = [seg_augment.normalize_float32(im) for im in _images()]
  inputs = [seg_infer.seg_inputs(x, scales, True) for x in norms]

  def forward(variables, x, size):  # the loop before the engine: a program per scale
    up = resize.resize_bilinear(model.apply(variables, x, train=False)["logits"], size,
                                align_corners=True)
    return jnp.sum(up.at[1].set(up[1, :, ::-1]), axis=0)

  forward = jax.jit(forward, static_argnums=(2,))
  engine = inference.Engine(
      lambda v, x, size: seg_infer.logits_of_image(model, v, x, size),
      lambda size: seg_infer.seg_input_spec(size, scales=scales, flip=True), variables)
  for hw, group, members in _by_size(inputs):
    for i, got in zip(members, engine(group, hw)):
      total = None
      for x in inputs[i]:
        out = forward(variables, jnp.asarray(x), hw)
        total = out if total is None else total + out
      np.testing.assert_array_equal(got, np.asarray(total))
      np.testing.assert_array_equal(
          np.asarray(got, np.float32) / 6,
          seg_infer.predict_logits(model, variables, norms[i], scales, True))


@pytest.mark.integration  # another interpreter
def test_inference_commands_start_without_tensorflow():
  # TensorFlow (tf.data) takes some 4 s to import and only training needs it.
  root = e2e.ROOT
  code = ("import sys, ppc_jax.seeds.infer, ppc_jax.refine.rw_infer, ppc_jax.segment.seg_infer; "
          "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow')[:3])")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      p for p in (root, os.environ.get("PYTHONPATH", "")) if p))
  proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True,
                        text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == "[]", proc.stdout
