"""`python -m ppc_jax.pipeline` end to end on a tiny synthetic set: every stage runs once and
writes its marker, a stopped run continues where it stopped, a finished stage is skipped, and a
stage interrupted inside (a checkpoint and an output file missing) resumes from what is there,
and the outputs then equal the uninterrupted `pipeline_reference` run's. The shipped pipeline
configs tie their stages together consistently.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

import e2e_fixtures as e2e
from ppc_jax import pipeline

ROOT = e2e.ROOT

pytestmark = pytest.mark.xdist_group("pipeline")  # shares pipeline_reference


def _load(name, arg=None):
  path = os.path.join(ROOT, "configs", name + ".py")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def _mtimes(workdir):
  return {s: os.path.getmtime(os.path.join(workdir, "pipeline", f"{s}.json"))
          for s in pipeline.STAGES
          if os.path.exists(os.path.join(workdir, "pipeline", f"{s}.json"))}


def test_pipeline_runs_stops_skips_and_resumes(tmp_path, pipeline_reference):
  workdir = str(tmp_path / "run")
  config = e2e.tiny_pipeline_config()
  # 1. Stopped after the CRF stage: exactly the markers up to it.
  pipeline.run_pipeline(config, workdir, stop_after="crf")
  assert set(_mtimes(workdir)) == {"data", "seeds", "cams", "seed_eval", "crf"}
  assert not os.path.exists(os.path.join(workdir, "affinity"))
  first = _mtimes(workdir)
  # 2. The same command continues: the finished stages are skipped (markers untouched).
  results = pipeline.run_pipeline(config, workdir)
  times = _mtimes(workdir)
  assert set(times) == set(pipeline.STAGES)
  assert all(times[s] == first[s] for s in first)
  report = results["report"]
  for key in ("seed_miou", "mask_miou", "segment_miou"):
    assert 0.0 <= report[key] <= 1.0, key
  text = open(os.path.join(workdir, "report.md"), encoding="utf-8").read()
  for word in ("| seed |", "| pseudo-mask |", "| segmentation |", "baseline: every pixel background",
               "## Per-class IoU", "| aeroplane |", "| tvmonitor | - | - | - |",
               "## Time per stage", "## Segmentations", "## CAM overlays"):
    assert word in text, word
  masks = os.listdir(os.path.join(workdir, "affinity", "rw_train_aug", "masks"))
  assert len(masks) == 16   # pseudo-masks of every train_aug image
  with open(os.path.join(workdir, "segment", "config.json"), encoding="utf-8") as f:
    seg_cfg = json.load(f)
  assert seg_cfg["segment"]["mask_dir"] == os.path.join(workdir, "affinity", "rw_train_aug",
                                                        "masks")
  assert seg_cfg["init"]["backbone_workdir"] == os.path.join(workdir, "seeds")
  # 3. Interrupted inside the segmentation stages: its last checkpoint and one PNG are gone, the
  # markers from 'segment' on too. The rerun resumes from step 1 and segments one image.
  final_state = e2e.load_state(_seg_config(workdir), os.path.join(workdir, "segment"))
  shutil.rmtree(os.path.join(workdir, "segment", "checkpoints", "2"))
  pred_dir = os.path.join(workdir, "segment", "seg_val", "results", "VOC2012", "Segmentation",
                          "comp6_val_cls")
  os.remove(os.path.join(pred_dir, sorted(os.listdir(pred_dir))[0]))
  for s in ("segment", "segment_eval", "report"):
    os.remove(os.path.join(workdir, "pipeline", f"{s}.json"))
  results = pipeline.run_pipeline(config, workdir)
  assert all(_mtimes(workdir)[s] == times[s] for s in pipeline.STAGES[:7])
  resumed = e2e.load_state(_seg_config(workdir), os.path.join(workdir, "segment"))
  assert e2e.max_abs_diff(resumed["params"], final_state["params"]) == 0.0
  assert len(os.listdir(pred_dir)) == 3
  assert results["segment_eval"]["result"]["num_images"] == 3
  # Stopped, continued and resumed, it ends where the uninterrupted run ends, byte for byte.
  reference = pipeline_reference["workdir"]
  for sub in (os.path.join("affinity", "rw_train_aug", "masks"),
              os.path.relpath(pred_dir, workdir)):
    ours = e2e.read_files(os.path.join(workdir, sub))
    assert ours == e2e.read_files(os.path.join(reference, sub)), sub


def _seg_config(workdir):
  import ml_collections  # pylint: disable=import-outside-toplevel
  with open(os.path.join(workdir, "segment", "config.json"), encoding="utf-8") as f:
    return ml_collections.ConfigDict(json.load(f))


@pytest.mark.parametrize("name", ["pipeline_ppc_voc12", "pipeline_eps_ppc_voc12",
                                  "pipeline_demo"])
def test_shipped_pipeline_configs_tie_their_stages(name, tmp_path):
  config = _load(name)
  paths = pipeline.Paths(str(tmp_path), config)
  seeds, aff, seg = pipeline.stage_configs(config, paths)
  assert (seeds.stage, aff.stage, seg.stage) == ("seeds", "affinity", "segment")
  assert seeds.model.num_classes == seg.model.num_classes
  assert seg.segment.mask_dir == paths.masks
  if config.refine == "seeds":
    assert paths.masks.endswith(os.path.join("infer_train_aug", "seeds"))
  else:
    assert aff.refine.cam_dir == paths.cams and aff.infer.split == "train_aug"
  config.init_mxnet_params = "a1.params"
  seeds, aff, seg = pipeline.stage_configs(config, paths)
  assert seeds.init.mxnet_params == "a1.params"
  if config.init_from_stage1:  # the demo: stages 2 and 3 start from the stage-1 backbone only
    assert aff.init.backbone_workdir == seg.init.backbone_workdir == paths.seeds
    assert aff.init.mxnet_params == seg.init.mxnet_params == ""
    return
  assert aff.init.mxnet_params == "a1.params"
  # ResNet-101 DeepLab takes its own ImageNet file, never the ResNet38 one.
  assert seg.init.mxnet_params == ("a1.params" if seg.model.backbone == "resnet38" else "")


def test_pipeline_command_line_names_a_bad_setting(tmp_path):
  """The entry point: a bad refinement mode ends the process with the field named."""
  proc = subprocess.run(
      [sys.executable, "-m", "ppc_jax.pipeline", "--config=configs/pipeline_demo.py",
       f"--workdir={tmp_path}", "--config.refine=crf"],
      cwd=ROOT, capture_output=True, text=True, timeout=e2e.PROCESS_TIMEOUT_S,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode != 0
  assert "config.refine='crf'" in proc.stdout + proc.stderr
