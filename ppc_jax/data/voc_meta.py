"""Class lists (VOC's by default), palette and ImageNet statistics in one place.

Index conventions (as in the reference code and `cls_labels.npy`), for any class list with F
foreground classes (VOC: F = 20, `CAT_LIST`):
  * segmentation masks and (F + 1)-channel CAMs: 0 = background, 1..F = the foreground classes in
    list order, 255 = void/ignore;
  * image-level label vectors: F entries in list order (no background), so mask value c is label
    entry c - 1; cam_dict keys are label indices 0..F-1.

A data set's class list is a `ClassList`: VOC's 20 classes (`VOC`) unless the data directory
holds a `classes.txt` (one foreground name per line, in mask-value order) or the config names the
classes (`config.input.classes`); `ppc_jax.data.voc.load_classes` is the one function that decides.
"""

import dataclasses
import os

import numpy as np

from ppc_jax import atomic_io
from ppc_jax import fileio

CAT_LIST = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
CLASS_NAMES = ("background",) + CAT_LIST   # index = mask value; counts etc.: `VOC` below
IGNORE_LABEL = 255

# ImageNet statistics of the reference `Normalize` (x / 255 - mean) / std, RGB order.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Official colour of the void label 255 in VOC's palette PNGs.
VOID_COLOR = (224, 224, 192)


def _voc_palette():
  """The 256-entry VOC colour map: bits 0/1/2 of the index go to the top bits of R/G/B, bits 3/4/5
  to the next bit down, and so on (the devkit's `labelcolormap`)."""
  palette = np.zeros((256, 3), np.uint8)
  for index in range(256):
    c, r, g, b = index, 0, 0, 0
    for shift in range(7, -1, -1):
      r |= (c & 1) << shift
      g |= ((c >> 1) & 1) << shift
      b |= ((c >> 2) & 1) << shift
      c >>= 3
    palette[index] = (r, g, b)
  return palette


PALETTE = _voc_palette()
"""np.uint8 [256, 3]; PALETTE[255] == VOID_COLOR, PALETTE[1] == (128, 0, 0)."""
PALETTE.setflags(write=False)


def palette_bytes():
  """The palette as the flat 768-byte list `PIL.Image.putpalette` takes."""
  return PALETTE.reshape(-1).tolist()


def colorize(mask):
  """uint8 [H, W] class-index mask -> uint8 [H, W, 3] RGB with VOC colours (255 -> void colour)."""
  return PALETTE[np.asarray(mask, np.uint8)]


def normalize(image_uint8):
  """Reference `Normalize`: RGB uint8 [..., 3] -> float32 [..., 3] ImageNet-normalised.

  Computed in float64 and rounded once to float32, like the reference (`uint8 / 255.` is float64
  in numpy), so results equal it bit for bit.
  """
  x = np.asarray(image_uint8, np.float64) / 255.0
  return ((x - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)).astype(np.float32)


def denormalize(images):
  """Inverse of `normalize` for display: float [..., 3] -> uint8 [..., 3] (clipped, rounded)."""
  x = np.asarray(images, np.float32) * np.asarray(IMAGENET_STD, np.float32)
  x = x + np.asarray(IMAGENET_MEAN, np.float32)
  return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# Class lists.
# ------------------------------------------------------------------------------------------------

CLASSES_FILE = "classes.txt"  # in a data directory: one foreground class name per line
BACKGROUND = "background"
# Masks are uint8 and 255 is void, so mask values 0..254 leave room for 254 foreground classes.
MAX_FG_CLASSES = IGNORE_LABEL - 1


@dataclasses.dataclass(frozen=True)
class ClassList:
  """The classes of a data set: names (index 0 = background), counts, palette.

  Attributes:
    names: tuple of all class names, index = mask value; names[0] == 'background'.
    source: where the list came from (a file path, 'config.input.classes' or 'VOC'), for errors.
  """
  names: tuple
  source: str = "VOC"

  def __post_init__(self):
    names = tuple(self.names)
    object.__setattr__(self, "names", names)
    where = f"class list from {self.source}"
    if not names or names[0] != BACKGROUND:
      raise ValueError(f"{where}: names must start with {BACKGROUND!r}, got {names[:3]}")
    fg = names[1:]
    if not 1 <= len(fg) <= MAX_FG_CLASSES:
      raise ValueError(f"{where}: needs 1..{MAX_FG_CLASSES} foreground classes (mask values "
                       f"1..{MAX_FG_CLASSES}; 255 is void), got {len(fg)}")
    for name in fg:
      if not isinstance(name, str) or not name or name != name.strip() or "," in name:
        raise ValueError(f"{where}: class name {name!r} must be a non-empty string without "
                         "surrounding spaces or commas")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
      raise ValueError(f"{where}: class names repeat: {repeated} ({BACKGROUND!r} is implicit "
                       "at index 0 and must not be listed)")

  @classmethod
  def from_foreground(cls, fg_names, source):
    """A class list from its foreground names (mask values 1..F in this order)."""
    return cls((BACKGROUND,) + tuple(fg_names), source)

  @property
  def num_classes(self):
    """Classes including background: CAM channels, confusion-matrix size, model.num_classes."""
    return len(self.names)

  @property
  def num_fg(self):
    """Foreground classes: the length of a label vector; mask values are 0..num_fg (and 255)."""
    return len(self.names) - 1

  @property
  def fg_names(self):
    return self.names[1:]

  @property
  def ignore_label(self):
    return IGNORE_LABEL

  @property
  def palette(self):
    """uint8 [256, 3]: the VOC colour map, defined for every index (so for any class count)."""
    return PALETTE

  def describe(self):
    """'6 classes (background + 5 from <source>)', for messages."""
    return f"{self.num_classes} classes (background + {self.num_fg} from {self.source})"

  def index(self, name_or_index):
    """Mask value (1..num_fg) of a foreground class given its name or mask value."""
    if isinstance(name_or_index, (int, np.integer)):
      idx = int(name_or_index)
      if not 1 <= idx <= self.num_fg:
        raise ValueError(f"foreground class index must be in 1..{self.num_fg} ({self.source}), "
                         f"got {idx}")
      return idx
    name = str(name_or_index).strip()
    if name.isdigit():
      return self.index(int(name))
    if name not in self.fg_names:
      raise ValueError(f"unknown class {name!r}; expected one of {', '.join(self.fg_names)} "
                       f"({self.source})")
    return self.fg_names.index(name) + 1


VOC = ClassList(CLASS_NAMES, "VOC")
"""The default class list: VOC's 20 classes in CAT_LIST order."""


def read_classes_file(path):
  """A ClassList from a classes file: one foreground name per line, in mask-value order.

  Blank lines and lines starting with '#' are skipped; 'background' is implicit (mask value 0).

  Raises:
    ValueError naming the file: unreadable, no classes, a repeated or malformed name.
  """
  path = os.fspath(path)
  try:
    with fileio.open(path) as f:
      lines = [line.strip() for line in f]
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: cannot read the classes file ({e}); expected one foreground "
                     "class name per line") from e
  names = [line for line in lines if line and not line.startswith("#")]
  if not names:
    raise ValueError(f"{path}: the classes file lists no class; expected one foreground class "
                     "name per line")
  return ClassList.from_foreground(names, path)


def write_classes_file(path, classes):
  """Writes a ClassList's foreground names, one per line (what `read_classes_file` reads)."""
  atomic_io.write_text(
      path, "# Foreground classes in mask-value order (1, 2, ...); 0 = background, 255 = void.\n"
      + "".join(name + "\n" for name in classes.fg_names))
