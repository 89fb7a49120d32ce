"""The voc2012_wsss TFDS data set (ppc_jax/data/tfds_voc.py): built from the synthetic VOC tree,
extracted or as the standard archives, its examples equal the directory reader's; the training
pipeline's dual-view batches and CAM inference are the same from either source."""

import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_fixtures import input_config, synth_root, take  # noqa: F401  (pytest fixtures)
from ppc_jax import config_lib
from ppc_jax import models
from ppc_jax import train_state
from ppc_jax.data import sources
from ppc_jax.data import tfds_voc
from ppc_jax.data import voc
from ppc_jax.data import cam_io
from ppc_jax.seeds import infer

tfds.disable_progress_bar()  # TFDS's per-split bars would flood the test log


@pytest.fixture(scope="module")
def prepared(synth_root, tmp_path_factory):  # pylint: disable=redefined-outer-name
  """TFDS data directory holding voc2012_wsss built from the extracted synthetic tree."""
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  tfds_voc.build(os.path.dirname(os.path.dirname(synth_root)), data_dir)
  return data_dir


def _assert_same_examples(a, b, with_saliency=True):
  assert a.ids == b.ids and a.num_examples == b.num_examples
  np.testing.assert_array_equal(a.labels, b.labels)
  assert a.classes.names == b.classes.names
  for i in range(a.num_examples):
    np.testing.assert_array_equal(np.asarray(a.image_pil(i)), np.asarray(b.image_pil(i)))
    assert a.image_size(i) == b.image_size(i)
    np.testing.assert_array_equal(a.mask(i), b.mask(i))
    if with_saliency:
      np.testing.assert_array_equal(np.asarray(a.saliency_pil(i)), np.asarray(b.saliency_pil(i)))


@pytest.mark.parametrize("split", ["train", "val", "trainval", "train_aug"])
def test_every_split_equals_the_directory_reader(prepared, synth_root, split):  # pylint: disable=redefined-outer-name
  direct = voc.VOCSource(synth_root, split, with_saliency=True)
  stored = tfds_voc.TFDSSource(prepared, split, with_saliency=True)
  _assert_same_examples(direct, stored)
  assert tfds.builder(tfds_voc.NAME, data_dir=prepared).info.splits[split].num_examples == len(
      direct.ids)


def test_built_from_the_standard_archives(synth_root, tmp_path):  # pylint: disable=redefined-outer-name
  """VOCtrainval_11-May-2012.tar (no SegmentationClassAug inside) + SegmentationClassAug.zip."""
  manual = tmp_path / "manual"
  manual.mkdir()
  with tarfile.open(manual / tfds_voc.VOC_ARCHIVE, "w") as tar:
    for name in sorted(os.listdir(synth_root)):
      if name != voc.MASK_AUG_DIR:
        tar.add(os.path.join(synth_root, name), arcname=f"VOCdevkit/VOC2012/{name}")
  with zipfile.ZipFile(manual / tfds_voc.SBD_ARCHIVE, "w") as z:
    aug = os.path.join(synth_root, voc.MASK_AUG_DIR)
    for name in sorted(os.listdir(aug)):
      z.write(os.path.join(aug, name), arcname=f"{voc.MASK_AUG_DIR}/{name}")
  data_dir = str(tmp_path / "tfds")
  tfds_voc.build(str(manual), data_dir)
  for split in ("train", "train_aug"):
    _assert_same_examples(voc.VOCSource(synth_root, split, with_saliency=True),
                          tfds_voc.TFDSSource(data_dir, split, with_saliency=True))


def test_module_command_as_the_readme_writes_it(synth_root, tmp_path):  # pylint: disable=redefined-outer-name
  """`python -m ppc_jax.data.tfds_voc --manual_dir=... --data_dir=...` (the README's build
  command; run as `__main__`, its builder class once failed: "'__main__' is not a package")."""
  data_dir = str(tmp_path / "tfds")
  manual_dir = os.path.dirname(os.path.dirname(synth_root))  # holds VOCdevkit/VOC2012
  proc = subprocess.run([sys.executable, "-m", "ppc_jax.data.tfds_voc",
                         f"--manual_dir={manual_dir}", f"--data_dir={data_dir}"],
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  # TFDS prints its progress to stdout too; the command prints the version directory, then counts.
  assert os.path.join(data_dir, tfds_voc.NAME, str(tfds_voc.Voc2012Wsss.VERSION)) in lines
  for split in ("train", "val", "trainval", "train_aug"):
    direct = voc.VOCSource(synth_root, split, with_saliency=True)
    assert f"  {split}: {len(direct.ids)} examples" in lines
    _assert_same_examples(direct, tfds_voc.TFDSSource(data_dir, split, with_saliency=True))


def test_errors_name_the_data_set_and_the_field(prepared, tmp_path):
  with pytest.raises(FileNotFoundError, match="voc2012_wsss is not prepared there"):
    tfds_voc.TFDSSource(str(tmp_path / "empty"), "train")
  with pytest.raises(ValueError, match=r"config.input.split='test'.*'train_aug'"):
    tfds_voc.TFDSSource(prepared, "test")
  with pytest.raises(ValueError, match="built with the"):
    tfds_voc.TFDSSource(prepared, "train", classes="cat,dog")
  with pytest.raises(FileNotFoundError, match="neither an extracted VOC tree"):
    tfds_voc.build(str(tmp_path), str(tmp_path / "out"))
  cfg = input_config("unused")
  cfg.source = "bucket"
  with pytest.raises(ValueError, match=r"config.input.source='bucket'"):
    sources.open_source(cfg)


@pytest.mark.parametrize("process_index", [0, 1])
def test_training_batches_equal_the_directory_pipeline(prepared, synth_root, process_index):  # pylint: disable=redefined-outer-name
  """Same dual-view batches (view 1, view 2, labels, saliency, indices) from either source, also
  for each process's shard of a 2-process run; resuming at step 3 too."""
  direct = input_config(synth_root, with_saliency=True)
  stored = input_config(synth_root, with_saliency=True, source="tfds", tfds_data_dir=prepared)
  kw = dict(process_index=process_index, process_count=2, with_index=True)
  a, b = take(direct, 3, **kw), take(stored, 3, **kw)
  for x, y in zip(a, b):
    assert sorted(x) == sorted(y) == ["image1", "image2", "index", "labels", "saliency"]
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)
  resumed = take(stored, 1, start_step=2, **kw)[0]
  for k in resumed:
    np.testing.assert_array_equal(resumed[k], b[2][k], err_msg=k)


def test_inference_from_either_source_writes_the_same_cams(prepared, synth_root, tmp_path):  # pylint: disable=redefined-outer-name
  cfg = config_lib.model_config(width_divisor=32)
  cfg.stage_blocks = (1, 1, 1, 1)
  model = models.build_model(cfg)
  variables = jax.device_get(train_state.init_variables(model, jax.random.PRNGKey(0), (32, 32, 3)))
  config = config_lib.seeds_config()
  config.model = cfg
  config.input.data_dir = synth_root
  config.infer.scales = (1.0,)
  config.infer.max_images = 4
  out = {}
  for source in ("directory", "tfds"):
    config.input.source = source
    config.input.tfds_data_dir = prepared
    out[source] = str(tmp_path / source)
    summary = infer.run_inference(config, str(tmp_path), split="train", out_dir=out[source],
                                  variables=variables, model=model)
    assert summary["computed"] == 4
  ids = voc.VOCSource(synth_root, "train").ids[:4]
  for image_id in ids:
    a = cam_io.load_cam_dict(os.path.join(out["directory"], "cams", image_id + ".npz"))
    b = cam_io.load_cam_dict(os.path.join(out["tfds"], "cams", image_id + ".npz"))
    assert sorted(a) == sorted(b)
    for k in a:  # the same pixels through the same programs in one process: bit-identical
      np.testing.assert_array_equal(a[k], b[k])


def test_mask_files_beside_either_source(prepared, synth_root, tmp_path):  # pylint: disable=redefined-outer-name
  """DeepLab's source (`seg_data.seg_source`): images from the source, masks from the pseudo-mask
  PNGs an earlier stage wrote; a missing PNG is an error naming it, or with skip_bad a dropped
  example, the same from either source."""
  from ppc_jax.segment import seg_data  # pylint: disable=import-outside-toplevel
  direct = voc.VOCSource(synth_root, "train_aug")
  mask_dir = tmp_path / "pseudo"
  mask_dir.mkdir()
  for i, image_id in enumerate(direct.ids):
    if i != 2:  # the third image has no pseudo-mask
      shutil.copy(direct.mask_paths[i], mask_dir / (image_id + ".png"))
  config = config_lib.segmentation_config(
      config_lib.parse_arg(None, **config_lib.VARIANT_DEFAULTS))
  config.input = input_config(synth_root, split="train_aug", tfds_data_dir=str(prepared))
  config.segment.mask_dir = str(mask_dir)
  missing = str(mask_dir / (direct.ids[2] + ".png"))
  sources = {}
  for source in ("directory", "tfds"):
    config.input.source = source
    config.input.skip_bad = False
    with pytest.raises(voc.DataError, match=re.escape(missing)):
      seg_data.seg_source(config)
    config.input.skip_bad = True
    sources[source] = seg_data.seg_source(config)
  a, b = sources["directory"], sources["tfds"]
  assert a.ids == b.ids == direct.ids[:2] + direct.ids[3:]
  assert a.mask_paths == b.mask_paths and b.bad.count == 1
  for i in (0, 1, 2, len(b.ids) - 1):  # after the dropped example too: the records still match
    np.testing.assert_array_equal(a.image(i), b.image(i))
    np.testing.assert_array_equal(a.mask(i), b.mask(i))
