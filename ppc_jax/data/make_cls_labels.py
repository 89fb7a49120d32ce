r"""Writes the image-level labels file `cls_labels.npy` in the reference format.

  python -m ppc_jax.data.make_cls_labels --voc_root PATH/VOCdevkit/VOC2012 \
      [--splits train_aug,val] [--source auto|xml|masks] [--out PATH/cls_labels.npy] \
      [--classes SPEC]

The file is `np.save` of a dict id -> float32[F] multi-hot in class-list order (no background), as
the reference's voc12/cls_labels.npy (12,031 keys = train_aug + val; F = 20 for VOC). The class
list is `voc.load_classes(--classes, voc_root)`: the data directory's classes.txt, else VOC's.
`--source xml` reads every <name> of Annotations/<id>.xml (the reference's way); `--source masks`
takes the classes present in each mask (void ignored); `auto` uses XML when Annotations/ exists,
masks otherwise. Every problem (missing or corrupt file, mask labels outside 0..F/255) raises an
error naming the file, unless --skip_bad, which leaves those ids out with a counted warning and a
summary.
"""

import argparse
import os

import numpy as np

from ppc_jax import fileio
from ppc_jax.data import voc


def build_labels(voc_root, splits=("train_aug", "val"), source="auto", mask_dir=None,
                 skip_bad=False, classes=None):
  """{id: float32[F]} over the union of `splits`.

  Args:
    voc_root: the VOC2012 directory.
    splits: split names or list files (see voc.find_list_file).
    source: 'auto', 'xml' or 'masks'.
    mask_dir: mask folder for --source masks (default: per split, see voc.VOCSource).
    skip_bad: drop problem ids (counted warnings) instead of raising.
    classes: the class list (ClassList or `voc.load_classes` spec); None: the data directory's.

  Returns:
    (labels dict, list of the VOCSource objects read).
  """
  if source == "auto":
    source = ("xml" if fileio.isdir(os.path.join(voc.resolve_root(voc_root), voc.ANNOTATION_DIR))
              else "masks")
  if source not in ("xml", "masks"):
    raise ValueError(f"source must be 'auto', 'xml' or 'masks', got {source!r}")
  labels, sources = {}, []
  for split in splits:
    src = voc.VOCSource(voc_root, split, labels=source, need_masks=source == "masks",
                        mask_dir=mask_dir, skip_bad=skip_bad, verify="none", classes=classes)
    for image_id, label in zip(src.ids, src.labels):
      if image_id in labels and not np.array_equal(labels[image_id], label):
        raise voc.DataError(src.list_path, f"id {image_id!r} gets different labels from "
                                           "another split's masks")
      labels[image_id] = label.copy()
    sources.append(src)
  return labels, sources


def main(argv=None):
  parser = argparse.ArgumentParser(description="Write cls_labels.npy (see module docstring).")
  parser.add_argument("--voc_root", required=True, help="the VOCdevkit/VOC2012 directory")
  parser.add_argument("--splits", default="train_aug,val", help="comma-separated splits")
  parser.add_argument("--source", default="auto", choices=("auto", "xml", "masks"))
  parser.add_argument("--mask_dir", default=None, help="mask folder (masks source only)")
  parser.add_argument("--out", default=None, help="default: <voc_root>/cls_labels.npy")
  parser.add_argument("--skip_bad", action="store_true")
  parser.add_argument("--classes", default="", help="the class list, as config.input.classes "
                      "(default: <voc_root>/classes.txt, else VOC's 20)")
  args = parser.parse_args(argv)
  splits = [s for s in args.splits.split(",") if s.strip()]
  classes = voc.load_classes(args.classes, args.voc_root)
  labels, sources = build_labels(args.voc_root, splits, args.source, args.mask_dir, args.skip_bad,
                                 classes)
  out = args.out or os.path.join(voc.resolve_root(args.voc_root), voc.CLS_LABELS_FILE)
  voc.save_cls_labels(out, labels, classes)
  counts = np.bincount(np.stack(list(labels.values())).sum(axis=1).astype(int)) if labels else []
  print(f"wrote {len(labels)} labels to {out}")
  print("classes per image:", {k: int(v) for k, v in enumerate(counts) if v})
  for src in sources:
    if src.bad.count:
      print(src.bad.summary())
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
