"""VOC directory reader: list formats, split sizes, label sources, and every bad-input case."""

import os
import shutil

import numpy as np
import PIL.Image
import pytest

from data_fixtures import TINY, synth_root, voc_copy  # noqa: F401  (pytest fixtures)
from ppc_jax.data import make_cls_labels
from ppc_jax.data import voc
from ppc_jax.data import voc_meta


def test_meta():
  assert voc_meta.VOC.names == voc_meta.CLASS_NAMES and voc_meta.CLASS_NAMES[0] == "background"
  assert (voc_meta.VOC.num_classes, voc_meta.VOC.num_fg) == (21, 20)
  assert voc_meta.CAT_LIST[14] == "person" and voc_meta.VOC.index("person") == 15
  assert voc_meta.PALETTE[15].tolist() == [192, 128, 128]
  assert voc_meta.PALETTE[20].tolist() == [0, 64, 128]
  assert voc_meta.PALETTE[255].tolist() == list(voc_meta.VOID_COLOR)
  x = np.random.default_rng(0).integers(0, 256, (5, 7, 3)).astype(np.uint8)
  np.testing.assert_array_equal(voc_meta.denormalize(voc_meta.normalize(x)), x)


@pytest.mark.parametrize("split,n,mask_dir", [
    ("train_aug", TINY["num_train_aug"], "SegmentationClassAug"),
    ("trainaug", TINY["num_train_aug"], "SegmentationClassAug"),
    ("train", TINY["num_train"], "SegmentationClass"),
    ("val", TINY["num_val"], "SegmentationClass"),
])
def test_split_sizes_and_mask_paths(synth_root, split, n, mask_dir):
  src = voc.VOCSource(synth_root, split, need_masks=True, with_saliency=True, verify="full")
  assert src.num_examples == n == len(src.labels)
  assert all(p.endswith(f"{mask_dir}/{i}.png") for i, p in zip(src.ids, src.mask_paths))
  assert src.labels.dtype == np.float32 and src.labels.shape == (n, 20)
  for i in range(n):
    np.testing.assert_array_equal(voc.labels_from_mask(src.mask(i)), src.labels[i])


def test_list_formats_and_search_order(voc_copy, tmp_path):
  # Plain ids at the VOC root are found when ImageSets has no such split.
  ids = voc.VOCSource(voc_copy, "val").ids
  with open(os.path.join(voc_copy, "mine.txt"), "w") as f:
    f.write("\n".join(ids[:3]) + "\n\n")  # blank lines are ignored
  assert voc.find_list_file(voc_copy, "mine") == os.path.join(voc_copy, "mine.txt")
  assert voc.VOCSource(voc_copy, "mine").ids == ids[:3]
  # A list path works too, as does the reference format with any mask folder named in it.
  ref = tmp_path / "ref.txt"
  ref.write_text("".join(f"/JPEGImages/{i}.jpg /SegmentationClass/{i}.png\n" for i in ids[:2]))
  src = voc.VOCSource(voc_copy, str(ref), need_masks=True)
  assert src.ids == ids[:2] and src.mask_paths[0].endswith(f"SegmentationClass/{ids[0]}.png")
  # ImageSets/Segmentation wins over the root.
  shutil.copy(os.path.join(voc_copy, "ImageSets/Segmentation/train.txt"),
              os.path.join(voc_copy, "val.txt"))
  assert voc.VOCSource(voc_copy, "val").ids == ids


def test_one_split_reader_for_every_tool(voc_copy, tmp_path):
  """VOCSource and split_ids list a split the same way, from the VOC2012 directory or from a
  directory holding VOCdevkit/VOC2012."""
  parent = tmp_path / "data"
  shutil.copytree(voc_copy, parent / "VOCdevkit" / "VOC2012")
  with open(os.path.join(voc_copy, "ImageSets", "Segmentation", "val.txt")) as f:
    listed = f.read().split()
  nested = os.path.join(str(parent), "VOCdevkit", "VOC2012")
  for root, resolved in ((voc_copy, voc_copy), (str(parent), nested)):
    assert voc.split_ids(root, "val") == listed
    src = voc.VOCSource(root, "val")
    assert list(src.ids) == listed and src.root == resolved
  assert voc.split_ids(voc_copy, "val", max_images=3) == listed[:3]


def test_label_sources_agree_and_tool(voc_copy):
  npy = voc.VOCSource(voc_copy, "train_aug", labels="npy")
  xml = voc.VOCSource(voc_copy, "train_aug", labels="xml")
  masks = voc.VOCSource(voc_copy, "train_aug", labels="masks")
  np.testing.assert_array_equal(npy.labels, xml.labels)
  np.testing.assert_array_equal(npy.labels, masks.labels)
  reference = voc.load_cls_labels(os.path.join(voc_copy, "cls_labels.npy"))
  os.remove(os.path.join(voc_copy, "cls_labels.npy"))
  assert voc.VOCSource(voc_copy, "train").labels_origin == "xml"  # auto falls back to XML
  for source in ("masks", "xml"):
    out = os.path.join(voc_copy, f"labels_{source}.npy")
    assert make_cls_labels.main(["--voc_root", voc_copy, "--source", source, "--out", out]) == 0
    made = np.load(out, allow_pickle=True).item()  # the reference's loading idiom
    assert set(made) == set(reference)
    for k, v in reference.items():
      assert made[k].dtype == np.float32
      np.testing.assert_array_equal(made[k], v)
  shutil.rmtree(os.path.join(voc_copy, "Annotations"))
  assert voc.VOCSource(voc_copy, "train").labels_origin == "masks"


# ------------------------------------------------------------------------------------------------
# Bad inputs: each error names the file and what was expected; skip_bad counts and summarises.


def _first_id(root, split="train"):
  return voc.VOCSource(root, split).ids[0]


def test_missing_directories(voc_copy, tmp_path):
  with pytest.raises(voc.DataError, match="VOC root directory not found") as e:
    voc.VOCSource(str(tmp_path / "nowhere"), "train")
  assert e.value.path.endswith("nowhere")
  shutil.rmtree(os.path.join(voc_copy, "SALImages"))
  with pytest.raises(voc.DataError, match="SALImages: saliency directory not found"):
    voc.VOCSource(voc_copy, "train", with_saliency=True)
  shutil.rmtree(os.path.join(voc_copy, "JPEGImages"))
  with pytest.raises(voc.DataError, match="JPEGImages: image directory not found"):
    voc.VOCSource(voc_copy, "train", skip_bad=True)  # never skippable


def test_missing_list_file(voc_copy):
  with pytest.raises(voc.DataError, match=r"list file for split 'test' not found; tried .*"
                                          r"ImageSets/Segmentation/test.txt"):
    voc.VOCSource(voc_copy, "test", skip_bad=True)
  os.remove(os.path.join(voc_copy, "ImageSets/Segmentation/train_aug.txt"))
  with pytest.raises(voc.DataError, match="train_aug.txt is not shipped with VOC2012"):
    voc.VOCSource(voc_copy, "train_aug")


def test_bad_list_lines(voc_copy):
  path = os.path.join(voc_copy, "ImageSets/Segmentation/train.txt")
  ids = open(path).read().split()
  with open(path, "w") as f:
    f.write(f"{ids[0]}\n{ids[1]} a b\n")
  with pytest.raises(voc.DataError, match=r"train.txt:2: expected 'ID' or"):
    voc.VOCSource(voc_copy, "train")
  with open(path, "w") as f:
    f.write(f"{ids[0]}\n{ids[1]}\n{ids[0]}\n")
  with pytest.raises(voc.DataError, match=r"train.txt:3: id '.*' repeats line 1"):
    voc.VOCSource(voc_copy, "train")
  src = voc.VOCSource(voc_copy, "train", skip_bad=True)
  assert src.ids == tuple(ids[:2]) and src.bad.count == 1
  # The evaluator's listing (no images opened) is the same reader: same ids, same error.
  with pytest.raises(voc.DataError, match=r"train.txt:3: id '.*' repeats line 1"):
    voc.split_ids(voc_copy, "train")
  open(path, "w").close()
  with pytest.raises(voc.DataError, match="list file is empty"):
    voc.VOCSource(voc_copy, "train")


def test_id_without_image_or_mask(voc_copy):
  image_id = _first_id(voc_copy)
  os.remove(os.path.join(voc_copy, "SegmentationClass", image_id + ".png"))
  voc.VOCSource(voc_copy, "train")  # masks are not needed for training
  with pytest.raises(voc.DataError, match=rf"SegmentationClass/{image_id}.png: mask of the image "
                                          rf"listed in .*train.txt:1"):
    voc.VOCSource(voc_copy, "train", need_masks=True)
  os.remove(os.path.join(voc_copy, "JPEGImages", image_id + ".jpg"))
  with pytest.raises(voc.DataError, match=rf"JPEGImages/{image_id}.jpg: image listed in .*"
                                          rf"train.txt:1 .* not found; expected JPEGImages/"):
    voc.VOCSource(voc_copy, "train")
  src = voc.VOCSource(voc_copy, "train", skip_bad=True)
  assert src.num_examples == TINY["num_train"] - 1 and image_id not in src.ids
  assert src.bad.count == 1 and "1 bad inputs skipped" in src.bad.summary()
  os.remove(os.path.join(voc_copy, "SALImages", src.ids[0] + ".png"))
  with pytest.raises(voc.DataError, match=rf"SALImages/{src.ids[0]}.png: saliency map of the "):
    voc.VOCSource(voc_copy, _write_list(voc_copy, src.ids), with_saliency=True)
  src = voc.VOCSource(voc_copy, "train", with_saliency=True, skip_bad=True)
  assert src.bad.summary() == ("VOC train: 2 bad inputs skipped (1 x missing image, "
                               "1 x missing saliency)")


def test_corrupt_files(voc_copy):
  image_id = _first_id(voc_copy)
  jpg = os.path.join(voc_copy, "JPEGImages", image_id + ".jpg")
  with open(jpg, "wb") as f:
    f.write(b"this is not a jpeg")
  with pytest.raises(voc.DataError, match=rf"{image_id}.jpg: cannot open image .*expected a "
                                          "readable JPEG"):
    voc.VOCSource(voc_copy, "train")
  with pytest.raises(voc.DataError, match=rf"{image_id}.jpg: cannot decode image"):
    voc.read_image(jpg)
  src = voc.VOCSource(voc_copy, "train", skip_bad=True)
  assert image_id not in src.ids and src.bad.count == 1
  # Truncated data behind a valid header: found by a full decode (verify='full', or at load time).
  second = src.ids[0]
  jpg2 = os.path.join(voc_copy, "JPEGImages", second + ".jpg")
  data = open(jpg2, "rb").read()
  with open(jpg2, "wb") as f:
    f.write(data[:len(data) // 2])
  voc.VOCSource(voc_copy, str(_write_list(voc_copy, [second])))  # the header still reads
  with pytest.raises(voc.DataError, match=rf"{second}.jpg: cannot decode image .*truncated"):
    voc.VOCSource(voc_copy, str(_write_list(voc_copy, [second])), verify="full")
  png = os.path.join(voc_copy, "SegmentationClass", second + ".png")
  with open(png, "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n garbage")
  with pytest.raises(voc.DataError, match=rf"{second}.png: cannot decode mask .*expected a "
                                          "readable PNG"):
    voc.read_mask(png)


def _write_list(root, ids, name="sub.txt"):
  path = os.path.join(root, name)
  with open(path, "w") as f:
    f.write("\n".join(ids) + "\n")
  return path


def test_mask_values_and_modes(voc_copy):
  image_id = _first_id(voc_copy)
  png = os.path.join(voc_copy, "SegmentationClass", image_id + ".png")
  mask = voc.read_mask(png).copy()
  mask[0, :3] = [21, 37, 254]
  img = PIL.Image.fromarray(mask, "P")
  img.putpalette(voc_meta.palette_bytes())
  img.save(png)
  with pytest.raises(voc.DataError, match=rf"{image_id}.png: mask holds labels \[21, 37, 254\]; "
                                          r"expected only 0..20 and 255"):
    voc.read_mask(png)
  with pytest.raises(voc.DataError, match=rf"{image_id}.png: mask holds labels"):
    voc.VOCSource(voc_copy, "train", labels="masks")
  with pytest.raises(voc.DataError, match=rf"{image_id}.png: mask holds labels"):
    make_cls_labels.main(["--voc_root", voc_copy, "--splits", "train", "--source", "masks",
                          "--out", os.path.join(voc_copy, "x.npy")])
  src = voc.VOCSource(voc_copy, "train", labels="masks", skip_bad=True)
  assert image_id not in src.ids and src.bad.count == 1
  PIL.Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(png)
  with pytest.raises(voc.DataError, match="mask has PIL mode 'RGB'; expected a palette"):
    voc.read_mask(png)
  grey = PIL.Image.fromarray(np.full((4, 4), 15, np.uint8), "L")  # SBD-style grey-level PNG
  grey.save(png)
  assert voc.read_mask(png).max() == 15


def test_bad_label_vectors(voc_copy):
  path = os.path.join(voc_copy, "cls_labels.npy")
  labels = voc.load_cls_labels(path)
  ids = voc.VOCSource(voc_copy, "train").ids
  labels[ids[1]] = np.ones(19, np.float32)
  np.save(path, labels)
  with pytest.raises(voc.DataError, match=rf"cls_labels.npy: label of '{ids[1]}' has shape "
                                          r"\(19,\); expected a float32 vector of length 20"):
    voc.VOCSource(voc_copy, "train")
  labels[ids[1]] = np.full(20, 0.5, np.float32)
  np.save(path, labels)
  with pytest.raises(voc.DataError, match="is not multi-hot"):
    voc.VOCSource(voc_copy, "train")
  del labels[ids[1]]
  np.save(path, labels)
  with pytest.raises(voc.DataError, match=rf"cls_labels.npy: no label for id '{ids[1]}'"):
    voc.VOCSource(voc_copy, "train")
  src = voc.VOCSource(voc_copy, "train", skip_bad=True)
  assert ids[1] not in src.ids and src.num_examples == len(ids) - 1 and src.bad.count == 1
  np.save(path, np.zeros((3, 20)))
  with pytest.raises(voc.DataError, match=r"cls_labels.npy: holds a float64 array of shape "
                                          r"\(3, 20\), not a pickled dict; expected np.save"):
    voc.VOCSource(voc_copy, "train")
  with pytest.raises(voc.DataError, match="label of 'x' has shape"):
    voc.save_cls_labels(os.path.join(voc_copy, "y.npy"), {"x": np.zeros(21)})


def test_saliency_size_mismatch_and_skip_summary(voc_copy):
  ids = voc.VOCSource(voc_copy, "train").ids
  for i in ids[:2]:
    PIL.Image.fromarray(np.zeros((3, 5), np.uint8)).save(
        os.path.join(voc_copy, "SALImages", i + ".png"))
  with pytest.raises(voc.DataError, match=rf"{ids[0]}.png: saliency is 5x3 \(WxH\); expected "
                                          "the image's"):
    voc.VOCSource(voc_copy, "train", with_saliency=True)
  src = voc.VOCSource(voc_copy, "train", with_saliency=True, skip_bad=True)
  assert src.ids == ids[2:] and src.bad.count == 2
  assert src.bad.summary() == ("VOC train: 2 bad inputs skipped (2 x saliency size differs from "
                               "the image)")


def test_validate_cli(voc_copy, capsys):
  assert voc.main(["--voc_root", voc_copy, "--split", "val", "--saliency"]) == 0
  image_id = voc.VOCSource(voc_copy, "val").ids[-1]
  jpg = os.path.join(voc_copy, "JPEGImages", image_id + ".jpg")
  data = open(jpg, "rb").read()
  open(jpg, "wb").write(data[: len(data) // 2])
  assert voc.main(["--voc_root", voc_copy, "--split", "val"]) == 1
  assert f"BAD {jpg}: cannot decode image" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# Class lists


FIVE = ("circle", "square", "kite", "moon", "star")


def test_class_list_sources(voc_copy, tmp_path):
  """load_classes: config spec > <root>/classes.txt > VOC; the one decision for every tool."""
  os.remove(os.path.join(voc_copy, voc.CLASSES_FILE))  # synth writes VOC's list; start without
  assert voc.load_classes("", voc_copy) is voc_meta.VOC
  assert voc.load_classes("", None) is voc_meta.VOC
  with open(os.path.join(voc_copy, voc.CLASSES_FILE), "w") as f:
    f.write("# a comment line\n" + "\n".join(FIVE) + "\n\n")
  from_file = voc.load_classes("", voc_copy)
  assert from_file.names == ("background",) + FIVE and from_file.num_classes == 6
  assert from_file.num_fg == 5 and from_file.source.endswith(voc.CLASSES_FILE)
  assert from_file.index("kite") == 3 and from_file.index(5) == 5
  # The parent of VOCdevkit finds the same file.
  parent = tmp_path / "data"
  shutil.copytree(voc_copy, parent / "VOCdevkit" / "VOC2012")
  assert voc.load_classes("", str(parent)).names == from_file.names
  # An explicit spec wins over the file.
  assert voc.load_classes("voc", voc_copy) is voc_meta.VOC
  listed = voc.load_classes(" a, b ,c", voc_copy)
  assert listed.names == ("background", "a", "b", "c") and listed.source == "config.input.classes"
  other = tmp_path / "mine.txt"
  other.write_text("x\ny\n")
  assert voc.load_classes(str(other), voc_copy).fg_names == ("x", "y")
  # The palette is VOC's colour map for any index; void stays 255.
  assert from_file.palette[5].tolist() == voc_meta.PALETTE[5].tolist()
  assert from_file.ignore_label == 255


@pytest.mark.parametrize("text,match", [
    ("", "lists no class"),
    ("a\nb\na\n", r"repeat: \['a'\]"),
    ("background\ncat\n", r"repeat: \['background'\]"),
    ("".join(f"c{i}\n" for i in range(255)), "needs 1..254 foreground classes"),
])
def test_bad_classes_file_names_it(tmp_path, text, match):
  path = tmp_path / "classes.txt"
  path.write_text(text)
  with pytest.raises(ValueError, match=f"{path}.*{match}"):
    voc.load_classes("", str(tmp_path))


def test_bad_class_specs():
  with pytest.raises(ValueError, match="config.input.classes='nope.txt': classes file not found"):
    voc.load_classes("nope.txt")
  with pytest.raises(ValueError, match="config.input.classes.*repeat"):
    voc.load_classes("a,b,a")
  with pytest.raises(ValueError, match=r"unknown class 'dog'; expected one of a, b"):
    voc.load_classes("a,b").index("dog")


def test_model_head_must_match_class_list():
  five = voc.load_classes(",".join(FIVE))
  assert voc.check_model_classes(five, 6) is five
  with pytest.raises(ValueError, match=r"config.model.num_classes=21 does not match the class "
                                       r"list: 6 classes \(background \+ 5 from "
                                       r"config.input.classes\); set config.model.num_classes=6"):
    voc.check_model_classes(five, 21)


def test_five_class_masks_labels_and_xml(voc_copy):
  """A 5-class list: labels of length 5, mask values 0..5 and 255, XML names from the list."""
  five = voc_meta.ClassList.from_foreground(FIVE, "test")
  mask = np.array([[0, 1, 5], [255, 5, 0]], np.uint8)
  np.testing.assert_array_equal(voc.labels_from_mask(mask, five), [1, 0, 0, 0, 1])
  path = os.path.join(voc_copy, "m.png")
  PIL.Image.fromarray(mask, "L").save(path)
  np.testing.assert_array_equal(voc.read_mask(path, five), mask)
  bad = mask.copy()
  bad[0, 0] = 6
  PIL.Image.fromarray(bad, "L").save(path)
  with pytest.raises(voc.DataError, match=r"m.png: mask holds labels \[6\]; expected only 0..5 "
                                          r"and 255 \(void\) for the 6 classes"):
    voc.read_mask(path, five)
  assert voc.read_mask(path)[0, 0] == 6  # a valid VOC mask
  xml = os.path.join(voc_copy, "a.xml")
  with open(xml, "w") as f:
    f.write("<annotation><object><name>moon</name></object><object><name>cat</name></object>"
            "<object><name>circle</name></object></annotation>")
  np.testing.assert_array_equal(voc.labels_from_xml(xml, five), [1, 0, 0, 1, 0])
  with pytest.raises(voc.DataError, match=r"label of 'x' has shape \(20,\); expected a float32 "
                                          r"vector of length 5"):
    voc.check_label(np.zeros(20), "x", "cls_labels.npy", five)
