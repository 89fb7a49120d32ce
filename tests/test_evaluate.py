"""Evaluator vs hand-computed confusion matrices and a naive per-threshold reference loop."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import e2e_fixtures as e2e
from ppc_jax import evaluate as ev
from ppc_jax import report
from ppc_jax.data import cam_io
from ppc_jax.data.cam_io import save_cam_dict
from ppc_jax.data import voc_meta

# A 3x4 GT / prediction pair with two ignore pixels, over classes {0, 1, 2}.
GT = np.array([[0, 0, 1, 255],
               [1, 1, 2, 2],
               [255, 0, 2, 1]])
PRED = np.array([[0, 1, 1, 2],
                 [1, 0, 2, 2],
                 [0, 0, 1, 1]])
# Counted by hand over the 10 non-ignored pixels (rows = GT, columns = prediction):
#   gt 0: (0,0)->0 (0,1)->1 (2,1)->0          => [2, 1, 0]
#   gt 1: (0,2)->1 (1,0)->1 (1,1)->0 (2,3)->1 => [1, 3, 0]
#   gt 2: (1,2)->2 (1,3)->2 (2,2)->1          => [0, 1, 2]
HAND_CONF = np.array([[2, 1, 0],
                      [1, 3, 0],
                      [0, 1, 2]])
# IoU = TP / (T + P - TP): class 0: 2/(3+3-2); class 1: 3/(4+5-3); class 2: 2/(3+2-2).
HAND_IOU = np.array([2 / 4, 3 / 6, 2 / 3])


def test_confusion_matrix_by_hand():
  conf = ev.confusion_matrix(GT, PRED, num_classes=3)
  assert conf.shape == (3, 4)
  np.testing.assert_array_equal(conf[:, :3], HAND_CONF)
  assert conf[:, 3].sum() == 0
  iou, miou = ev.iou_from_confusion(conf)
  np.testing.assert_allclose(iou, HAND_IOU, rtol=1e-9)
  np.testing.assert_allclose(miou, HAND_IOU.mean(), rtol=1e-9)


def test_confusion_matrix_prediction_outside_classes():
  """A 255 in the prediction adds to T of its GT class but to no class's P, as in the reference."""
  pred = PRED.copy()
  pred[2, 3] = 255  # GT 1, was predicted 1
  conf = ev.confusion_matrix(GT, pred, num_classes=3)
  np.testing.assert_array_equal(conf[1], [1, 2, 0, 1])
  iou, _ = ev.iou_from_confusion(conf)
  # class 1: TP 2, T 4, P 4 -> 2 / 6.
  np.testing.assert_allclose(iou, [2 / 4, 2 / 6, 2 / 3], rtol=1e-9)


def test_confusion_matrix_shape_mismatch():
  with pytest.raises(ValueError, match="shape"):
    ev.confusion_matrix(GT, PRED[:, :3])


# ------------------------------------------------------------------------------------------------
# The naive reference: eval.py's per-threshold loop, with its TP / P / T counting.
# ------------------------------------------------------------------------------------------------


def naive_counts(pairs, t):
  """[(gt, cam_dict)] at threshold t -> (TP, P, T) per class, exactly as do_python_eval."""
  tp, p, tt = np.zeros(21, np.int64), np.zeros(21, np.int64), np.zeros(21, np.int64)
  for gt, cam_dict in pairs:
    tensor = np.zeros((21,) + gt.shape, np.float32)
    for key in cam_dict:
      tensor[key + 1] = cam_dict[key]
    tensor[0, :, :] = t
    predict = np.argmax(tensor, axis=0).astype(np.uint8)
    cal = gt < 255
    mask = (predict == gt) * cal
    for i in range(21):
      p[i] += np.sum((predict == i) * cal)
      tt[i] += np.sum((gt == i) * cal)
      tp[i] += np.sum((gt == i) * mask)
  return tp, p, tt


def random_pairs(rng, n=6):
  """Random GT + cam_dicts whose values often equal a threshold exactly and tie across classes."""
  grid = (np.arange(70) / 100.0).astype(np.float32)  # every threshold value, exactly, and more
  pairs = []
  for i in range(n):
    h, w = rng.integers(5, 12, size=2)
    gt = rng.integers(0, 21, size=(h, w))
    gt[rng.random((h, w)) < 0.15] = 255
    present = rng.choice(20, size=rng.integers(1, 5), replace=False)
    cam_dict = {}
    for k in present:
      v = grid[rng.integers(0, grid.size, size=(h, w))]
      # Continuous values too, and some negatives (the reference's zeroed min pixels).
      cont = rng.random((h, w)).astype(np.float32) * 0.8 - 0.1
      cam_dict[int(k)] = np.where(rng.random((h, w)) < 0.5, v, cont).astype(np.float32)
    if i == 0 and len(present) > 1:  # exact ties between two classes
      a, b = sorted(cam_dict)[:2]
      cam_dict[b] = cam_dict[a].copy()
    pairs.append((gt, cam_dict))
  pairs.append((rng.integers(0, 21, size=(4, 5)), {}))  # an image without any class
  return pairs


def test_sweep_equals_naive_per_threshold_loop():
  rng = np.random.default_rng(0)
  pairs = random_pairs(rng)
  sweep = ev.ThresholdSweep()
  for gt, cam_dict in pairs:
    sweep.add_cam_dict(gt, cam_dict)
  conf = sweep.confusions()
  assert conf.shape == (60, 21, 22)
  iou, miou = ev.iou_from_confusion(conf)
  for j, t in enumerate(ev.SWEEP_THRESHOLDS):
    tp, p, tt = naive_counts(pairs, t)
    np.testing.assert_array_equal(np.diagonal(conf[j, :, :21]), tp, err_msg=f"TP at t={t}")
    np.testing.assert_array_equal(conf[j, :, :21].sum(0), p, err_msg=f"P at t={t}")
    np.testing.assert_array_equal(conf[j].sum(1), tt, err_msg=f"T at t={t}")
    ref_iou = tp / (tt + p - tp + 1e-10)
    np.testing.assert_array_equal(iou[j], ref_iou)
    assert miou[j] == np.mean(ref_iou)


def test_sweep_with_negative_threshold_predicts_absent_class_like_reference():
  """Off the usual range (t < 0) absent channels (0) win over bg, as in the stacked argmax."""
  rng = np.random.default_rng(1)
  pairs = random_pairs(rng, n=3)
  sweep = ev.ThresholdSweep(thresholds=(-0.5, -0.05, 0.0, 0.3))
  for gt, cam_dict in pairs:
    sweep.add_cam_dict(gt, cam_dict)
  conf = sweep.confusions()
  for j, t in enumerate((-0.5, -0.05, 0.0, 0.3)):
    tp, p, tt = naive_counts(pairs, t)
    np.testing.assert_array_equal(np.diagonal(conf[j, :, :21]), tp)
    np.testing.assert_array_equal(conf[j, :, :21].sum(0), p)


# ------------------------------------------------------------------------------------------------
# Directory evaluation on a tiny VOC tree.
# ------------------------------------------------------------------------------------------------


def write_png(path, arr):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  img = Image.fromarray(np.asarray(arr, np.uint8), mode="P")
  img.putpalette([0] * 768)
  img.save(path)


def make_voc(root, pairs, split="train"):
  voc = os.path.join(root, "VOCdevkit", "VOC2012")
  ids = [f"2007_{i:06d}" for i in range(len(pairs))]
  for img_id, (gt, _) in zip(ids, pairs):
    write_png(os.path.join(voc, "SegmentationClass", f"{img_id}.png"), gt)
  lists = os.path.join(voc, "ImageSets", "Segmentation")
  os.makedirs(lists, exist_ok=True)
  with open(os.path.join(lists, f"{split}.txt"), "w") as f:
    f.write("\n".join(ids) + "\n")
  return ids


def write_cams(cam_dir, ids, pairs, fmt="npz"):
  for img_id, (_, cam_dict) in zip(ids, pairs):
    cam_io.save_map_dict(os.path.join(cam_dir, img_id), cam_dict, fmt)


@pytest.fixture
def tiny_voc(tmp_path):
  rng = np.random.default_rng(2)
  pairs = random_pairs(rng, n=5)
  ids = make_voc(tmp_path, pairs)
  cam_dir = tmp_path / "cams"
  cam_dir.mkdir()
  write_cams(cam_dir, ids, pairs)
  return tmp_path, ids, pairs, cam_dir


def test_evaluate_cam_dir_npy_sweep_and_report(tiny_voc, tmp_path):
  root, ids, pairs, cam_dir = tiny_voc
  result = ev.evaluate_cam_dir(root, "train", cam_dir)
  assert result["num_images"] == len(ids)
  curve = []
  for t in ev.SWEEP_THRESHOLDS:
    tp, p, tt = naive_counts(pairs, t)
    curve.append(np.mean(tp / (tt + p - tp + 1e-10)))
  np.testing.assert_array_equal(result["miou_curve"], curve)
  best = int(np.argmax(curve))
  assert result["best_threshold"] == ev.SWEEP_THRESHOLDS[best]
  assert result["miou"] == curve[best]
  names = voc_meta.VOC.names  # no classes.txt in this tree: VOC's list
  assert list(result["per_class_iou"]) == list(names) and names[0] == "background"
  assert names[20] == "tvmonitor"

  out = tmp_path / "report"
  paths = report.write_report(out, result, split="train", cam_dir=cam_dir)
  with open(paths["json"]) as f:
    written = json.load(f)
  for key in ("miou", "per_class_iou", "miou_curve", "thresholds", "best_threshold",
              "num_images"):
    assert key in written
  assert written["num_images"] == len(ids) and len(written["miou_curve"]) == 60
  with Image.open(paths["curve"]) as img:
    img.load()
    assert img.format == "PNG" and img.size[0] > 100
  assert not [n for n in os.listdir(out) if n.startswith(".tmp")]


def test_evaluate_cam_dir_png_against_hand_confusion(tmp_path):
  """The 3x4 hand example through the 21-class evaluator: absent classes count as IoU 0."""
  ids = make_voc(tmp_path, [(GT, None)])
  pred_dir = tmp_path / "pred"
  write_png(pred_dir / f"{ids[0]}.png", PRED)
  result = ev.evaluate_cam_dir(tmp_path, "train", pred_dir, input_type="png")
  assert "miou_curve" not in result
  iou = np.array(list(result["per_class_iou"].values()))
  np.testing.assert_allclose(iou[:3], HAND_IOU, rtol=1e-9)
  assert np.all(iou[3:] == 0)
  np.testing.assert_allclose(result["miou"], HAND_IOU.sum() / 21, rtol=1e-9)
  np.testing.assert_allclose(result["miou_gt_classes"], HAND_IOU.mean(), rtol=1e-9)
  assert result["num_gt_classes"] == 3
  np.testing.assert_array_equal(np.array(result["confusion"])[:3, :3], HAND_CONF)
  paths = report.write_report(tmp_path / "rep", result)
  assert "curve" not in paths and os.path.isfile(paths["json"])


def test_single_threshold(tiny_voc):
  root, _, pairs, cam_dir = tiny_voc
  result = ev.evaluate_cam_dir(root, "train", cam_dir, thresholds=(0.26,))
  tp, p, tt = naive_counts(pairs, 0.26)
  assert result["miou"] == np.mean(tp / (tt + p - tp + 1e-10))
  assert result["best_threshold"] == 0.26


def test_cam_written_by_save_cam_dict_is_evaluated(tmp_path):
  gt = np.array([[0, 3, 3], [0, 3, 255]])
  ids = make_voc(tmp_path, [(gt, None)])
  norm = np.zeros((2, 3, 20), np.float32)
  norm[..., 2] = [[0.1, 0.9, 0.5], [0.2, 0.3, 0.4]]
  lab = np.zeros(20, np.float32)
  lab[2] = 1
  save_cam_dict(tmp_path / "cams" / ids[0], norm, lab)
  result = ev.evaluate_cam_dir(tmp_path, "train", tmp_path / "cams", thresholds=(0.25,))
  # t = 0.25: pred [[0, 3, 3], [0, 3, .]] -> background IoU 1, class 3 IoU 1.
  assert result["per_class_iou"]["background"] == pytest.approx(1.0)
  assert result["per_class_iou"]["bird"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------
# Errors.
# ------------------------------------------------------------------------------------------------


def test_missing_cam_file_names_it(tiny_voc):
  root, ids, pairs, cam_dir = tiny_voc
  os.remove(cam_dir / f"{ids[2]}.npz")
  with pytest.raises(FileNotFoundError, match=f"{ids[2]}.npz") as e:
    ev.evaluate_cam_dir(root, "train", cam_dir)
  assert "exists instead" not in str(e.value)
  # The reference's .npy in its place is not read unless asked for; the error names both.
  cam_io.save_map_dict(cam_dir / ids[2], pairs[2][1], "reference_npy")
  with pytest.raises(FileNotFoundError,
                     match=rf"{ids[2]}.npz: cam file not found; .*{ids[2]}.npy exists instead.*"
                           "reference_npy"):
    ev.evaluate_cam_dir(root, "train", cam_dir)


def test_reference_npy_cam_dicts_only_when_asked(tiny_voc, tmp_path):
  """--type=reference_npy (or its old name npy) reads the reference's pickled cam_dicts through
  the restricted unpickler, with the same result as the npz files; the default refuses them."""
  root, ids, pairs, cam_dir = tiny_voc
  expected = ev.evaluate_cam_dir(root, "train", cam_dir)
  assert expected["input_type"] == "npz"
  ref_dir = tmp_path / "ref_cams"
  ref_dir.mkdir()
  for img_id, (_, cam_dict) in zip(ids, pairs):  # exactly what the reference writes
    np.save(ref_dir / f"{img_id}.npy", cam_dict, allow_pickle=True)
  for input_type in ("reference_npy", "npy"):
    got = ev.evaluate_cam_dir(root, "train", ref_dir, input_type=input_type)
    assert got["input_type"] == "reference_npy"
    assert got["miou_curve"] == expected["miou_curve"]
    assert got["confusion"] == expected["confusion"]
  with pytest.raises(FileNotFoundError, match=f"{ids[0]}.npy exists instead"):
    ev.evaluate_cam_dir(root, "train", ref_dir)
  # A pickle with a payload: refused by the restricted unpickler, naming the file.
  marker = tmp_path / "pwned"
  np.save(ref_dir / f"{ids[1]}.npy", {3: _TouchPayload(str(marker))}, allow_pickle=True)
  with pytest.raises(ValueError, match=rf"{ids[1]}.npy: refused pickled global"):
    ev.evaluate_cam_dir(root, "train", ref_dir, input_type="reference_npy")
  assert not marker.exists()


class _TouchPayload:
  """Unpickled by an unrestricted loader, it would run `touch <marker>`."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f"touch '{self.marker}'",)


def test_missing_png_names_it(tiny_voc):
  root, ids, _, cam_dir = tiny_voc
  with pytest.raises(FileNotFoundError, match=f"{ids[0]}.png"):
    ev.evaluate_cam_dir(root, "train", cam_dir, input_type="png")


def test_missing_gt_names_it(tiny_voc):
  root, ids, _, cam_dir = tiny_voc
  gt_file = os.path.join(root, "VOCdevkit", "VOC2012", "SegmentationClass", f"{ids[1]}.png")
  os.remove(gt_file)
  with pytest.raises(FileNotFoundError, match="GT mask.*" + f"{ids[1]}.png"):
    ev.evaluate_cam_dir(root, "train", cam_dir)


def test_missing_split_list(tiny_voc):
  root, _, _, cam_dir = tiny_voc
  with pytest.raises(ValueError, match="val.txt"):
    ev.evaluate_cam_dir(root, "val", cam_dir)


def test_duplicate_id_in_list(tiny_voc):
  root, ids, _, cam_dir = tiny_voc
  lst = os.path.join(root, "VOCdevkit", "VOC2012", "ImageSets", "Segmentation", "train.txt")
  with open(lst, "a") as f:
    f.write(ids[1] + "\n")
  with pytest.raises(ValueError, match=f"train.txt:{len(ids) + 1}.*{ids[1]}.*repeats line 2"):
    ev.evaluate_cam_dir(root, "train", cam_dir)


def test_voc2012_root_and_reference_list_format(tiny_voc):
  """voc_root may be the VOC2012 directory itself (the project convention), and list lines may
  use the reference '/JPEGImages/ID.jpg /SegmentationClassAug/ID.png' format."""
  root, ids, _, cam_dir = tiny_voc
  voc2012 = os.path.join(root, "VOCdevkit", "VOC2012")
  expected = ev.evaluate_cam_dir(root, "train", cam_dir)
  with open(os.path.join(voc2012, "ImageSets", "Segmentation", "ref.txt"), "w") as f:
    f.writelines(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in ids)
  got = ev.evaluate_cam_dir(voc2012, "ref", cam_dir)
  assert got["miou_curve"] == expected["miou_curve"] and got["num_images"] == len(ids)


def test_shape_mismatch_names_both_files(tiny_voc):
  root, ids, pairs, cam_dir = tiny_voc
  h, w = pairs[1][0].shape
  cam_io.save_map_dict(cam_dir / f"{ids[1]}.npz", {0: np.zeros((h + 1, w), np.float32)})
  with pytest.raises(ValueError, match=f"{ids[1]}.npz.*{ids[1]}.png") as e:
    ev.evaluate_cam_dir(root, "train", cam_dir)
  assert f"({h + 1}, {w})" in str(e.value) and f"({h}, {w})" in str(e.value)


def test_png_shape_mismatch(tmp_path):
  ids = make_voc(tmp_path, [(GT, None)])
  write_png(tmp_path / "pred" / f"{ids[0]}.png", PRED[:, :3])
  with pytest.raises(ValueError, match="shape mismatch"):
    ev.evaluate_cam_dir(tmp_path, "train", tmp_path / "pred", input_type="png")


def test_unknown_class_index_in_cam_dict(tiny_voc):
  root, ids, pairs, cam_dir = tiny_voc
  shape = pairs[0][0].shape
  cam_io.save_map_dict(cam_dir / f"{ids[0]}.npz", {20: np.zeros(shape, np.float32)})
  with pytest.raises(ValueError, match=f"{ids[0]}.npz.*unknown class index 20"):
    ev.evaluate_cam_dir(root, "train", cam_dir)


def test_bad_gt_values(tmp_path):
  gt = GT.copy()
  gt[0, 0] = 30
  ids = make_voc(tmp_path, [(gt, None)])
  write_png(tmp_path / "pred" / f"{ids[0]}.png", PRED)
  with pytest.raises(ValueError, match=r"2007_000000.png.*labels \[30\]"):
    ev.evaluate_cam_dir(tmp_path, "train", tmp_path / "pred", input_type="png")


def test_nan_cam(tiny_voc):
  root, ids, pairs, cam_dir = tiny_voc
  cam = np.zeros(pairs[0][0].shape, np.float32)
  cam[0, 0] = np.nan
  cam_io.save_map_dict(cam_dir / f"{ids[0]}.npz", {3: cam})
  with pytest.raises(ValueError, match="NaN"):
    ev.evaluate_cam_dir(root, "train", cam_dir)


# ------------------------------------------------------------------------------------------------
# Baselines and the entry point.
# ------------------------------------------------------------------------------------------------


def test_baselines_by_hand(tmp_path):
  gt_a = np.array([[0, 0, 5, 5],
                   [0, 9, 9, 255]])  # classes 5 and 9: painted with 5 (the lowest index)
  gt_b = np.array([[0, 0, 0],
                   [0, 255, 0]])  # no class: painted baseline is all background
  make_voc(tmp_path, [(gt_a, None), (gt_b, None)])
  res = ev.evaluate_baselines(tmp_path, "train")
  bg = res["all_background"]
  # All background: background TP = T = 3 + 5 = 8, P = 7 + 5 = 12 non-ignored pixels -> 8 / 12.
  assert bg["per_class_iou"]["background"] == pytest.approx(8 / 12)
  assert bg["miou"] == pytest.approx(8 / 12 / 21)
  assert np.ptp(bg["miou_curve"]) == 0
  painted = res["painted"]
  # Image a: everything predicted 5 (7 px). Image b: all background (5 px).
  # background: TP 5, T 8, P 5 -> 5/8; class 5: TP 2, T 2, P 7 -> 2/7; class 9: 0.
  names = voc_meta.VOC.names
  assert painted["per_class_iou"]["background"] == pytest.approx(5 / 8)
  assert painted["per_class_iou"][names[5]] == pytest.approx(2 / 7)
  assert painted["miou"] == pytest.approx((5 / 8 + 2 / 7) / 21)
  assert np.ptp(painted["miou_curve"]) == 0
  # Explicit image-level labels override the mask-derived ones (a dict or a cls_labels.npy).
  table = {"2007_000000": np.eye(20, dtype=np.float32)[8], "2007_000001": np.zeros(20, np.float32)}
  res2 = ev.evaluate_baselines(tmp_path, "train", image_labels=table)
  assert res2["painted"]["per_class_iou"][names[9]] == pytest.approx(2 / 7)
  np.save(tmp_path / "cls_labels.npy", table, allow_pickle=True)
  res3 = ev.evaluate_baselines(tmp_path, "train", image_labels=tmp_path / "cls_labels.npy")
  assert res3["painted"]["miou"] == res2["painted"]["miou"]
  with pytest.raises(ValueError, match="cls_labels.npy.*2007_000001"):
    np.save(tmp_path / "cls_labels.npy", {"2007_000000": table["2007_000000"]}, allow_pickle=True)
    ev.evaluate_baselines(tmp_path, "train", image_labels=tmp_path / "cls_labels.npy")


def test_cli(tiny_voc, tmp_path):
  root, _, _, cam_dir = tiny_voc
  out = tmp_path / "cli_out"
  proc = subprocess.run(
      [sys.executable, "-m", "ppc_jax.evaluate", f"--voc_root={root}", "--split=train",
       f"--cam_dir={cam_dir}", "--type=npz", f"--out_dir={out}", "--baselines"],
      capture_output=True, text=True, timeout=e2e.PROCESS_TIMEOUT_S,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr
  assert "mIoU" in proc.stdout and "baseline painted" in proc.stdout
  with open(out / "report.json") as f:
    written = json.load(f)
  assert set(written["baselines"]) == {"all_background", "painted"}
  assert os.path.isfile(out / "miou_curve.png")


def test_metric_code_imports_without_jax():
  """The evaluator and its reports are numpy-only: a fresh interpreter imports them, and reads a
  cam_dict, without JAX ever being imported (checked in a subprocess: this one has JAX loaded)."""
  code = ("import sys; import ppc_jax.evaluate, ppc_jax.report, ppc_jax.data.cam_io; "
          "bad = sorted(m for m in sys.modules if m == 'jax' or m.startswith('jax.')); "
          "assert not bad, bad; print('no jax')")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=e2e.PROCESS_TIMEOUT_S,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == "no jax"
