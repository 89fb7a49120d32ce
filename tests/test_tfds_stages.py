"""Every stage reads every source (issue 29): `python -m ppc_jax.pipeline` on the tiny synthetic
set, run once from the VOC tree (config.input.source='directory': the shared `pipeline_reference`)
and once from the voc2012_wsss TFDS set built from that tree (source='tfds'), writes
byte-identical seeds, pseudo-masks and segmentations, and the TFDS run opens no `VOCSource` at all.

Both runs evaluate against the tree's GT masks (the evaluator reads data_dir with either source),
and the CRF stage reads the tree's JPEGs in both (crf_labels takes image paths): the two stages
that still read files of data_dir in a TFDS run.
"""

import os

import pytest
import tensorflow_datasets as tfds

import e2e_fixtures as e2e
from ppc_jax import pipeline
from ppc_jax.data import tfds_voc
from ppc_jax.data import voc

tfds.disable_progress_bar()  # TFDS's per-split bars would flood the test log

pytestmark = pytest.mark.xdist_group("pipeline")  # shares pipeline_reference


def _no_tree(*args, **kwargs):
  raise AssertionError(f"the TFDS run opened the directory tree: VOCSource{args}")


def test_pipeline_from_tfds_equals_the_directory_run(pipeline_reference, tmp_path, monkeypatch):
  config = e2e.tiny_pipeline_config()
  workdirs = {"directory": pipeline_reference["workdir"], "tfds": str(tmp_path / "tfds")}
  tree = pipeline.default_data_dir(workdirs["directory"])  # the set the directory run generated
  tfds_dir = str(tmp_path / "tfds_data")
  tfds_voc.build(tree, tfds_dir)
  config.input.data_dir = tree   # the GT masks of the evaluation, the CRF's images
  config.input.tfds_data_dir = tfds_dir
  config.input.source = "tfds"
  monkeypatch.setattr(voc, "VOCSource", _no_tree)
  results = {"directory": pipeline_reference["results"],
             "tfds": pipeline.run_pipeline(config, workdirs["tfds"])}
  monkeypatch.undo()

  def outputs(source):
    paths = pipeline.Paths(workdirs[source], config)
    return {"seeds": e2e.read_files(os.path.join(paths.cams_out, "seeds")),
            "masks": e2e.read_files(paths.masks),
            "segmentations": e2e.read_files(results[source]["segment_eval"]["pred_dir"])}

  directory, stored = outputs("directory"), outputs("tfds")
  assert len(directory["masks"]) == 16 and len(directory["segmentations"]) == 3
  for kind in directory:
    assert sorted(stored[kind]) == sorted(directory[kind]), kind
    differ = [n for n in directory[kind] if stored[kind][n] != directory[kind][n]]
    assert not differ, f"{kind} differ: {differ}"
  assert results["tfds"]["data"]["source"] == "tfds"
  assert results["directory"]["data"]["source"] == "directory"
  for key in ("seed_miou", "mask_miou", "segment_miou"):
    assert results["tfds"]["report"][key] == results["directory"]["report"][key], key
  report = open(os.path.join(workdirs["tfds"], "report.md"), encoding="utf-8").read()
  assert "images from the TFDS set" in report and "## Segmentations" in report
