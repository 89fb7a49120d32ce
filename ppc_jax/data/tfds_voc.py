r"""VOC 2012 segmentation + SBD train_aug as a TensorFlow Datasets data set, and a source that reads it.

Build (once; the shards may then live on a bucket):

  python -m ppc_jax.data.tfds_voc --manual_dir=data/voc --data_dir=gs://BUCKET/tfds
  (or the console script ppc-build-tfds)
  (= tfds.builder('voc2012_wsss', data_dir=...).download_and_prepare(
         download_config=tfds.download.DownloadConfig(manual_dir=...)))

`manual_dir` holds either the extracted tree (`VOCdevkit/VOC2012`, or the VOC2012 directory
itself) or the standard archives: `VOCtrainval_11-May-2012.tar`, and optionally SBD's
`SegmentationClassAug.zip` (the 10,582 train_aug masks) and `cls_labels.npy` / `train_aug.txt`
beside them (the reference repositories' files; train_aug.txt may also sit in
ImageSets/Segmentation of the tree). Every split whose list file exists and is not empty is built
(train, val, trainval, train_aug); examples are read exactly as the directory reader
(`voc.VOCSource`) reads them: the same ids, order, image-level labels (cls_labels.npy, else the
XML annotations, else the masks) and class list (classes.txt, else VOC's).

Each example stores the files' bytes as they are (`image`: the JPEG; `mask`, `saliency`: the
PNGs, b'' where absent) with its `id` and multi-hot `labels` [F]. Nothing is re-encoded, and the
reader decodes with PIL as the directory reader does, so pixels, augmentations and batches are
identical (tests/test_tfds_voc.py). Records are kept in list order (`disable_shuffling`) in
array_record files, which give random access: `TFDSSource` serves the training pipeline's
random-access reads (each process reads only the records of its own rows of every global batch,
which is what gives per-process splits here: the data order stays the pure function of (seed,
step) that exact resuming needs), and inference. Ids, labels and the class list are kept in the
data set's metadata, so opening a split reads no record. array_record reads and writes local
files only: a bucket data directory is built locally and uploaded (`build`), and copied into a
local cache before reading (`local_copy`, `config.input.tfds_cache_dir`).

Select it in a config: `config.input.source='tfds'`, `config.input.tfds_data_dir=...`.
"""

import json
import os
import shutil
import tempfile

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from ppc_jax import atomic_io
from ppc_jax import fileio
from ppc_jax.data import voc
from ppc_jax.data import voc_meta

NAME = "voc2012_wsss"
VOC_ARCHIVE = "VOCtrainval_11-May-2012.tar"
SBD_ARCHIVE = "SegmentationClassAug.zip"
SPLITS = ("train", "val", "trainval", "train_aug")


def _find_tree(manual_dir, dl_manager):
  """(VOC2012 root, mask dir for train_aug or None): the extracted tree, or the archives'."""
  manual_dir = os.fspath(manual_dir)
  if fileio.isdir(os.path.join(manual_dir, "VOCdevkit", "VOC2012")) or fileio.isdir(
      os.path.join(manual_dir, voc.IMAGE_DIR)):
    return voc.resolve_root(manual_dir), None
  archive = os.path.join(manual_dir, VOC_ARCHIVE)
  if not fileio.isfile(archive):
    raise FileNotFoundError(
        f"{manual_dir}: neither an extracted VOC tree (VOCdevkit/VOC2012/JPEGImages) nor "
        f"{VOC_ARCHIVE}; see {NAME}'s manual download instructions")
  root = voc.resolve_root(os.fspath(dl_manager.extract(archive)))
  mask_dir = None
  sbd = os.path.join(manual_dir, SBD_ARCHIVE)
  if fileio.isfile(sbd):
    extracted = os.fspath(dl_manager.extract(sbd))
    nested = os.path.join(extracted, voc.MASK_AUG_DIR)
    mask_dir = nested if fileio.isdir(nested) else extracted
  return root, mask_dir


def _manual_file(manual_dir, root, name):
  """`name` in the tree if there, else beside the archives, else None."""
  for path in (os.path.join(root, name), os.path.join(os.fspath(manual_dir), name)):
    if fileio.isfile(path):
      return path
  return None


# Run as `python -m ppc_jax.data.tfds_voc`, this file is also executed as `__main__`. TFDS finds a
# builder's resources through its module's package, which '__main__' has none of (TypeError:
# "'__main__' is not a package"), and a second registration of the name would fail. So the copy
# defined in `__main__` stays unregistered, and the `__main__` block below runs the command of the
# imported module, whose registered builder is the one TFDS resolves.
_RUN_AS_SCRIPT = __name__ == "__main__"


class Voc2012Wsss(tfds.core.GeneratorBasedBuilder, skip_registration=_RUN_AS_SCRIPT):
  """PASCAL VOC 2012 segmentation (+ SBD train_aug) for weakly supervised segmentation."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Image, id, image-level labels, mask and saliency bytes."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put in manual_dir either the extracted VOCdevkit/VOC2012 tree (with SegmentationClassAug/ "
      "and ImageSets/Segmentation/train_aug.txt for train_aug, optionally cls_labels.npy, "
      "classes.txt and a saliency directory) or VOCtrainval_11-May-2012.tar, optionally with "
      "SegmentationClassAug.zip, train_aug.txt and cls_labels.npy beside it.")
  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(),
            "image": tfds.features.Tensor(shape=(), dtype=np.object_),     # JPEG bytes
            "labels": tfds.features.Tensor(shape=(None,), dtype=np.float32),
            "mask": tfds.features.Tensor(shape=(), dtype=np.object_),      # PNG bytes or b''
            "saliency": tfds.features.Tensor(shape=(), dtype=np.object_),  # PNG bytes or b''
        }),
        metadata=tfds.core.MetadataDict(),
        # Records in list order: TFDSSource's index i is the i-th id of the split's list.
        disable_shuffling=True,
        homepage="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/",
    )

  def _split_generators(self, dl_manager):
    root, aug_mask_dir = _find_tree(dl_manager.manual_dir, dl_manager)
    classes = voc.load_classes("", root)
    cls_labels = _manual_file(dl_manager.manual_dir, root, voc.CLS_LABELS_FILE)
    saliency = fileio.isdir(os.path.join(root, voc.SALIENCY_DIR))
    self.info.metadata["classes"] = list(classes.fg_names)
    self.info.metadata["splits"] = {}
    generators = {}
    for split in SPLITS:
      list_file = split
      try:
        voc.find_list_file(root, split)
      except voc.DataError:
        beside = _manual_file(dl_manager.manual_dir, root, split + ".txt")
        if beside is None:
          logging.info("%s: no list for split %s; not built", NAME, split)
          continue
        list_file = beside
      try:
        source = voc.VOCSource(
            root, list_file, classes=classes, with_saliency=saliency, cls_labels=cls_labels,
            mask_dir=aug_mask_dir if split in voc.AUG_SPLITS else None)
      except voc.DataError as e:
        if "list file is empty" in str(e):
          logging.info("%s: split %s is empty; not built", NAME, split)
          continue
        raise
      self.info.metadata["splits"][split] = {
          "ids": list(source.ids), "labels": source.labels.astype(int).tolist()}
      generators[split] = self._generate_examples(source)
    if not generators:
      raise FileNotFoundError(f"{root}: no split list found ({', '.join(SPLITS)})")
    return generators

  def _generate_examples(self, source):
    for i, image_id in enumerate(source.ids):
      mask = source.mask_paths[i]
      sal = source.saliency_paths[i]
      yield f"{i:08d}", {
          "id": image_id,
          "image": fileio.read_bytes(source.image_paths[i]),
          "labels": source.labels[i],
          "mask": fileio.read_bytes(mask) if mask and fileio.isfile(mask) else b"",
          "saliency": fileio.read_bytes(sal) if sal else b"",
      }


def _version_dir(data_dir):
  """`<data_dir>/voc2012_wsss/<version>`: where one prepared version's files live."""
  return fileio.join(data_dir, NAME, str(Voc2012Wsss.VERSION))


def _copy_tree(src, dst, names):
  """Copies the files `names` from directory `src` to `dst` (either may be a bucket URL), each
  replaced whole (atomic_io), skipping files whose size already matches."""
  for name in names:
    source, target = fileio.join(src, name), fileio.join(dst, name)
    if fileio.isfile(target) and fileio.getsize(target) == fileio.getsize(source):
      continue
    atomic_io.write_bytes(target, fileio.read_bytes(source))


def _ordered_for_copy(names):
  """Shards first, dataset_info.json last: TFDS takes a directory holding dataset_info.json for
  prepared, so a reader never sees the set before all its shards are there."""
  return sorted(names, key=lambda n: (n == "dataset_info.json", n))


def local_copy(data_dir, cache_dir):
  """The local TFDS data directory to open for `data_dir`.

  array_record reads local files only: a data set on a bucket is copied once into
  `<cache_dir>/<bucket path>` (files whose size matches are not copied again; every file is
  replaced whole, so processes of one host that copy at the same time leave a complete copy).
  A local `data_dir` is returned as it is.
  """
  if not fileio.is_url(data_dir):
    return data_dir
  remote = _version_dir(data_dir)
  if not fileio.isfile(fileio.join(remote, "dataset_info.json")):
    raise FileNotFoundError(f"{remote}: {NAME} is not prepared there (no dataset_info.json; "
                            "config.input.tfds_data_dir); build it with python -m "
                            "ppc_jax.data.tfds_voc --manual_dir=... --data_dir=...")
  scheme, rest = data_dir.split("://", 1)
  local = os.path.join(fileio.abspath(cache_dir), scheme, rest.strip("/"))
  _copy_tree(remote, _version_dir(local), _ordered_for_copy(fileio.listdir(remote)))
  return local


class TFDSSource:
  """A prepared split of `voc2012_wsss`, with `voc.VOCSource`'s reading interface.

  Attributes: ids, labels float32 [N, F], classes, num_examples, with_saliency, split, bad,
  list_path (names the split in messages), mask_paths (with mask_dir: the mask files; else None),
  and per-example readers image_pil / image_size / mask / saliency_pil that decode the stored bytes
  with PIL (DataError naming `tfds:<split>/<id>` on a bad record).
  """

  def __init__(self, data_dir, split, *, with_saliency=False, skip_bad=False, classes=None,
               max_images=0, cache_dir="~/.cache/ppc_jax/tfds", mask_dir=None, need_masks=False):
    """data_dir: the TFDS data directory ('' = TFDS's default), local or a bucket URL (then
    copied to `cache_dir` first, see `local_copy`).

    mask_dir: read masks from `<mask_dir>/<id>.png` files instead of the stored ones (the
    pseudo-masks an earlier stage wrote, as `VOCSource`'s mask_dir). need_masks (with mask_dir):
    every id's file must exist; a missing one raises a DataError, or with skip_bad drops the
    example (counted in `bad`), as `VOCSource` does.
    """
    data_dir = local_copy(data_dir, cache_dir) if data_dir else None
    builder = tfds.builder(NAME, data_dir=data_dir)
    if not builder.is_prepared():
      raise FileNotFoundError(
          f"{builder.data_path}: {NAME} is not prepared there (config.input.tfds_data_dir="
          f"{data_dir!r}); build it with python -m ppc_jax.data.tfds_voc --manual_dir=...")
    meta = builder.info.metadata
    if split not in meta["splits"]:
      raise ValueError(f"config.input.split={split!r}: {NAME} at {builder.data_path} has the "
                       f"splits {sorted(meta['splits'])}")
    stored = voc_meta.ClassList.from_foreground(meta["classes"], f"{builder.data_path} metadata")
    self.classes = voc.load_classes(classes, None) if classes else stored
    if self.classes.names != stored.names:
      raise ValueError(f"config.input.classes gives the {self.classes.describe()}, but {NAME} at "
                       f"{builder.data_path} was built with the {stored.describe()}")
    entry = meta["splits"][split]
    count = len(entry["ids"]) if not max_images else min(int(max_images), len(entry["ids"]))
    self.split = split
    self.list_path = f"tfds:{builder.data_path}/{split}"
    self.with_saliency = bool(with_saliency)
    self.skip_bad = skip_bad
    self.bad = voc.BadInputLog(f"{NAME} {split}")
    ids = list(entry["ids"][:count])
    # Record number of each kept example: examples dropped for a missing mask file leave gaps.
    rows = list(range(count))
    self.mask_paths = None
    if mask_dir:
      paths = [fileio.join(mask_dir, image_id + ".png") for image_id in ids]
      if need_masks:
        present = set(fileio.listdir(mask_dir)) if fileio.isdir(mask_dir) else set()
        keep = []
        for r, image_id in enumerate(ids):
          if image_id + ".png" in present:
            keep.append(r)
            continue
          error = voc.DataError(paths[r], f"mask of {split} image {image_id!r} not found",
                                kind="missing mask")
          if not skip_bad:
            raise error
          self.bad.add(error)
        rows = keep
      self.mask_paths = tuple(paths[r] for r in rows)
    self._rows = tuple(rows)
    self.ids = tuple(ids[r] for r in rows)
    labels = np.asarray(entry["labels"][:count], np.float32).reshape(count, -1)
    self.labels = labels[list(rows)] if len(rows) != count else labels
    self.labels.setflags(write=False)
    if count and not self.ids:
      raise voc.DataError(self.list_path, f"no usable examples in split {split!r} "
                                          f"({self.bad.summary()})")
    if self.bad.count:
      logging.warning("%s; %d of %d examples kept", self.bad.summary(), len(self.ids), count)
    self._records = builder.as_data_source(split=split)
    if with_saliency and self.ids and not self._record(0)["saliency"]:
      raise ValueError(f"config.input.with_saliency is set, but {NAME} at {builder.data_path} "
                       "holds no saliency maps (the tree had no saliency directory when built)")

  @property
  def num_examples(self):
    return len(self.ids)

  def _name(self, i, what):
    return f"{self.list_path}/{self.ids[i]} ({what})"

  def _record(self, i):
    record = self._records[self._rows[i]]
    stored_id = record["id"].decode() if isinstance(record["id"], bytes) else str(record["id"])
    if stored_id != self.ids[i]:
      raise voc.DataError(self._name(i, "record"), f"record {i} holds id {stored_id!r}; expected "
                          f"{self.ids[i]!r} (rebuild the data set)", kind="record out of order")
    return record

  def image_pil(self, i):
    return voc.read_image_pil(self._name(i, "image"), self._record(i)["image"])

  def image(self, i):
    return np.asarray(self.image_pil(i))

  def image_size(self, i):
    width, height = voc.read_size(self._name(i, "image"), "image", self._record(i)["image"])
    return height, width

  def mask(self, i):
    if self.mask_paths is not None:
      return voc.read_mask(self.mask_paths[i], self.classes)
    data = self._record(i)["mask"]
    if not data:
      raise voc.DataError(self._name(i, "mask"), "no mask stored for this example",
                          kind="missing mask")
    return voc.read_mask(self._name(i, "mask"), self.classes, data)

  def saliency_pil(self, i):
    if not self.with_saliency:
      raise ValueError("this source was built without with_saliency=True")
    data = self._record(i)["saliency"]
    if not data:
      raise voc.DataError(self._name(i, "saliency"), "no saliency map stored",
                          kind="missing saliency")
    return voc.read_saliency_pil(self._name(i, "saliency"), data)


def build(manual_dir, data_dir):
  """Builds (or finds built) `voc2012_wsss` from `manual_dir` into `data_dir`.

  array_record writes local files only: for a bucket `data_dir` the set is built in a local
  temporary directory and uploaded (shards first, dataset_info.json last).

  Returns:
    (the prepared version directory, {split: number of examples}).
  """
  remote = bool(data_dir) and fileio.is_url(data_dir)
  if remote and fileio.isfile(fileio.join(_version_dir(data_dir), "dataset_info.json")):
    meta = json.loads(fileio.read_text(fileio.join(_version_dir(data_dir), "metadata.json")))
    logging.info("%s is already prepared in %s", NAME, _version_dir(data_dir))
    return _version_dir(data_dir), {k: len(v["ids"]) for k, v in meta["splits"].items()}
  build_dir = tempfile.mkdtemp(prefix="ppc_jax_tfds_") if remote else (data_dir or None)
  try:
    builder = tfds.builder(NAME, data_dir=build_dir)
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
    splits = {k: v.num_examples for k, v in builder.info.splits.items()}
    if not remote:
      return os.fspath(builder.data_path), splits
    local = os.fspath(builder.data_path)
    _copy_tree(local, _version_dir(data_dir), _ordered_for_copy(os.listdir(local)))
    return _version_dir(data_dir), splits
  finally:
    if remote:
      shutil.rmtree(build_dir, ignore_errors=True)


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  path, splits = build(f.manual_dir, f.data_dir)
  print(path)
  for split, count in splits.items():
    print(f"  {split}: {count} examples")


def cli():
  """The console script `ppc-build-tfds` (pyproject.toml): `python -m ppc_jax.data.tfds_voc`."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ppc_jax import entry  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("manual_dir", None, "The extracted VOC tree or the archives (see above).")
  flags.DEFINE_string("data_dir", None, "TFDS data directory (local or gs://); default "
                      "~/tensorflow_datasets.")
  flags.mark_flag_as_required("manual_dir")
  entry.run(main)


if __name__ == "__main__":
  # The imported module's command (see _RUN_AS_SCRIPT): its flags and its registered builder.
  from ppc_jax.data import tfds_voc as _module  # pylint: disable=g-import-not-at-top
  _module.cli()
