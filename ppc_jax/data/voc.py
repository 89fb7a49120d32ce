"""Reads a standard `VOCdevkit/VOC2012` tree from disk: list files, ids, labels, and their checks.

Layout (the real data set and `python -m ppc_jax.data.synth` both produce it):

  VOC2012/
    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png       palette PNGs (VOC train/val), 255 = void
    SegmentationClassAug/<id>.png    SBD-augmented masks (train_aug), palette or grey-level PNGs
    SALImages/<id>.png               optional saliency maps (EPS variant)
    Annotations/<id>.xml             optional, for labels from XML
    ImageSets/Segmentation/{train,val,trainval,train_aug}.txt
    cls_labels.npy                   optional image-level labels (the reference file)

List files: one example per line, either a plain id ("2007_000032") or the reference format
"/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png". `read_split` is the one
reader of a split's list (used by `VOCSource`, and by the evaluator through `split_ids`);
`find_list_file` says where each split's list is looked for (train_aug.txt is not part of
VOC2012: copy the reference one into ImageSets/Segmentation/ or the VOC2012 root). Every reader
takes the VOC2012 directory or a directory holding `VOCdevkit/VOC2012` (`resolve_root`).

Classes: `load_classes` decides a data set's class list (`voc_meta.ClassList`): the config's
`input.classes`, else `<root>/classes.txt`, else VOC's 20. Labels, masks and errors follow it.

Image-level labels (`float32[F]` for F foreground classes, list order, no background) come, in
this order of preference, from an explicit `cls_labels.npy` path, `<root>/cls_labels.npy`, the XML
annotations, or the masks (write the file once with `python -m ppc_jax.data.make_cls_labels`).

Every problem raises `DataError` naming the file and what was expected. With `skip_bad=True` the
per-example problems (missing or unreadable files, bad labels) drop that example instead, each
with a counted warning and a summary (`BadInputLog`); missing directories or list files always
raise. Nothing is skipped silently.
"""

import collections
import io
import os
import threading
import xml.etree.ElementTree as ET

from absl import logging
import numpy as np
import PIL.Image

from ppc_jax import atomic_io
from ppc_jax import fileio
from ppc_jax import untrusted
from ppc_jax.data import voc_meta

IMAGE_DIR = "JPEGImages"
MASK_DIR = "SegmentationClass"
MASK_AUG_DIR = "SegmentationClassAug"
SALIENCY_DIR = "SALImages"
ANNOTATION_DIR = "Annotations"
LIST_DIRS = ("ImageSets/Segmentation", "ImageSets/SegmentationAug", "")
CLS_LABELS_FILE = "cls_labels.npy"
AUG_SPLITS = ("train_aug", "trainaug")
CLASSES_FILE = voc_meta.CLASSES_FILE


class DataError(ValueError):
  """A data problem, with the offending file in `path` (also at the start of the message)."""

  def __init__(self, path, problem, kind=None):
    self.path = str(path)
    self.problem = problem
    self.kind = kind or problem.split(";")[0][:60]  # short label for summaries
    super().__init__(f"{path}: {problem}")


class BadInputLog:
  """Thread-safe record of skipped inputs: a warning per problem and a summary on request.

  The first `max_warnings` problems are logged one by one, later ones only counted, so a broken
  data set does not flood the log; `summary()` always reports the total and the reasons.
  """

  def __init__(self, what, max_warnings=20):
    self.what = what
    self.max_warnings = max_warnings
    self._lock = threading.Lock()
    self.entries = []          # (path, problem) in the order seen
    self.kinds = []            # short kind of each entry, for the summary

  def add(self, error, action="skipped"):
    """Records a DataError (or (path, problem)) and logs a numbered warning."""
    if isinstance(error, DataError):
      path, problem, kind = error.path, error.problem, error.kind
    else:
      (path, problem), kind = error, None
    with self._lock:
      self.entries.append((path, problem))
      self.kinds.append(kind or problem.split(";")[0][:60])
      n = len(self.entries)
    if n <= self.max_warnings:
      logging.warning("%s: bad input #%d %s: %s: %s", self.what, n, action, path, problem)
    elif n == self.max_warnings + 1:
      logging.warning("%s: more bad inputs; counting only (summary follows)", self.what)

  @property
  def count(self):
    with self._lock:
      return len(self.entries)

  def summary(self):
    """One line: total count and the count per kind of problem (first words of the message)."""
    with self._lock:
      kinds = collections.Counter(self.kinds)
      total = len(self.entries)
    if not total:
      return f"{self.what}: no bad inputs"
    parts = ", ".join(f"{n} x {kind}" for kind, n in kinds.most_common())
    return f"{self.what}: {total} bad inputs skipped ({parts})"

  def log_summary(self):
    if self.count:
      logging.warning("%s", self.summary())


# ----------------------------------------------------------------------------------------------
# Files


def find_list_file(voc_root, split):
  """Path of a split's list file.

  Looked for, in order: `split` itself when it names an existing .txt file;
  `<root>/ImageSets/Segmentation/<split>.txt`; `<root>/ImageSets/SegmentationAug/<split>.txt`;
  `<root>/<split>.txt`. "train_aug" and "trainaug" are the same split (reference scripts use both).

  Raises:
    DataError naming every path tried.
  """
  if split.endswith(".txt"):
    for candidate in (split, os.path.join(voc_root, split)):
      if fileio.isfile(candidate):
        return candidate
    raise DataError(split, "list file not found (also tried relative to the VOC root "
                           f"{voc_root})")
  names = list(AUG_SPLITS) if split in AUG_SPLITS else [split]
  tried = []
  for sub in LIST_DIRS:
    for name in names:
      candidate = os.path.join(voc_root, sub, name + ".txt")
      tried.append(candidate)
      if fileio.isfile(candidate):
        return candidate
  hint = ""
  if split in AUG_SPLITS:
    hint = ("; train_aug.txt is not shipped with VOC2012: put the reference list "
            "(10,582 lines) in ImageSets/Segmentation/")
  raise DataError(tried[0], f"list file for split {split!r} not found; tried {', '.join(tried)}"
                            f"{hint}")


def parse_list_file(path):
  """Reads a list file.

  Returns:
    list of (id, mask_relpath or None, line_number). A reference-format line
    "/JPEGImages/ID.jpg /SegmentationClassAug/ID.png" gives ("ID", "SegmentationClassAug/ID.png").

  Raises:
    DataError for an unreadable or empty list or a line with more than two fields.
  """
  try:
    with fileio.open(path) as f:
      lines = list(f)
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(path, f"cannot read the list file ({type(e).__name__}: {e}); expected text, "
                          "one image id per line") from e
  entries = []
  for lineno, line in enumerate(lines, 1):
    fields = line.split()
    if not fields:
      continue
    if len(fields) > 2:
      raise DataError(f"{path}:{lineno}", f"expected 'ID' or '/JPEGImages/ID.jpg "
                                          f"/SegmentationClassAug/ID.png', got {line.strip()!r}")
    image_field = fields[0]
    image_id = os.path.splitext(os.path.basename(image_field))[0] if (
        "/" in image_field or image_field.lower().endswith((".jpg", ".jpeg"))) else image_field
    mask_rel = fields[1].lstrip("/") if len(fields) == 2 else None
    entries.append((image_id, mask_rel, lineno))
  if not entries:
    raise DataError(path, "list file is empty; expected one image id per line")
  return entries


def resolve_root(voc_root):
  """The VOC2012 directory: `<voc_root>/VOCdevkit/VOC2012` when that exists, else `voc_root`.

  Every reader (`VOCSource`, `split_ids`, the evaluator) goes through it, so any of them takes
  either the VOC2012 directory itself or a directory holding `VOCdevkit/VOC2012`.
  """
  nested = fileio.join(voc_root, "VOCdevkit", "VOC2012")
  return nested if fileio.isdir(nested) else voc_root


def read_split(voc_root, split, *, max_images=0, on_repeat=None):
  """The one way to list a split: finds, parses and de-duplicates its list file.

  Args:
    voc_root: the VOC2012 directory (already resolved, see `resolve_root`).
    split: split name or list file (see `find_list_file`).
    max_images: > 0 keeps only the first N lines of the list (before de-duplication).
    on_repeat: called with a DataError for each repeated id, which is then dropped (e.g. to
      count and skip it); None raises that DataError (a repeated id is taken for a broken list;
      the reference would use the image twice).

  Returns:
    (list_path, entries): entries as `parse_list_file`'s, each id once, in list order.
  """
  list_path = find_list_file(voc_root, split)
  entries = parse_list_file(list_path)
  if max_images > 0:
    entries = entries[:max_images]
  seen = {}
  out = []
  for entry in entries:
    image_id, _, lineno = entry
    if image_id in seen:
      error = DataError(f"{list_path}:{lineno}", f"id {image_id!r} repeats line "
                                                 f"{seen[image_id]}; expected each id once",
                        kind="repeated id")
      if on_repeat is None:
        raise error
      on_repeat(error)
      continue
    seen[image_id] = lineno
    out.append(entry)
  return list_path, out


def split_ids(voc_root, split, *, max_images=0):
  """Image ids of a split, in list order, without opening any image (the evaluator's listing).

  Args:
    voc_root: the VOC2012 directory, or a directory holding `VOCdevkit/VOC2012`.
    split: split name or list file (see `find_list_file`).
    max_images: > 0 keeps only the first N ids.

  Raises:
    DataError naming the list file: not found, empty, a malformed line or a repeated id.
  """
  _, entries = read_split(resolve_root(voc_root), split, max_images=max_images)
  return [image_id for image_id, _, _ in entries]


def load_classes(spec="", voc_root=None):
  """The class list of a data set; the one function that decides it.

  Args:
    spec: `config.input.classes` (or the evaluator's --classes):
      "" -> `<voc_root>/classes.txt` when that file exists, else VOC's 20 classes;
      "voc" -> VOC's 20 classes;
      a path ending in ".txt" -> that classes file (`voc_meta.read_classes_file`);
      otherwise a comma-separated list of foreground names (mask values 1, 2, ... in order).
      A ClassList is returned as it is.
    voc_root: the data directory (the VOC2012 directory or one holding VOCdevkit/VOC2012).

  Returns:
    voc_meta.ClassList.

  Raises:
    ValueError naming the file or `config.input.classes`: unreadable file, no class, a repeated
    or malformed name, more than 254 classes.
  """
  if isinstance(spec, voc_meta.ClassList):
    return spec
  spec = str(spec or "").strip()
  if not spec:
    if voc_root is not None:
      path = os.path.join(resolve_root(voc_root), CLASSES_FILE)
      if fileio.isfile(path):
        return voc_meta.read_classes_file(path)
    return voc_meta.VOC
  if spec.lower() == "voc":
    return voc_meta.VOC
  if spec.endswith(".txt"):
    if not fileio.isfile(spec):
      raise ValueError(f"config.input.classes={spec!r}: classes file not found; expected one "
                       "foreground class name per line")
    return voc_meta.read_classes_file(spec)
  names = [n.strip() for n in spec.split(",") if n.strip()]
  return voc_meta.ClassList.from_foreground(names, "config.input.classes")


def check_model_classes(classes, model_num_classes):
  """Raises unless `config.model.num_classes` equals the class list's count (background included).

  The model's head width is never derived silently: a config trained for one class list cannot
  be run on data with another.
  """
  if int(model_num_classes) != classes.num_classes:
    raise ValueError(
        f"config.model.num_classes={model_num_classes} does not match the class list: "
        f"{classes.describe()}; set config.model.num_classes={classes.num_classes} (the list "
        f"comes from config.input.classes, else the data directory's {CLASSES_FILE}, else VOC)")
  return classes


def _open_checked(path, what, data=None):
  """PIL.Image opened and fully decoded, or a DataError naming the file.

  `data`: the file's bytes when they come from elsewhere (a TFDS record); `path` then only names
  the example in messages.
  """
  if data is None and not fileio.isfile(path):
    raise DataError(path, f"{what} file not found", kind=f"missing {what}")
  try:
    img = PIL.Image.open(fileio.readable(path) if data is None else io.BytesIO(data))
    img.load()
  except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as e:
    raise DataError(path, f"cannot decode {what} ({type(e).__name__}: {e}); expected a "
                          f"readable {'JPEG' if what == 'image' else 'PNG'} file",
                    kind=f"unreadable {what}") from e
  return img


def read_size(path, what="image", data=None):
  """(W, H) from a file's header (nothing decoded), or a DataError naming the file.

  `data`: the file's bytes when they come from elsewhere (a TFDS record), as in `_open_checked`.
  """
  try:
    with PIL.Image.open(fileio.readable(path) if data is None else io.BytesIO(data)) as img:
      return img.size
  except FileNotFoundError:
    raise DataError(path, f"{what} file not found", kind=f"missing {what}") from None
  except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as e:
    raise DataError(path, f"cannot open {what} ({type(e).__name__}: {e}); expected a "
                          f"readable {'JPEG' if what == 'image' else 'PNG'} file",
                    kind=f"unreadable {what}") from e


def read_image_pil(path, data=None):
  """RGB PIL image (decoded), as the reference opens it: `Image.open(p).convert('RGB')`."""
  img = _open_checked(path, "image", data)
  return img if img.mode == "RGB" else img.convert("RGB")


def read_image(path):
  """uint8 [H, W, 3] RGB."""
  return np.asarray(read_image_pil(path))


def read_mask(path, classes=voc_meta.VOC, data=None):
  """uint8 [H, W] class-index mask (0 = background, 1..F, 255 = void), F = classes.num_fg.

  Accepts palette ('P') PNGs (VOC) and grey-level ('L') index PNGs (SegmentationClassAug as
  distributed); RGB colour masks are rejected rather than guessed.

  Raises:
    DataError for a missing or corrupt file, a wrong mode, or values outside 0..F / 255.
  """
  img = _open_checked(path, "mask", data)
  if img.mode not in ("P", "L"):
    raise DataError(path, f"mask has PIL mode {img.mode!r}; expected a palette ('P') or "
                          "grey-level ('L') PNG of class indices", kind="bad mask mode")
  mask = np.asarray(img, np.uint8)
  values = np.unique(mask)
  bad = [int(v) for v in values if classes.num_fg < v < voc_meta.IGNORE_LABEL]
  if bad:
    raise DataError(path, f"mask holds labels {bad[:10]}; expected only 0..{classes.num_fg} and "
                          f"{voc_meta.IGNORE_LABEL} (void) for the {classes.describe()}",
                    kind=f"mask labels outside 0..{classes.num_fg}/{voc_meta.IGNORE_LABEL}")
  return mask


def read_saliency_pil(path, data=None):
  """Saliency map as a decoded PIL image: 'L' kept as is (grey maps), anything else as RGB.

  The reference opens saliency as RGB and averages channels after the geometry; for a grey map
  the three channels are equal, so keeping 'L' gives the same values at a third of the work.
  """
  img = _open_checked(path, "saliency", data)
  return img if img.mode in ("L", "RGB") else img.convert("RGB")


def labels_from_mask(mask, classes=voc_meta.VOC):
  """float32 [F] multi-hot of the foreground classes present in a mask (void ignored).

  Values above F (other than void) are not classes of the list; `read_mask` rejects them.
  """
  counts = np.bincount(np.asarray(mask, np.uint8).reshape(-1), minlength=256)
  return (counts[1:classes.num_classes] > 0).astype(np.float32)


def labels_from_xml(path, classes=voc_meta.VOC):
  """float32 [F] multi-hot from a VOC XML annotation, as the reference's load_image_label_from_xml:
  every <name> element whose text is a class of the list (part names such as 'head' are ignored)."""
  if not fileio.isfile(path):
    raise DataError(path, "annotation file not found", kind="missing annotation")
  try:
    root = ET.parse(fileio.readable(path)).getroot()
  except (ET.ParseError, OSError) as e:
    raise DataError(path, f"cannot parse XML annotation ({type(e).__name__}: {e})",
                    kind="unreadable annotation") from e
  label = np.zeros(classes.num_fg, np.float32)
  position = {name: i for i, name in enumerate(classes.fg_names)}
  for el in root.iter("name"):
    name = (el.text or "").strip()
    if name in position:
      label[position[name]] = 1.0
  return label


def load_cls_labels(path):
  """Reads a reference-format cls_labels.npy: an np.save'd dict id -> float32[F].

  The pickle inside is read by `ppc_jax.untrusted` (dicts, strings, numbers and numpy arrays
  only), so a crafted file is refused instead of running code.

  Returns:
    dict str -> np.ndarray (values as stored; `check_label` validates them per id).

  Raises:
    DataError if the file is missing, is not a pickled dict of str -> numeric arrays, or asks for
    anything else (then the message says which global was refused).
  """
  if not fileio.isfile(path):
    raise DataError(path, "cls_labels file not found" if not fileio.isdir(path) else
                    "is a directory; expected the cls_labels.npy file")
  try:
    return untrusted.load_npy_dict(path, key_types=(str,), what="cls_labels file",
                                   expected="np.save of a dict id -> float32[F] (F foreground classes)")
  except untrusted.UntrustedFileError as e:
    raise DataError(path, e.problem) from e


def check_label(value, image_id, path, classes=voc_meta.VOC):
  """float32 [F] from a stored label, or a DataError naming the file, id and what is wrong."""
  arr = np.asarray(value)
  if arr.shape != (classes.num_fg,):
    raise DataError(path, f"label of {image_id!r} has shape {arr.shape}; expected a float32 "
                          f"vector of length {classes.num_fg} (the foreground classes of the "
                          f"{classes.describe()}, in order, no background)",
                    kind="label of wrong length")
  arr = arr.astype(np.float32)
  if not np.all((arr == 0) | (arr == 1)):
    raise DataError(path, f"label of {image_id!r} is not multi-hot ({arr.tolist()}); expected "
                          "0/1 entries", kind="label not multi-hot")
  return arr


def save_cls_labels(path, labels, classes=voc_meta.VOC):
  """Writes {id: float32[F]} in the reference format (np.save of a dict)."""
  clean = {str(k): np.asarray(v, np.float32) for k, v in labels.items()}
  for k, v in clean.items():
    check_label(v, k, path, classes)
  # Atomic (a crash leaves the old file or none); to a file object np.save writes exactly the bytes
  # np.save(path) would, and appends no '.npy': the caller's path is kept as given.
  atomic_io.atomic_write(path, lambda f: np.save(f, clean, allow_pickle=True), ".npy")


def _listing(directory, cache):
  """Set of file names in a directory (one listdir per directory instead of a stat per file)."""
  if directory not in cache:
    cache[directory] = set(fileio.listdir(directory)) if fileio.isdir(directory) else set()
  return cache[directory]


def _exists(path, cache):
  return os.path.basename(path) in _listing(os.path.dirname(path), cache)


def _require_dir(path, what):
  if not fileio.isdir(path):
    raise DataError(path, f"{what} directory not found; expected a VOCdevkit/VOC2012 tree "
                          "(JPEGImages/, ImageSets/Segmentation/, ...)")


# ----------------------------------------------------------------------------------------------
# The source


class VOCSource:
  """One split of a VOC tree, validated eagerly: ids, file paths and labels.

  Attributes:
    root: the VOC2012 directory.
    split: the split name (or list path) given.
    list_path: the list file read.
    ids: tuple of image ids, in list order, after any skipping.
    image_paths, mask_paths, saliency_paths: tuples parallel to `ids`. mask_paths say where each
      mask is expected (checked to exist only with need_masks); saliency_paths are None without
      with_saliency.
    classes: the voc_meta.ClassList (F = classes.num_fg foreground classes).
    labels: float32 [N, F] multi-hot.
    labels_origin: where the labels came from (a path, 'xml' or 'masks').
    bad: BadInputLog of everything skipped (eagerly here, and later by the pipelines).
  """

  def __init__(self, voc_root, split, *, with_saliency=False, need_masks=False, mask_dir=None,
               cls_labels=None, labels="auto", saliency_dir=SALIENCY_DIR, skip_bad=False,
               verify="header", max_images=0, classes=None):
    """Reads and checks a split.

    Args:
      voc_root: the VOC2012 directory, or a directory holding `VOCdevkit/VOC2012`.
      split: 'train_aug', 'train', 'val', ... or a path to a list file (see `find_list_file`).
      with_saliency: require `<saliency_dir>/<id>.png` for every id.
      need_masks: require every id's mask (and check its size when verifying).
      mask_dir: mask folder under the root. None: the path named in the list line, else
        SegmentationClassAug for train_aug and SegmentationClass for other splits.
      cls_labels: explicit path of a cls_labels.npy (overrides the search).
      labels: 'auto' (cls_labels.npy, else XML, else masks), 'npy', 'xml', 'masks' or 'none'
        (all-zero labels, for readers that use none: segmentation training and inference).
      saliency_dir: saliency folder under the root.
      skip_bad: drop examples with problems (counted warnings) instead of raising.
      verify: 'none' (existence only), 'header' (open each file: format and size; cheap) or
        'full' (decode everything, check mask values; slow on the full data set).
      max_images: > 0 keeps only the first N ids of the list (quick runs).
      classes: the data set's class list (a ClassList or a `load_classes` spec); None: the data
        directory's classes.txt, else VOC's (`load_classes('', voc_root)`).

    Raises:
      DataError naming the file and what was expected.
    """
    if verify not in ("none", "header", "full"):
      raise ValueError(f"verify must be 'none', 'header' or 'full', got {verify!r}")
    if labels not in ("auto", "npy", "xml", "masks", "none"):
      raise ValueError(f"labels must be 'auto', 'npy', 'xml', 'masks' or 'none', got {labels!r}")
    self.root = resolve_root(voc_root)
    self.classes = load_classes("" if classes is None else classes, self.root)
    self.split = split
    self.skip_bad = skip_bad
    self.bad = BadInputLog(f"VOC {split}")
    _require_dir(self.root, "VOC root")
    _require_dir(os.path.join(self.root, IMAGE_DIR), "image")
    if with_saliency:
      _require_dir(os.path.join(self.root, saliency_dir), "saliency")
    self.list_path, entries = read_split(self.root, split, max_images=max_images,
                                         on_repeat=self._problem)
    num_listed = len(entries) + self.bad.count  # the repeated ids were counted as bad

    default_mask_dir = MASK_AUG_DIR if split in AUG_SPLITS else MASK_DIR
    cache = {}
    kept = []
    for image_id, mask_rel, lineno in entries:
      where = f"{self.list_path}:{lineno} (id {image_id!r})"
      image_path = os.path.join(self.root, IMAGE_DIR, image_id + ".jpg")
      if mask_dir is not None:
        mask_path = os.path.join(self.root, mask_dir, image_id + ".png")
      elif mask_rel is not None:
        mask_path = os.path.join(self.root, mask_rel)
      else:
        mask_path = os.path.join(self.root, default_mask_dir, image_id + ".png")
      sal_path = os.path.join(self.root, saliency_dir, image_id + ".png") if with_saliency else None
      try:
        if not _exists(image_path, cache):
          raise DataError(image_path, f"image listed in {where} not found; expected "
                                      f"{IMAGE_DIR}/{image_id}.jpg", kind="missing image")
        if need_masks and not _exists(mask_path, cache):
          raise DataError(mask_path, f"mask of the image listed in {where} not found",
                          kind="missing mask")
        if sal_path and not _exists(sal_path, cache):
          raise DataError(sal_path, f"saliency map of the image listed in {where} not found; "
                                    f"expected {saliency_dir}/{image_id}.png",
                          kind="missing saliency")
        if verify != "none":
          self._verify_files(image_path, mask_path if need_masks else None, sal_path,
                             full=verify == "full", classes=self.classes)
      except DataError as e:
        self._problem(e)
        continue
      kept.append((image_id, image_path, mask_path, sal_path, lineno))

    self.labels_origin, label_list = self._load_labels(kept, labels, cls_labels)
    final = [k for k, lab in zip(kept, label_list) if lab is not None]
    self.ids = tuple(k[0] for k in final)
    self.image_paths = tuple(k[1] for k in final)
    self.mask_paths = tuple(k[2] for k in final)
    self.saliency_paths = tuple(k[3] for k in final)
    self.labels = (np.stack([lab for lab in label_list if lab is not None]).astype(np.float32)
                   if final else np.zeros((0, self.classes.num_fg), np.float32))
    self.labels.setflags(write=False)
    self.with_saliency = with_saliency
    if not self.ids:
      raise DataError(self.list_path, f"no usable examples in split {split!r} "
                                      f"({self.bad.summary()})")
    if self.bad.count:
      logging.warning("%s; %d of %d listed examples kept", self.bad.summary(), len(self.ids),
                      num_listed)

  @property
  def num_examples(self):
    return len(self.ids)

  def __len__(self):
    return len(self.ids)

  def __repr__(self):
    return (f"VOCSource(root={self.root!r}, split={self.split!r}, n={len(self.ids)}, "
            f"labels={self.labels_origin!r}, saliency={self.with_saliency}, "
            f"classes={self.classes.num_fg} from {self.classes.source!r})")

  # -- helpers ---------------------------------------------------------------------------------

  def _problem(self, error):
    if not self.skip_bad:
      raise error
    self.bad.add(error)

  @staticmethod
  def _verify_files(image_path, mask_path, sal_path, full, classes):
    """Opens (header) or decodes (full) the files of one example; sizes must agree."""
    def size_of(path, what):
      if full:
        img = _open_checked(path, what)
        if what == "mask":
          read_mask(path, classes)
        return img.size
      return read_size(path, what)

    size = size_of(image_path, "image")
    for path, what in ((mask_path, "mask"), (sal_path, "saliency")):
      if path is not None:
        other = size_of(path, what)
        if other != size:
          raise DataError(path, f"{what} is {other[0]}x{other[1]} (WxH); expected the image's "
                                f"{size[0]}x{size[1]} ({image_path})",
                          kind=f"{what} size differs from the image")

  def _load_labels(self, kept, mode, cls_labels_path):
    """(origin, list of float32[F] or None per kept example; None = skipped)."""
    default_npy = os.path.join(self.root, CLS_LABELS_FILE)
    xml_dir = os.path.join(self.root, ANNOTATION_DIR)
    if mode == "auto":
      if cls_labels_path or fileio.isfile(default_npy):
        mode = "npy"
      elif fileio.isdir(xml_dir):
        mode = "xml"
      else:
        mode = "masks"
      logging.info("VOC %s: image labels from %s", self.split,
                   cls_labels_path or default_npy if mode == "npy" else mode)
    if mode == "none":  # readers that need no image-level labels (segmentation)
      return "none", [np.zeros((self.classes.num_fg,), np.float32) for _ in kept]
    out = []
    if mode == "npy":
      path = cls_labels_path or default_npy
      table = load_cls_labels(path)
      for image_id, *_ in kept:
        try:
          if image_id not in table:
            raise DataError(path, f"no label for id {image_id!r}; expected an entry for every id "
                                  f"of {self.list_path} (regenerate with python -m "
                                  "ppc_jax.data.make_cls_labels)", kind="missing label")
          out.append(check_label(table[image_id], image_id, path, self.classes))
        except DataError as e:
          self._problem(e)
          out.append(None)
      return path, out
    for image_id, _, mask_path, _, _ in kept:
      try:
        if mode == "xml":
          out.append(labels_from_xml(os.path.join(xml_dir, image_id + ".xml"), self.classes))
        else:
          out.append(labels_from_mask(read_mask(mask_path, self.classes), self.classes))
      except DataError as e:
        self._problem(e)
        out.append(None)
    return mode, out

  # -- per-example readers (raise DataError naming the file) -------------------------------------

  def image_pil(self, i):
    return read_image_pil(self.image_paths[i])

  def image_size(self, i):
    """(H, W) of image i, from its header (not decoded); DataError naming a bad file."""
    width, height = read_size(self.image_paths[i], "image")
    return height, width

  def image(self, i):
    """uint8 [H, W, 3]."""
    return np.asarray(self.image_pil(i))

  def mask(self, i):
    """uint8 [H, W], values checked against the class list."""
    return read_mask(self.mask_paths[i], self.classes)

  def saliency_pil(self, i):
    if self.saliency_paths[i] is None:
      raise ValueError("this source was built without with_saliency=True")
    return read_saliency_pil(self.saliency_paths[i])


def validate(source, deep=True):
  """Decodes every file of a source (deep) and returns the problems found, without raising.

  Returns:
    list of DataError (empty when everything is readable and consistent).
  """
  problems = []
  for i, image_id in enumerate(source.ids):
    try:
      image = source.image_pil(i)
      if deep and source.mask_paths[i] and fileio.isfile(source.mask_paths[i]):
        mask = source.mask(i)
        if mask.shape != (image.size[1], image.size[0]):
          raise DataError(source.mask_paths[i], f"mask is {mask.shape[::-1]} (WxH); expected the "
                                                f"image's {image.size}")
      if deep and source.saliency_paths[i]:
        source.saliency_pil(i)
    except DataError as e:
      problems.append(e)
  return problems


def main(argv=None):
  """`python -m ppc_jax.data.voc --voc_root R --split S [--saliency]`: checks a split deeply."""
  import argparse
  parser = argparse.ArgumentParser(description=main.__doc__)
  parser.add_argument("--voc_root", required=True)
  parser.add_argument("--split", default="train_aug")
  parser.add_argument("--saliency", action="store_true")
  parser.add_argument("--mask_dir", default=None)
  parser.add_argument("--classes", default="", help="class list spec (see load_classes)")
  args = parser.parse_args(argv)
  source = VOCSource(args.voc_root, args.split, with_saliency=args.saliency, skip_bad=True,
                     mask_dir=args.mask_dir, verify="header", classes=args.classes)
  problems = validate(source, deep=True)
  for p in problems:
    print("BAD", p)
  print(f"{source}: {len(problems) + source.bad.count} problems")
  return 1 if problems or source.bad.count else 0


if __name__ == "__main__":
  raise SystemExit(main())
