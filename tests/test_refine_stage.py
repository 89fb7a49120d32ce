"""Stage 2 end to end: AffinityNet input, training on the shared loop, resume, random walk.

* `aff_data.make_example` equals an independent numpy re-derivation of the reference's
  transform chain (jitter; uint8 + scores into a zero float32 container; float32 normalise; flip;
  8x8 block mean; la/ha label rules) bit for bit;
* the iterator is a pure function of (seed, step): a resumed iterator yields the uninterrupted
  run's batches; bad CRF files fail naming the file, and a crafted pickle runs nothing;
* `python -m ppc_jax.train` with an AffinityNet config trains on 8 fake devices through
  `trainer.run_loop` (checkpoints, metrics), resumes from a checkpoint to the uninterrupted
  parameters, and can start from a stage-1 run's backbone;
* `ppc_jax.refine.rw_infer` writes one mask PNG per image of the split (values are classes of the
  image or background), reports mask and seed mIoU, and skips finished images on a re-run.
"""

import os
import shutil

import jax
import numpy as np
import PIL.Image
import pytest

import e2e_fixtures as e2e
from ppc_jax.data import cam_io
from ppc_jax import config_lib
from ppc_jax import models
from ppc_jax import optim
from ppc_jax import sharding as shd
from ppc_jax import train_state
from ppc_jax import trainer
from ppc_jax.refine import aff_data
from ppc_jax.refine import crf
from ppc_jax.data import voc
from ppc_jax.data import voc_meta

# Shares the tiny set, the stage-1 reference run and the compilation cache with the other
# end-to-end modules.
pytestmark = pytest.mark.xdist_group("train_e2e")


# ------------------------------------------------------------------------------------------------
# One example: the reference's transform chain, re-derived.
# ------------------------------------------------------------------------------------------------


def _reference_example(image, la, ha, flip, crop_u, crop):
  """The reference's VOC12AffDataset steps written out with plain numpy (no jitter)."""
  img = np.asarray(image)
  label = np.concatenate([la, ha], axis=-1)
  joint = np.concatenate((img, label), axis=-1)      # uint8 + float32 -> float32
  h, w = img.shape[:2]
  ch, cw = min(crop, h), min(crop, w)
  u_w, u_h = crop_u
  w_space, h_space = w - crop, h - crop
  if w_space > 0:
    cont_left, img_left = 0, min(int(np.floor(u_w * (w_space + 1))), w_space)
  else:
    cont_left, img_left = min(int(np.floor(u_w * (-w_space + 1))), -w_space), 0
  if h_space > 0:
    cont_top, img_top = 0, min(int(np.floor(u_h * (h_space + 1))), h_space)
  else:
    cont_top, img_top = min(int(np.floor(u_h * (-h_space + 1))), -h_space), 0
  container = np.zeros((crop, crop, joint.shape[-1]), np.float32)
  container[cont_top:cont_top + ch, cont_left:cont_left + cw] = (
      joint[img_top:img_top + ch, img_left:img_left + cw])
  img, label = container[..., :3], container[..., 3:]
  out = np.empty_like(img, np.float32)
  for c in range(3):
    out[..., c] = (img[..., c] / 255. - voc_meta.IMAGENET_MEAN[c]) / voc_meta.IMAGENET_STD[c]
  if flip:
    out, label = np.fliplr(out), np.fliplr(label)
  s = crop // 8
  pooled = np.zeros((s, s, label.shape[-1]), np.float64)
  for i in range(s):
    for j in range(s):
      pooled[i, j] = label[8 * i:8 * i + 8, 8 * j:8 * j + 8].astype(np.float64).mean(axis=(0, 1))
  no_score = pooled.max(-1) < 1e-5
  k = la.shape[-1]
  la_arg, ha_arg = pooled[..., :k].argmax(-1), pooled[..., k:].argmax(-1)
  lab = la_arg.astype(np.uint8)
  lab[la_arg == 0] = 255
  lab[ha_arg == 0] = 0
  lab[no_score] = 255
  return out, lab


@pytest.mark.parametrize("size,flip,crop_u", [((40, 56), True, (0.3, 0.7)),
                                              ((72, 80), False, (0.9, 0.1)),
                                              ((64, 64), True, (0.0, 0.99))])
def test_example_equals_the_reference_chain(size, flip, crop_u):
  rng = np.random.default_rng(sum(size))
  h, w = size
  image = PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
  # Scores with real ties and regions: background and two classes, la / ha differ in background.
  fg = rng.random((h, w, 2)).astype(np.float32)
  la = np.concatenate([(1 - fg.max(-1, keepdims=True)) ** 4, fg], -1).astype(np.float32)
  ha = np.concatenate([(1 - fg.max(-1, keepdims=True)) ** 24, fg], -1).astype(np.float32)
  params = dict(target_long=None, flip=flip, factors=(None, None, None, None),
                order=(0, 1, 2, 3), crop_u=crop_u)
  got_image, got_label = aff_data.make_example(image, la, ha, params, 64)
  want_image, want_label = _reference_example(image, la, ha, flip, crop_u, 64)
  # Same float32 operations in the same order: bit-identical.
  np.testing.assert_array_equal(got_image, want_image)
  # Pooled means in float64 on both sides; a label could differ only on an exact tie between
  # two pooled scores, which random scores do not produce.
  np.testing.assert_array_equal(got_label, want_label)
  assert got_label.dtype == np.uint8 and got_label.shape == (8, 8)
  if h < 64 or w < 64:
    assert (got_label == 255).any()  # the padding carries no score


@pytest.mark.parametrize("h,w", [(8, 8), (12, 9), (56, 56), (3, 7)])
def test_device_pair_labels_equal_the_host_labels(h, w):
  from ppc_jax.refine import affinity_loss as affinity
  from ppc_jax.refine import affinity_labels
  rng = np.random.default_rng(h * w)
  maps = rng.choice(np.array([0, 1, 2, 255], np.uint8), size=(3, h, w))
  got = jax.device_get(jax.jit(lambda m: affinity.pair_labels_jnp(m, 5))(maps))
  for b in range(3):
    want = affinity_labels.pair_labels(maps[b], 5)
    for kind in ("bg", "fg", "neg"):
      np.testing.assert_array_equal(got[kind][b], want[kind])


# ------------------------------------------------------------------------------------------------
# CRF files and the iterator.
# ------------------------------------------------------------------------------------------------


def write_crf_dirs(voc_root, split, out_dir, fmt="npz"):
  """la / ha dicts made from the GT masks (keys 0 and k + 1 of the present classes), as
  crf_labels writes them (npz) or in the reference's format (np.save of the pickled dict)."""
  source = voc.VOCSource(voc_root, split, need_masks=True)
  la_dir, ha_dir = os.path.join(out_dir, "la"), os.path.join(out_dir, "ha")
  os.makedirs(la_dir, exist_ok=True)
  os.makedirs(ha_dir, exist_ok=True)
  for i, image_id in enumerate(source.ids):
    mask = source.mask(i)
    present = [int(k) for k in np.flatnonzero(source.labels[i])]
    fg = {k + 1: (mask == k + 1).astype(np.float32) * 0.9 for k in present}
    fg_max = np.max(np.stack(list(fg.values())), 0) if fg else np.zeros(mask.shape, np.float32)
    for d, alpha in ((la_dir, 4), (ha_dir, 24)):
      scores = {0: ((1 - fg_max) ** alpha).astype(np.float32) * 0.5, **fg}
      crf.save_scores(os.path.join(d, image_id), scores, fmt=fmt)
  return la_dir, ha_dir


@pytest.fixture(scope="module")
def crf_dirs(tmp_path_factory):
  root = e2e.synth_root(tmp_path_factory)
  return root, write_crf_dirs(root, "train_aug", str(tmp_path_factory.mktemp("crf")))


def aff_config(root, la_dir, ha_dir, **overrides):
  config = config_lib.affinity_config(config_lib.parse_arg("runlocal", **config_lib.VARIANT_DEFAULTS))
  config.input.data_dir = root
  config.input.batch_size = 8          # one image per fake device
  config.input.crop_size = 64          # 8x8 label maps: the radius shrinks to 3
  config.input.num_parallel_calls = 2
  config.model.width_divisor = 32
  config.model.stage_blocks = (1, 1, 1, 1)
  config.refine.la_dir = la_dir
  config.refine.ha_dir = ha_dir
  config.total_steps = 4
  config.ckpt_every_steps = 2
  config.ckpt_max_to_keep = 10
  config.log_every_steps = 2
  config.progress_bar = False
  config.infer.max_images = 0          # every image of the split
  for key, value in overrides.items():
    node = config
    *parents, last = key.split(".")
    for p in parents:
      node = node[p]
    node[last] = value
  return config


def test_iterator_resumes_and_is_deterministic(crf_dirs):
  root, (la_dir, ha_dir) = crf_dirs
  config = aff_config(root, la_dir, ha_dir)
  source = aff_data.AffSource(voc.VOCSource(root, "train_aug"), la_dir, ha_dir)

  def take(start, n):
    with aff_data.make_aff_iterator(config.input, source, start_step=start, process_index=0,
                                        process_count=1) as it:
      return [next(it) for _ in range(n)]

  full = take(0, 4)
  resumed = take(2, 2)
  for a, b in zip(full[2:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["aff_label"], b["aff_label"])
  assert full[0]["image"].shape == (8, 64, 64, 3)
  assert full[0]["aff_label"].shape == (8, 8, 8) and full[0]["aff_label"].dtype == np.uint8
  labels = np.concatenate([b["aff_label"].ravel() for b in full])
  assert (labels == 0).any() and (labels == 255).any() and ((labels > 0) & (labels < 255)).any()
  # Two processes split each global batch into disjoint halves of the same batch.
  with aff_data.make_aff_iterator(config.input, source, process_index=1,
                                      process_count=2) as it:
    np.testing.assert_array_equal(next(it)["image"], full[0]["image"][4:])


class _Payload:
  def __reduce__(self):
    return (os.system, ("touch PAYLOAD_RAN",))


def test_bad_crf_files_are_named(crf_dirs, tmp_path):
  root, (la_dir, _) = crf_dirs
  image_id = voc.VOCSource(root, "train_aug").ids[0]
  good = os.path.join(la_dir, image_id + ".npz")
  scores, keys = aff_data.load_crf_scores(good, 20)
  assert keys[0] == 0 and scores.shape[-1] == len(keys) and scores.dtype == np.float32
  with pytest.raises(voc.DataError, match="not found"):
    aff_data.load_crf_scores(str(tmp_path / "missing.npz"), 20)
  truncated = tmp_path / "truncated.npz"
  truncated.write_bytes(open(good, "rb").read()[:100])
  with pytest.raises(voc.DataError, match="truncated.npz"):
    aff_data.load_crf_scores(str(truncated), 20)
  bad_keys_npz = tmp_path / "bad_keys.npz"
  crf.save_scores(bad_keys_npz, {0: np.zeros((4, 4), np.float32), 30: np.zeros((4, 4), np.float32)})
  with pytest.raises(voc.DataError, match="bad_keys.npz.*outside 0..20"):
    aff_data.load_crf_scores(str(bad_keys_npz), 20)
  crafted = tmp_path / "crafted.npy"
  np.save(crafted, np.array(_Payload(), dtype=object), allow_pickle=True)
  cwd = os.getcwd()
  os.chdir(tmp_path)
  try:
    # Refused without being unpickled by default, and by the restricted unpickler when the
    # reference's format is asked for.
    with pytest.raises(voc.DataError, match="crafted.npy.*a pickled dict.*read only when asked"):
      aff_data.load_crf_scores(str(crafted), 20)
    with pytest.raises(voc.DataError, match="crafted.npy.*refused pickled global"):
      aff_data.load_crf_scores(str(crafted), 20, fmt="reference_npy")
  finally:
    os.chdir(cwd)
  assert not (tmp_path / "PAYLOAD_RAN").exists()
  bad_keys = tmp_path / "bad_keys.npy"
  np.save(bad_keys, {0: np.zeros((4, 4), np.float32), 30: np.zeros((4, 4), np.float32)})
  with pytest.raises(voc.DataError, match="bad_keys.npy.*outside 0..20"):
    aff_data.load_crf_scores(str(bad_keys), 20, fmt="reference_npy")
  # The array format of wseg's aff_prepare.py (no pickle) loads too.
  array_file = tmp_path / "array.npy"
  np.save(array_file, np.ones((21, 4, 5), np.float32))
  scores, keys = aff_data.load_crf_scores(str(array_file), 20)
  assert scores.shape == (4, 5, 21) and keys is None


def test_reference_crf_dirs_only_when_asked(crf_dirs, tmp_path):
  """The reference's pickled score dicts are read with crf_format='reference_npy' (through the
  restricted unpickler), giving the npz files' scores; by default they are refused, named."""
  root, (la_dir, ha_dir) = crf_dirs
  voc_source = voc.VOCSource(root, "train_aug")
  ref_la, ref_ha = write_crf_dirs(root, "train_aug", str(tmp_path / "ref"), fmt="reference_npy")
  assert sorted(os.listdir(ref_la)) == sorted(i + ".npy" for i in voc_source.ids)
  ours = aff_data.AffSource(voc_source, la_dir, ha_dir)
  theirs = aff_data.AffSource(voc_source, ref_la, ref_ha, crf_format="reference_npy")
  for i in range(3):
    for a, b in zip(ours.scores(i), theirs.scores(i)):
      np.testing.assert_array_equal(a, b)
  with pytest.raises(voc.DataError, match=rf"{voc_source.ids[0]}.npy.*a pickled dict"):
    aff_data.AffSource(voc_source, ref_la, ref_ha).scores(0)
  with pytest.raises(voc.DataError, match=rf"{voc_source.ids[0]}.npy: CRF score file not found; "
                                          rf".*{voc_source.ids[0]}.npz exists instead"):
    aff_data.AffSource(voc_source, la_dir, ha_dir, crf_format="reference_npy").scores(0)
  # wseg's plain arrays ([K, H, W], no pickle) where no .npz is: read with the default format.
  plain = tmp_path / "plain"
  plain.mkdir()
  la, _ = ours.scores(0)
  np.save(plain / f"{voc_source.ids[0]}.npy", np.moveaxis(la, -1, 0))
  got, keys = aff_data.load_crf_scores(aff_data.crf_path(str(plain), voc_source.ids[0]), 20)
  np.testing.assert_array_equal(got, la)
  assert keys is None


# ------------------------------------------------------------------------------------------------
# Training, resume, stage-1 backbone, random walk.
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def aff_run(crf_dirs, tmp_path_factory):
  from ppc_jax.refine import aff_trainer
  e2e.compile_cache_dir(tmp_path_factory)
  root, (la_dir, ha_dir) = crf_dirs
  config = aff_config(root, la_dir, ha_dir)
  workdir = str(tmp_path_factory.mktemp("aff_full"))
  metrics = aff_trainer.train_affinity(config, workdir)
  return dict(config=config, workdir=workdir, metrics=metrics,
              state=e2e.load_state(config, workdir))


def test_affinity_training_logs_and_checkpoints(aff_run):
  rows = e2e.metric_rows(aff_run["workdir"])
  assert [r["step"] for r in rows] == [2, 4]
  for key in ("loss", "bg_loss", "fg_loss", "neg_loss", "bg_count", "fg_count", "neg_count",
              "lr", "grad_norm"):
    assert np.isfinite(rows[-1][key]), key
  # Every kind of pair occurs in the GT-made labels.
  assert min(rows[-1][k] for k in ("bg_count", "fg_count", "neg_count")) > 0
  assert e2e.checkpoint_steps(aff_run["workdir"]) == [2, 4]
  # The frozen stem did not move; the heads did.
  state = aff_run["state"]
  init = e2e.load_state(aff_run["config"], aff_run["workdir"], step=2)
  assert np.array_equal(state["params"]["backbone"]["conv1a"]["kernel"],
                        init["params"]["backbone"]["conv1a"]["kernel"])
  assert not np.array_equal(state["params"]["f9"]["kernel"], init["params"]["f9"]["kernel"])


def test_affinity_training_resumes_to_the_uninterrupted_parameters(aff_run, tmp_path):
  from ppc_jax.refine import aff_trainer
  workdir = str(tmp_path / "resumed")
  shutil.copytree(aff_run["workdir"], workdir)
  shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))  # as if stopped after step 2
  assert e2e.checkpoint_steps(workdir) == [2]
  aff_trainer.train_affinity(aff_run["config"], workdir)
  resumed = e2e.load_state(aff_run["config"], workdir)
  # The same programs on the same inputs from the same state: identical.
  assert e2e.max_abs_diff(resumed["params"], aff_run["state"]["params"]) == 0.0


def _initial_state(config):
  model = models.build_model(config.model)
  abstract = jax.eval_shape(lambda r: train_state.init_variables(model, r, (64, 64, 3)),
                            jax.random.PRNGKey(0))
  tx, _, _ = optim.make_optimizer(config.optim, 4, abstract["params"])
  mesh = shd.make_mesh(None)
  return trainer.initial_state(config, model, tx, mesh, jax.random.PRNGKey(0)), mesh


def test_affinity_backbone_from_a_stage1_run(reference, crf_dirs):
  """config.init.backbone_workdir: the trainer's step-0 state holds the stage-1 run's backbone
  (parameters and BN statistics); the heads keep their initialisation."""
  root, (la_dir, ha_dir) = crf_dirs
  config = aff_config(root, la_dir, ha_dir)
  fresh, _ = _initial_state(config)
  config.init.backbone_workdir = reference["workdir"]
  state, _ = _initial_state(config)
  for col in ("params", "batch_stats"):
    assert e2e.max_abs_diff(jax.device_get(state[col]["backbone"]),
                            reference["state"][col]["backbone"]) == 0.0
  assert e2e.max_abs_diff(jax.device_get(state["params"]["f9"]),
                          jax.device_get(fresh["params"]["f9"])) == 0.0
  # A backbone of another width is refused, naming the work directory.
  narrow = aff_config(root, la_dir, ha_dir, **{"model.width_divisor": 16})
  narrow.init.backbone_workdir = reference["workdir"]
  with pytest.raises(ValueError, match="backbone_workdir.*differs"):
    _initial_state(narrow)


def test_random_walk_writes_masks_and_reports(aff_run, tmp_path):
  from ppc_jax.refine import rw_infer
  config = aff_run["config"]
  root = config.input.data_dir
  source = voc.VOCSource(root, "train", need_masks=True)
  cam_dir = tmp_path / "cams"
  cam_dir.mkdir()
  for i, image_id in enumerate(source.ids):
    mask = source.mask(i)
    norm = np.stack([(mask == k + 1).astype(np.float32) for k in range(source.classes.num_fg)], -1)
    cam_io.save_cam_dict(str(cam_dir / image_id), norm, source.labels[i])
  out_dir = str(tmp_path / "rw")
  summary = rw_infer.run_random_walk(config, aff_run["workdir"], cam_dir=str(cam_dir),
                                     out_dir=out_dir, split="train")
  assert summary["computed"] == len(source.ids)
  for i, image_id in enumerate(source.ids):
    mask = np.asarray(PIL.Image.open(os.path.join(out_dir, "masks", image_id + ".png")))
    assert mask.shape == source.mask(i).shape
    allowed = {0} | {k + 1 for k in np.flatnonzero(source.labels[i])}
    assert set(np.unique(mask)) <= allowed
  assert 0.0 <= summary["mask"]["miou"] <= 1.0 and "seed" in summary
  assert os.path.exists(os.path.join(out_dir, "report.json"))
  again = rw_infer.run_random_walk(config, aff_run["workdir"], cam_dir=str(cam_dir),
                                   out_dir=out_dir, split="train", evaluate_masks=False)
  assert again["computed"] == 0
