"""Any class list, end to end: train -> infer -> evaluate on a VOC-layout set with 5 classes that
are not VOC's (mask values 0..5), the class list read from the set's classes.txt by every tool."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

import e2e_fixtures as e2e
from ppc_jax.data import cam_io
from ppc_jax import evaluate
from ppc_jax.seeds import infer
from ppc_jax import report
from ppc_jax.seeds import seed_trainer
from ppc_jax.data import synth
from ppc_jax.data import voc
from ppc_jax.data import voc_meta

FIVE = ("circle", "square", "kite", "moon", "star")

# Compiles programs of its own (a 6-channel head), so it shares the e2e modules' worker only for
# the compilation cache directory.
pytestmark = pytest.mark.xdist_group("train_e2e")


@pytest.fixture(scope="module")
def five_class_run(tmp_path_factory):
  """A 2-step run of the tiny e2e config on a 5-class set (8 fake devices, in this process)."""
  e2e.compile_cache_dir(tmp_path_factory)
  root = synth.generate(str(tmp_path_factory.mktemp("five_voc")), num_train_aug=16, num_train=8,
                        num_val=0, min_size=64, max_size=64, aspect_range=(0.75, 0.75),
                        class_list=FIVE, seed=1)
  config = e2e.tiny_config(root)
  config.model.num_classes = len(FIVE) + 1
  # Semi-hard mining keeps prototype ranks 4..top; 6 classes hold ranks 1..6 (VOC's default 13
  # needs 13 classes, see test_losses_ppc).
  config.loss.ppc.mining_top = len(FIVE) + 1
  config.total_steps = 2
  config.ckpt_every_steps = 2
  config.log_every_steps = 2
  config.log_images_every_steps = 0  # (inference draws the 5-class overlays)
  config.init.calibrate_bn_images = 0
  workdir = str(tmp_path_factory.mktemp("five_train"))
  metrics = seed_trainer.train_and_evaluate(config, workdir)
  return dict(root=root, config=config, workdir=workdir, metrics=metrics)


def test_model_head_that_does_not_fit_the_class_list_is_refused(five_class_run, tmp_path):
  config = five_class_run["config"]
  wrong = config.copy_and_resolve_references()
  wrong.model.num_classes = 21
  match = (r"config.model.num_classes=21 does not match the class list: 6 classes \(background "
           r"\+ 5 from .*classes.txt\); set config.model.num_classes=6")
  with pytest.raises(ValueError, match=match):
    seed_trainer.train_and_evaluate(wrong, str(tmp_path / "train"))
  with pytest.raises(ValueError, match=match):
    infer.run_inference(wrong, five_class_run["workdir"], out_dir=str(tmp_path / "infer"))


def test_train_infer_evaluate_five_classes(five_class_run, tmp_path):
  root, config = five_class_run["root"], five_class_run["config"]
  assert five_class_run["metrics"]["step"] == 2
  assert np.isfinite(five_class_run["metrics"]["loss"])

  # Training read label vectors of length 5 (from the set's cls_labels.npy, checked against
  # the 5-class list).
  source = voc.VOCSource(root, "train")
  assert source.classes.fg_names == FIVE and source.labels.shape == (8, 5)

  out_dir = str(tmp_path / "infer")
  summary = infer.run_inference(config, five_class_run["workdir"], split="train", out_dir=out_dir)
  assert summary["num_images"] == 8 and summary["classes"] == ["background", *FIVE]
  for i, image_id in enumerate(source.ids):
    present = np.flatnonzero(source.labels[i] > 1e-5).tolist()
    cams = cam_io.load_cam_dict(os.path.join(out_dir, "cams", image_id + ".npz"), num_fg=5)
    assert sorted(cams) == present and set(present) <= set(range(5)), image_id
    with Image.open(os.path.join(out_dir, "seeds", image_id + ".png")) as png:
      seed = np.array(png)
    assert set(np.unique(seed).tolist()) <= {0} | {c + 1 for c in present}

  # The evaluator takes the class list from the set's classes.txt: a 6x6 confusion matrix (+ the
  # 'other' column), names from the file.
  cam_dir = os.path.join(out_dir, "cams")
  result = evaluate.evaluate_cam_dir(root, "train", cam_dir, num_workers=1)
  assert list(result["per_class_iou"]) == ["background", *FIVE]
  confusion = np.array(result["confusion"])
  assert confusion.shape == (6, 7)
  # Every non-void GT pixel of the split is counted once, in its row.
  gts = [voc.read_mask(os.path.join(root, "SegmentationClass", i + ".png"), source.classes)
         for i in source.ids]
  np.testing.assert_array_equal(
      confusion.sum(axis=1), [sum(int((g == c).sum()) for g in gts) for c in range(6)])
  baselines = evaluate.evaluate_baselines(root, "train", num_workers=1)
  assert np.array(baselines["painted"]["confusion"]).shape == (6, 7)
  text = report.format_result(result)
  assert all(name in text for name in FIVE)
  md = tmp_path / "report.md"
  report.write_markdown(str(md), title="five", method_rows=[("run", result)], per_class=result,
                        curve_png="curve.png", overlays=[], facts={})
  assert "mIoU, 6 classes" in md.read_text()

  # The CLI, in a fresh interpreter (numpy only), finds the same list in the data directory.
  rep_dir = tmp_path / "cli"
  proc = subprocess.run(
      [sys.executable, "-m", "ppc_jax.evaluate", f"--voc_root={root}", "--split=train",
       f"--cam_dir={cam_dir}", f"--out_dir={rep_dir}"],
      capture_output=True, text=True, timeout=e2e.PROCESS_TIMEOUT_S, cwd=e2e.ROOT,
      env=dict(os.environ, PYTHONPATH=e2e.ROOT))
  assert proc.returncode == 0, proc.stderr
  with open(rep_dir / "report.json", encoding="utf-8") as f:
    written = json.load(f)
  assert written["confusion"] == result["confusion"] and "moon" in written["per_class_iou"]

  # Mask validation follows the list: value 6 is not a class of it (it is one of VOC's).
  gt_file = os.path.join(root, "SegmentationClass", source.ids[3] + ".png")
  bad = gts[3].copy()
  bad[0, 0] = 6
  img = Image.fromarray(bad, "P")
  img.putpalette(voc_meta.palette_bytes())
  img.save(gt_file)
  with pytest.raises(voc.DataError, match=rf"{source.ids[3]}.png: mask holds labels \[6\]; "
                                          r"expected only 0..5 and 255 \(void\) for the 6 "
                                          r"classes"):
    evaluate.evaluate_cam_dir(root, "train", cam_dir, num_workers=1)
  assert evaluate.evaluate_cam_dir(root, "train", cam_dir, num_workers=1,
                                   classes="voc")["num_images"] == 8
