"""With `config.input.verify='none'` nothing opens a file before it is used, so a broken image is
first met by the reader of each command: every one must name the file (issue 28), and with
skip_bad leave it out with a counted warning, as the eager checks of verify='header' do.

One JPEG of a tiny synthetic set is cut to 100 bytes (its header is gone). Inference commands
run with an untrained model that never runs (restoring is patched out where the command has no
`variables` argument): the broken image comes first, so the error is met before any compute.
"""

import os
import shutil

import numpy as np
import pytest

from data_fixtures import input_config, synth_root  # noqa: F401  (pytest fixture)
from ppc_jax import config_lib
from ppc_jax import models
from ppc_jax import restore
from ppc_jax.data import pipeline
from ppc_jax.data import sources
from ppc_jax.data import voc
from ppc_jax.refine import aff_data
from ppc_jax.refine import rw_infer
from ppc_jax.data import cam_io
from ppc_jax.seeds import infer
from ppc_jax.segment import seg_data
from ppc_jax.segment import seg_infer

SPLIT = "train"         # 8 images; the truncated one is its first
BAD_ONLY = "bad_only"   # a split of the truncated image alone (skip_bad leaves nothing to run)
HALF_ONLY = "half_only"  # a split of one JPEG cut after its header (its own id, in no other split)
HALF_ID = "2100_999999"


@pytest.fixture(scope="module")
def tree(synth_root, tmp_path_factory):  # noqa: F811
  """Paths of a damaged copy of the tiny set: root, bad (the 100-byte JPEG), half (the JPEG cut
  after its header), crf_dir (la/ and ha/ score files), cam_dir (stage-1 cam_dicts)."""
  base = str(tmp_path_factory.mktemp("verify_none"))
  root = os.path.join(base, "VOC2012")
  shutil.copytree(synth_root, root)
  source = voc.VOCSource(root, SPLIT)
  crf_dir, cam_dir = os.path.join(base, "crf"), os.path.join(base, "cams")
  for d in ("la", "ha"):
    os.makedirs(os.path.join(crf_dir, d))
  os.makedirs(cam_dir)
  rng = np.random.default_rng(0)
  for i, image_id in enumerate(source.ids):  # written from the intact images
    h, w = source.image_size(i)
    for d in ("la", "ha"):
      np.save(os.path.join(crf_dir, d, image_id + ".npy"), rng.random((2, h, w), np.float32))
    cam_io.save_cam_dict(os.path.join(cam_dir, image_id + ".npz"),
                         rng.random((h, w, source.classes.num_fg), np.float32), source.labels[i])
  bad = source.image_paths[0]
  with open(bad, "rb") as f:
    data = f.read()
  with open(bad, "wb") as f:
    f.write(data[:100])
  half = os.path.join(root, voc.IMAGE_DIR, HALF_ID + ".jpg")
  with open(half, "wb") as f:
    f.write(data[:len(data) // 2])
  labels_path = os.path.join(root, voc.CLS_LABELS_FILE)
  table = voc.load_cls_labels(labels_path)
  table[HALF_ID] = source.labels[0]
  voc.save_cls_labels(labels_path, table, source.classes)
  for name, image_id in ((BAD_ONLY, source.ids[0]), (HALF_ONLY, HALF_ID)):
    with open(os.path.join(root, "ImageSets", "Segmentation", name + ".txt"), "w") as f:
      f.write(image_id + "\n")
  return dict(root=root, bad=bad, half=half, crf_dir=crf_dir, cam_dir=cam_dir)


def assert_names(excinfo, path):
  err = excinfo.value
  assert isinstance(err, voc.DataError), repr(err)
  assert err.path == path and path in str(err), str(err)
  assert "image" in err.problem, err.problem  # says what the file should have been


def assert_skipped(bad_log, path):
  assert [p for p, _ in bad_log.entries] == [path], bad_log.entries
  assert bad_log.kinds == ["unreadable image"], bad_log.kinds


def _first_batches(iterator, n=2):
  with iterator as it:
    return [next(it) for _ in range(n)]


def _check_training_input(iterator, source, bad, skip_bad):
  """Without skip_bad the first batches fail naming `bad`; with it they are full and `bad` is
  logged as skipped. Returns the batches (None when they failed)."""
  if not skip_bad:
    with pytest.raises(voc.DataError) as e:
      _first_batches(iterator)
    assert_names(e, bad)
    return None
  batches = _first_batches(iterator)
  assert_skipped(source.bad, bad)
  return batches


# ------------------------------------------------------------------------------------------------
# Training inputs: stage 1, AffinityNet, DeepLab (8 images, batches of 4: two batches see all).


def test_header_check_is_what_none_defers(tree):
  root, bad = tree["root"], tree["bad"]
  header = voc.VOCSource(root, SPLIT, skip_bad=True, verify="header")
  assert_skipped(header.bad, bad)
  with pytest.raises(voc.DataError) as e:
    voc.VOCSource(root, SPLIT, verify="none").image_size(0)
  assert_names(e, bad)


@pytest.mark.parametrize("skip_bad", [False, True])
def test_stage1_training_input(tree, skip_bad):
  root, bad = tree["root"], tree["bad"]
  cfg = input_config(root, split=SPLIT, verify="none", skip_bad=skip_bad)
  source = sources.train_source(cfg)
  assert bad in source.image_paths  # nothing opened yet
  it = pipeline.make_train_iterator(cfg, source, process_index=0, process_count=1)
  batches = _check_training_input(it, source, bad, skip_bad)
  if batches:
    assert batches[1]["image1"].shape == (4, 32, 32, 3)


@pytest.mark.parametrize("skip_bad", [False, True])
def test_affinity_training_input(tree, skip_bad):
  root, bad, crf_dir = tree["root"], tree["bad"], tree["crf_dir"]
  cfg = input_config(root, split=SPLIT, verify="none", skip_bad=skip_bad, resize_long=())
  source = aff_data.AffSource(sources.train_source(cfg), os.path.join(crf_dir, "la"),
                              os.path.join(crf_dir, "ha"))
  it = aff_data.make_aff_iterator(cfg, source, process_index=0, process_count=1)
  batches = _check_training_input(it, source, bad, skip_bad)
  if batches:
    assert batches[1]["aff_label"].shape == (4, 4, 4)


def _seg_config(root, **input_fields):
  config = config_lib.segmentation_config(
      config_lib.parse_arg("runlocal", **config_lib.VARIANT_DEFAULTS))
  config.input.data_dir = root
  config.input.split = SPLIT
  config.input.batch_size = 4
  config.input.crop_size = 32
  config.input.num_parallel_calls = 2
  config.input.verify = "none"
  config.model.num_classes = voc.load_classes("", root).num_classes
  config.segment.mask_dir = os.path.join(root, voc.MASK_DIR)  # GT masks as pseudo-masks
  config.progress_bar = False
  for k, v in input_fields.items():
    config.input[k] = v
  return config


@pytest.mark.parametrize("skip_bad", [False, True])
def test_deeplab_training_input(tree, skip_bad):
  root, bad = tree["root"], tree["bad"]
  config = _seg_config(root, skip_bad=skip_bad)
  source = seg_data.seg_source(config)
  it = seg_data.make_seg_iterator(config, source, process_index=0, process_count=1)
  batches = _check_training_input(it, source, bad, skip_bad)
  if batches:
    assert batches[1]["mask"].shape == (4, 32, 32)


# ------------------------------------------------------------------------------------------------
# Inference commands.


def _untrained(model_config):
  """A model that is built but never run (the broken image stops or is skipped first)."""
  return models.build_model(model_config), {}


@pytest.fixture
def no_restore(monkeypatch):
  """Commands that restore their checkpoint get an untrained model instead."""
  monkeypatch.setattr(restore, "restore_variables",
                      lambda config, workdir: (*_untrained(config.model), 0))


@pytest.mark.parametrize("skip_bad", [False, True])
def test_cam_inference(tree, tmp_path, skip_bad):
  root, bad = tree["root"], tree["bad"]
  config = config_lib.seeds_config()
  config.input.data_dir = root
  config.input.verify = "none"
  config.input.skip_bad = skip_bad
  config.model.num_classes = voc.load_classes("", root).num_classes
  config.progress_bar = False
  model, variables = _untrained(config.model)
  run = lambda split: infer.run_inference(  # noqa: E731
      config, str(tmp_path), split=split, out_dir=str(tmp_path / "out"), model=model,
      variables=variables)
  if not skip_bad:
    with pytest.raises(voc.DataError) as e:
      run(SPLIT)
    assert_names(e, bad)
    return
  summary = run(BAD_ONLY)
  assert (summary["computed"], summary["skipped"]) == (0, 1)


def test_cam_inference_image_truncated_after_its_header(tree, tmp_path):
  """The header reads, the pixels do not: met when decoding, after grouping by size."""
  config = config_lib.seeds_config()
  config.input.data_dir = tree["root"]
  config.input.verify = "none"
  config.model.num_classes = voc.load_classes("", tree["root"]).num_classes
  config.progress_bar = False
  assert voc.read_size(tree["half"])  # the header is intact
  model, variables = _untrained(config.model)
  with pytest.raises(voc.DataError) as e:
    infer.run_inference(config, str(tmp_path), split=HALF_ONLY, out_dir=str(tmp_path / "a"),
                        model=model, variables=variables)
  assert_names(e, tree["half"])
  config.input.skip_bad = True
  summary = infer.run_inference(config, str(tmp_path), split=HALF_ONLY,
                                out_dir=str(tmp_path / "b"), model=model, variables=variables)
  assert (summary["computed"], summary["skipped"]) == (0, 1)


def _check_inference(run, bad, skip_bad):
  """`run(split)` of an inference command: without skip_bad the split fails naming `bad` (met
  by the inference engine's grouping, which reads every header before any work); with it the
  image alone is skipped and counted."""
  if not skip_bad:
    with pytest.raises(voc.DataError) as e:
      run(SPLIT)
    assert_names(e, bad)
    assert e.value.problem.startswith("cannot open image")
    return
  summary = run(BAD_ONLY)
  assert (summary["computed"], summary["skipped"]) == (0, 1)


@pytest.mark.usefixtures("no_restore")
@pytest.mark.parametrize("skip_bad", [False, True])
def test_random_walk(tree, tmp_path, skip_bad):
  root, bad, cam_dir = tree["root"], tree["bad"], tree["cam_dir"]
  config = config_lib.affinity_config(
      config_lib.parse_arg("runlocal", **config_lib.VARIANT_DEFAULTS))
  config.input.data_dir = root
  config.input.verify = "none"
  config.input.skip_bad = skip_bad
  config.progress_bar = False
  run = lambda split: rw_infer.run_random_walk(  # noqa: E731
      config, str(tmp_path), cam_dir=cam_dir, split=split, out_dir=str(tmp_path / "out"),
      evaluate_masks=False)
  _check_inference(run, bad, skip_bad)


@pytest.mark.usefixtures("no_restore")
@pytest.mark.parametrize("skip_bad", [False, True])
def test_segmentation_inference(tree, tmp_path, skip_bad):
  root, bad = tree["root"], tree["bad"]
  config = _seg_config(root, skip_bad=skip_bad)
  run = lambda split: seg_infer.run_segmentation(  # noqa: E731
      config, str(tmp_path), split=split, out_dir=str(tmp_path / "out"), evaluate_split=False)
  _check_inference(run, bad, skip_bad)
