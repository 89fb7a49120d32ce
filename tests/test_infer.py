"""Multi-scale CAM inference: grouped + sharded batches equal one-input-at-a-time inference."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest

from data_fixtures import synth_root, voc_copy  # noqa: F401  (pytest fixtures)

from ppc_jax.seeds import cam_postprocess
from ppc_jax import config_lib
from ppc_jax import models
from ppc_jax import sharding as shd
from ppc_jax import train_state
from ppc_jax.data import infer_inputs
from ppc_jax.data import voc
from ppc_jax.seeds import infer as infer_lib
from ppc_jax.seeds.infer import CamInference, group_by_size, run_inference

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


def test_grouped_sharded_inference_equals_per_input_loop():
  model, variables = _tiny()
  rng = np.random.RandomState(0)
  images = [PIL.Image.fromarray(rng.randint(0, 255, (22, 29, 3), np.uint8)) for _ in range(3)]
  labels = np.zeros((3, 20), np.float32)
  labels[0, [2, 7]] = 1
  labels[1, 0] = 1
  labels[2, [5, 6, 19]] = 1

  engine = CamInference(model, variables, scales=SCALES, flip=True, cam_key="cam_rv")
  assert engine.num_devices == 8  # 3 images x 2 inputs = 6, padded to 8 and sharded
  # The project's mesh (sharding.make_mesh) over this process's devices, Auto axis as in training.
  assert engine.mesh.axis_names == (shd.DATA_AXIS,)
  assert engine.mesh.axis_types == (jax.sharding.AxisType.Auto,)
  assert list(engine.mesh.devices.flat) == jax.local_devices()
  grouped = np.asarray(engine(images, labels))
  for i, image in enumerate(images[:2]):
    expected = _reference_one_image(model, variables, image, labels[i])
    np.testing.assert_allclose(grouped[i], expected, rtol=1e-4, atol=1e-5)
    absent = labels[i] == 0
    np.testing.assert_allclose(grouped[i][..., absent], -1.0, atol=1e-6)  # as the reference

  single = CamInference(model, variables, scales=SCALES, flip=True, cam_key="cam_rv",
                        devices=jax.local_devices()[:1])
  np.testing.assert_allclose(np.asarray(single(images[1:2], labels[1:2]))[0], grouped[1],
                             rtol=1e-4, atol=1e-5)


def test_precompiled_programs_are_the_ones_run_and_shapes_are_shared():
  """precompile compiles every program of the split ahead of the loop (in threads); the calls
  then run those programs, never compile again, and give the jitted path's CAMs bit for bit."""
  model, variables = _tiny()
  rng = np.random.RandomState(1)
  # 22x30 at scale 0.5 is 11x15, which is the 11x15 image at scale 1.0: one forward program.
  sizes = [(22, 30), (11, 15)]
  images = {hw: [PIL.Image.fromarray(rng.randint(0, 255, hw + (3,), np.uint8)) for _ in range(2)]
            for hw in sizes}
  labels = np.zeros((2, 20), np.float32)
  labels[0, [1, 4]] = 1
  labels[1, 9] = 1
  jitted = CamInference(model, variables, scales=SCALES, flip=True, cam_key="cam_rv")
  engine = CamInference(model, variables, scales=SCALES, flip=True, cam_key="cam_rv")
  groups = [(2, hw) for hw in sizes]
  keys = engine.programs(groups)
  forward = sorted(k for k in keys if k[0] == "forward")
  # B = 2 images x 2 inputs padded to the 8 devices; shapes (11, 15), (22, 30), (6, 8) (the
  # 11x15 image at 0.5: round(5.5) = 6, round(7.5) = 8, halves to even) -> 3 programs, not 4.
  assert forward == [("forward", 8, 6, 8), ("forward", 8, 11, 15), ("forward", 8, 22, 30)]
  assert len(keys) == 3 + 4 + 2  # forward, merge per (size, scale), finish per size
  # In the order the first call needs them: its scale-0.5 forward and merge come first.
  assert keys[:2] == [("forward", 8, 11, 15), ("merge", 8, 11, 15, 2, 22, 30)]
  assert engine.precompile(groups, num_fg=20, threads=2) == len(keys)
  assert engine.precompile(groups, num_fg=20) == 0  # nothing left to compile
  for hw in sizes:
    got = np.asarray(engine(images[hw], labels))
    np.testing.assert_array_equal(got, np.asarray(jitted(images[hw], labels)))
  # The precompiled programs ran: the jitted functions of `engine` never compiled anything.
  assert engine._forward._cache_size() == 0  # pylint: disable=protected-access
  assert engine._merge._cache_size() == 0  # pylint: disable=protected-access
  assert engine._finish._cache_size() == 0  # pylint: disable=protected-access
  assert jitted._forward._cache_size() == 3  # pylint: disable=protected-access


def test_size_windows_cover_the_groups_in_order():
  groups = [([0, 1], (2, 3)), ([2], (2, 3)), ([3], (4, 5)), ([4], (6, 7)), ([5], (4, 5)),
            ([6], (8, 9))]
  windows = infer_lib.size_windows(groups, 2)
  assert [g for w in windows for g in w] == groups  # every group once, in loop order
  assert [len({size for _, size in w}) for w in windows] == [2, 2, 1]
  assert infer_lib.size_windows([], 3) == []
  assert infer_lib.size_windows(groups, 8) == [groups]


def test_release_keeps_only_what_is_asked_for():
  model, variables = _tiny()
  engine = CamInference(model, variables, scales=SCALES, flip=True, cam_key="cam_rv")
  groups = [(1, (10, 12)), (1, (12, 10))]
  engine.precompile(groups, num_fg=20, threads=2)
  keep = engine.programs(groups[1:])
  engine.release(keep=keep)
  assert sorted(engine._compiled) == sorted(keep)  # pylint: disable=protected-access


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
  groups = group_by_size(Source(), range(len(sizes)), max_group=2)
  assert groups == [[0, 2], [3], [1, 4]]


def test_make_mesh_device_list_errors():
  with pytest.raises(ValueError, match="at least one device"):
    shd.make_mesh(devices=[])
  with pytest.raises(ValueError, match="not both"):
    shd.make_mesh(2, devices=jax.local_devices())


def test_unreadable_image_fails_inference_naming_the_file(voc_copy, tmp_path):
  """A JPEG cut in half passes the eager header check; inference then names it, before any work."""
  config = config_lib.base_config()
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
  config = config_lib.base_config()
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
