"""The synthetic VOC generator: layout, determinism, label/mask/XML consistency, realism knobs."""

import filecmp
import os

import numpy as np
import PIL.Image
import pytest

from data_fixtures import TINY, synth_root  # noqa: F401  (pytest fixture)
from ppc_jax.data import make_cls_labels
from ppc_jax.data import synth
from ppc_jax.data import voc
from ppc_jax.data import voc_meta


def _ids(root, name):
  with open(os.path.join(root, "ImageSets", "Segmentation", name + ".txt")) as f:
    return [line.split()[0] for line in f if line.strip()]


def test_layout_and_splits(synth_root):
  root = synth_root
  for d in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "SALImages",
            "Annotations"):
    assert os.path.isdir(os.path.join(root, d)), d
  train_aug = [os.path.basename(t)[:-4] for t in _ids(root, "train_aug")]
  train, val = _ids(root, "train"), _ids(root, "val")
  assert len(train_aug) == TINY["num_train_aug"]
  assert len(train) == TINY["num_train"] and len(val) == TINY["num_val"]
  assert set(train) <= set(train_aug) and not set(val) & set(train_aug)
  assert _ids(root, "trainval") == train + val
  # Reference list format for train_aug, plain ids elsewhere.
  with open(os.path.join(root, "ImageSets", "Segmentation", "train_aug.txt")) as f:
    first = f.readline().split()
  assert first == [f"/JPEGImages/{train_aug[0]}.jpg", f"/SegmentationClassAug/{train_aug[0]}.png"]
  # SegmentationClass covers train + val only (as VOC); the Aug folder covers everything.
  assert len(os.listdir(os.path.join(root, "SegmentationClass"))) == len(train) + len(val)
  assert len(os.listdir(os.path.join(root, "SegmentationClassAug"))) == len(train_aug) + len(val)
  labels = voc.load_cls_labels(os.path.join(root, "cls_labels.npy"))
  assert set(labels) == set(train_aug) | set(val)


def test_labels_masks_xml_saliency_agree(synth_root):
  root = synth_root
  labels = voc.load_cls_labels(os.path.join(root, "cls_labels.npy"))
  allowed = {0, 255} | {voc_meta.VOC.index(c) for c in synth.DEFAULT_CLASSES}
  n_void = 0
  for image_id, label in labels.items():
    assert label.dtype == np.float32 and label.shape == (20,)
    assert label.sum() >= 1, "every image holds at least one object"
    png = PIL.Image.open(os.path.join(root, "SegmentationClassAug", image_id + ".png"))
    assert png.mode == "P" and png.getpalette()[:6] == [0, 0, 0, 128, 0, 0]
    mask = voc.read_mask(png.filename)
    assert set(np.unique(mask).tolist()) <= allowed
    np.testing.assert_array_equal(voc.labels_from_mask(mask), label)
    np.testing.assert_array_equal(
        voc.labels_from_xml(os.path.join(root, "Annotations", image_id + ".xml")), label)
    image = PIL.Image.open(os.path.join(root, "JPEGImages", image_id + ".jpg"))
    assert image.size == png.size and TINY["min_size"] <= max(image.size) <= TINY["max_size"]
    sal = np.asarray(PIL.Image.open(os.path.join(root, "SALImages", image_id + ".png")),
                     np.float32)
    assert sal.shape == mask.shape
    fg, bg = (mask > 0) & (mask < 255), mask == 0
    assert sal[fg].mean() > sal[bg].mean() + 40, "saliency highlights the objects"
    n_void += int((mask == 255).sum() > 0)
  assert n_void == len(labels), "object boundaries carry a void band"


def test_deterministic_and_seed_dependent(tmp_path):
  kw = dict(num_train_aug=3, num_train=1, num_val=1, min_size=40, max_size=48, xml=False)
  a = synth.generate(str(tmp_path / "a"), seed=5, **kw)
  b = synth.generate(str(tmp_path / "b"), seed=5, **kw)
  c = synth.generate(str(tmp_path / "c"), seed=6, **kw)
  for sub in ("JPEGImages", "SegmentationClassAug", "SALImages"):
    names = sorted(os.listdir(os.path.join(a, sub)))
    match, mismatch, errors = filecmp.cmpfiles(os.path.join(a, sub), os.path.join(b, sub), names,
                                               shallow=False)
    assert match == names and not mismatch and not errors
  img = "JPEGImages/2100_000000.jpg"
  assert not filecmp.cmp(os.path.join(a, img), os.path.join(c, img), shallow=False)
  # An image depends on its own number only: growing a split leaves earlier images unchanged.
  d = synth.generate(str(tmp_path / "d"), seed=5, **dict(kw, num_train_aug=4))
  assert filecmp.cmp(os.path.join(a, img), os.path.join(d, img), shallow=False)


def test_class_subset_and_cli(tmp_path):
  out = str(tmp_path / "cli")
  assert synth.main(["--out", out, "--num_train_aug", "6", "--num_train", "2", "--num_val", "2",
                     "--classes", "bus,7,tvmonitor", "--min_size", "40", "--max_size", "48",
                     "--no_xml"]) == 0
  root = os.path.join(out, "VOCdevkit", "VOC2012")
  labels = np.stack(list(voc.load_cls_labels(os.path.join(root, "cls_labels.npy")).values()))
  used = set(np.nonzero(labels.sum(0))[0] + 1)
  assert used <= {6, 7, 20}
  assert not os.path.isdir(os.path.join(root, "Annotations"))


def test_scene_objects_are_not_colour_separable():
  """Per-class mean colours overlap: a single colour threshold cannot tell the classes apart."""
  specs = synth.class_specs(synth.DEFAULT_CLASSES)
  means = {s["index"]: [] for s in specs}
  for k in range(60):
    scene = synth.render_scene(np.random.default_rng([1, k]), 64, 64, specs)
    for c in np.unique(scene["mask"]):
      if 0 < c < 255:
        means[int(c)].append(scene["image"][scene["mask"] == c].mean(0))
  spreads = [np.std(np.array(v), axis=0).mean() for v in means.values() if len(v) > 3]
  centers = np.array([np.mean(v, axis=0) for v in means.values() if len(v) > 3])
  # Within-class spread of the mean colour exceeds the distance between class centres.
  dist = np.linalg.norm(centers[:, None] - centers[None], axis=-1)
  assert np.median(spreads) > np.median(dist[np.triu_indices(len(centers), 1)]) / 2


@pytest.mark.parametrize("bad", [dict(num_train=5, num_train_aug=4), dict(min_size=50, max_size=40),
                                 dict(classes=("cat", "cat")), dict(classes=("unicorn",))])
def test_bad_arguments(tmp_path, bad):
  kw = dict(num_train_aug=4, num_train=1, num_val=1)
  kw.update(bad)
  with pytest.raises(ValueError):
    synth.generate(str(tmp_path), **kw)


def test_object_scale_knob():
  """Larger objects cover more of the image; the default keeps the original (hard) set."""
  specs = synth.class_specs(synth.DEFAULT_CLASSES)

  def fg_fraction(**kw):
    fracs = []
    for k in range(30):
      scene = synth.render_scene(np.random.default_rng([2, k]), 64, 64, specs, **kw)
      fracs.append(np.mean((scene["mask"] > 0) & (scene["mask"] < 255)))
    return np.mean(fracs)

  default = synth.render_scene(np.random.default_rng([2, 0]), 64, 64, specs)
  explicit = synth.render_scene(np.random.default_rng([2, 0]), 64, 64, specs,
                                object_scale=(0.18, 0.42))
  np.testing.assert_array_equal(default["image"], explicit["image"])
  assert fg_fraction(object_scale=(0.3, 0.45)) > fg_fraction(object_scale=(0.1, 0.2)) + 0.1


def test_non_voc_class_list(tmp_path):
  """A 5-class set: classes.txt written, mask values 0..5 (+ void), labels of length 5, and the
  readers take the list from the file."""
  out = str(tmp_path / "five")
  names = ("circle", "square", "kite", "moon", "star")
  assert synth.main(["--out", out, "--num_train_aug", "12", "--num_train", "4", "--num_val", "2",
                     "--class_list", ",".join(names), "--min_size", "40", "--max_size", "48",
                     "--seed", "2"]) == 0
  root = os.path.join(out, "VOCdevkit", "VOC2012")
  classes = voc_meta.read_classes_file(os.path.join(root, "classes.txt"))
  assert classes.fg_names == names
  src = voc.VOCSource(out, "train_aug", need_masks=True, verify="full", labels="npy")
  assert src.classes.names == classes.names and src.labels.shape == (12, 5)
  values = set()
  for i in range(len(src)):
    mask = src.mask(i)
    values |= set(np.unique(mask).tolist())
    np.testing.assert_array_equal(voc.labels_from_mask(mask, classes), src.labels[i])
  assert values <= set(range(6)) | {255} and len(values - {0, 255}) >= 3
  xml = voc.VOCSource(out, "train_aug", labels="xml")
  np.testing.assert_array_equal(xml.labels, src.labels)
  # make_cls_labels rebuilds the same 5-entry labels from the masks, with the set's list.
  rebuilt = str(tmp_path / "rebuilt.npy")
  assert make_cls_labels.main(["--voc_root", out, "--splits", "train_aug", "--source", "masks",
                               "--out", rebuilt]) == 0
  table = voc.load_cls_labels(rebuilt)
  np.testing.assert_array_equal(np.stack([table[i] for i in src.ids]), src.labels)


def test_voc_sets_carry_their_class_list(synth_root):
  written = voc_meta.read_classes_file(os.path.join(synth_root, "classes.txt"))
  assert written.names == voc_meta.VOC.names
