"""Multi-scale CAM inference on the engine: grouped + sharded batches give each image's own CAM."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest

from data_fixtures import synth_root, voc_copy  # noqa: F401  (pytest fixtures)

from ppc_jax.seeds import cam_postprocess
from ppc_jax import config_lib
from ppc_jax import inference
from ppc_jax import models
from ppc_jax import sharding as shd
from ppc_jax import train_state
from ppc_jax.data import infer_inputs
from ppc_jax.data import voc
from ppc_jax.seeds import infer as infer_lib
from ppc_jax.seeds.infer import run_inference

SCALES = (0.5, 1.0)


def _tiny():
  cfg = config_lib.model_config(width_divisor=32)
  cfg.stage_blocks = (1, 1, 1, 1)
  model = models.build_model(cfg)
  variables = jax.device_get(train_state.init_variables(model, jax.random.PRNGKey(0), (32, 32, 3)))
  return model, variables


def _reference_one_image(model, variables, image, labels):
  """The reference's loop: every input on its own, summed, then normalised (METHOD 4.1)."""
  arrays = infer_inputs.multiscale_flip(image, SCALES, flip=True)
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  total = None
  for stack in arrays:
    for k in range(stack.shape[0]):  # one input at a time: [s0, s0f, s1, s1f, ...]
      cam = apply(variables, jnp.asarray(stack[k:k + 1]))["cam_rv"]
      total = cam_postprocess.merge_scale(cam, labels, (image.height, image.width),
                                          flipped=(k == 1,), sum_cam=total)
  return np.asarray(cam_postprocess.normalize_cam(total))


def _inputs(images, labels):
  return [infer_lib.cam_inputs(im, l, scales=SCALES, flip=True) for im, l in zip(images, labels)]


def _today_per_image(model, variables, image, labels):
  """CAM inference of one image as it ran before the engine: a jitted [2, Hs, Ws, 3] forward per
  scale, a jitted merge into the running sum, a jitted normalisation, on one device."""
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False)["cam_rv"])
  size = (image.height, image.width)
  merge = jax.jit(lambda c, l, s: cam_postprocess.merge_scale(c, l, size, sum_cam=s))
  total = jnp.zeros(size + (labels.shape[-1],), jnp.float32)
  for x in infer_inputs.multiscale_flip(image, SCALES, flip=True):
    total = merge(forward(variables, x), labels, total)
  return np.asarray(jax.jit(cam_postprocess.normalize_cam)(total))


def test_grouped_sharded_inference_equals_per_input_loop():
  model, variables = _tiny()
  rng = np.random.RandomState(0)
  images = [PIL.Image.fromarray(rng.randint(0, 255, (22, 29, 3), np.uint8)) for _ in range(3)]
  labels = np.zeros((3, 20), np.float32)
  labels[0, [2, 7]] = 1
  labels[1, 0] = 1
  labels[2, [5, 6, 19]] = 1

  engine = infer_lib.cam_engine(model, variables, scales=SCALES, flip=True, cam_key="cam_rv")
  assert engine.num_devices == 8  # 3 images on the first 3 devices, one each
  assert engine.key(3, (22, 29)) == ((22, 29), 3)
  grouped = np.stack(engine(_inputs(images, labels), (22, 29)))
  for i, image in enumerate(images):
    # The reference's loop, one input at a time: the same up to fp32 reduction order (a batch of
    # 2 vs 1 in the convolutions' blocking), ~1e-6 relative on values of order 1.
    expected = _reference_one_image(model, variables, image, labels[i])
    np.testing.assert_allclose(grouped[i], expected, rtol=1e-4, atol=1e-5)
    absent = labels[i] == 0
    np.testing.assert_allclose(grouped[i][..., absent], -1.0, atol=1e-6)  # as the reference
    # Before the engine, per image: bit for bit (the device runs the one-image program).
    np.testing.assert_array_equal(grouped[i], _today_per_image(model, variables, image,
                                                               labels[i]))
  single = infer_lib.cam_engine(model, variables, scales=SCALES, flip=True, cam_key="cam_rv",
                                devices=jax.local_devices()[:1], images_per_device=3)
  np.testing.assert_array_equal(np.stack(single(_inputs(images, labels), (22, 29))), grouped)


def test_precompiled_programs_are_the_ones_run():
  """precompile compiles every program of the groups ahead (in threads); the calls then run
  those programs and compile nothing more."""
  model, variables = _tiny()
  rng = np.random.RandomState(1)
  sizes = [(22, 30), (11, 15)]
  images = {hw: [PIL.Image.fromarray(rng.randint(0, 255, hw + (3,), np.uint8)) for _ in range(2)]
            for hw in sizes}
  labels = np.zeros((2, 20), np.float32)
  labels[0, [1, 4]] = 1
  labels[1, 9] = 1
  engine = infer_lib.cam_engine(model, variables, scales=SCALES, flip=True, cam_key="cam_rv")
  groups = [([0, 1], hw) for hw in sizes]
  keys = engine.keys(groups)
  assert keys == [((22, 30), 2), ((11, 15), 2)]  # one program per size and device count
  assert engine.precompile(keys, threads=2) == len(keys)
  assert engine.precompile(keys) == 0  # nothing left to compile
  compiled = dict(engine._compiled)  # pylint: disable=protected-access
  compiles = []
  engine._compile = lambda key: compiles.append(key)  # pylint: disable=protected-access
  for hw in sizes:
    got = np.stack(engine(_inputs(images[hw], labels), hw))
    for i in range(2):
      np.testing.assert_array_equal(got[i], _today_per_image(model, variables, images[hw][i],
                                                             labels[i]))
  assert not compiles and engine._compiled == compiled  # pylint: disable=protected-access


def test_group_by_size_keeps_sizes_apart(tmp_path):
  class Source:  # the one reader method grouping uses
    image_paths = []

    def image_size(self, i):
      with PIL.Image.open(self.image_paths[i]) as im:
        return im.height, im.width

  sizes = [(20, 30), (30, 20), (20, 30), (20, 30), (30, 20)]
  for i, (w, h) in enumerate(sizes):
    path = tmp_path / f"{i}.jpg"
    PIL.Image.new("RGB", (w, h)).save(path)
    Source.image_paths.append(str(path))
  groups = inference.groups_by_size(Source(), range(len(sizes)), max_group=2)
  assert groups == [([0, 2], (30, 20)), ([3], (30, 20)), ([1, 4], (20, 30))]


def test_make_mesh_device_list_errors():
  with pytest.raises(ValueError, match="at least one device"):
    shd.make_mesh(devices=[])
  with pytest.raises(ValueError, match="not both"):
    shd.make_mesh(2, devices=jax.local_devices())


def test_unreadable_image_fails_inference_naming_the_file(voc_copy, tmp_path):
  """A JPEG cut in half passes the eager header check; inference then names it, before any work."""
  config = config_lib.seeds_config()
  config.input.data_dir = voc_copy
  model, variables = _tiny()
  bad = voc.VOCSource(voc_copy, "train").image_paths[0]
  with open(bad, "rb") as f:
    data = f.read()
  with open(bad, "wb") as f:
    f.write(data[:len(data) // 2])
  with pytest.raises(voc.DataError, match=os.path.basename(bad) + ": cannot decode image"):
    run_inference(config, str(tmp_path), split="train", out_dir=str(tmp_path / "out"),
                  variables=variables, model=model)
  assert not os.listdir(tmp_path / "out" / "cams")


def test_cam_files_are_npz_and_mark_images_done(voc_copy, tmp_path):
  """Inference writes cams/<id>.npz (no pickle); a rerun skips what is there; the reference format
  (asked for) writes <id>.npy with the same values and counts only its own files as done."""
  from ppc_jax.data import cam_io  # pylint: disable=import-outside-toplevel
  config = config_lib.seeds_config()
  config.input.data_dir = voc_copy
  config.infer.scales = (1.0,)
  config.infer.max_images = 2
  config.infer.num_overlays = 0
  config.progress_bar = False
  model, variables = _tiny()
  out = tmp_path / "out"
  kw = dict(split="train", out_dir=str(out), variables=variables, model=model)
  summary = run_inference(config, str(tmp_path), **kw)
  ids = voc.VOCSource(voc_copy, "train").ids[:2]
  assert summary["computed"] == 2
  assert sorted(os.listdir(out / "cams")) == sorted(i + ".npz" for i in ids)
  stamps = {p: p.stat().st_mtime_ns for p in (out / "cams").iterdir()}
  assert run_inference(config, str(tmp_path), **kw)["computed"] == 0
  assert stamps == {p: p.stat().st_mtime_ns for p in (out / "cams").iterdir()}
  summary = run_inference(config, str(tmp_path), cam_format="reference_npy", **kw)
  assert summary["computed"] == 2  # the npz files are not the reference format's
  for image_id in ids:
    ours = cam_io.load_cam_dict(out / "cams" / f"{image_id}.npz")
    theirs = np.load(out / "cams" / f"{image_id}.npy", allow_pickle=True).item()
    assert list(ours) == list(theirs)
    for k in ours:
      np.testing.assert_array_equal(ours[k], theirs[k])
