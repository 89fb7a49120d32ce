"""PASCAL VOC 2012 constants in one place: class names, CAT_LIST order, palette, ImageNet stats.

Index conventions (as in the reference code and `cls_labels.npy`):
  * segmentation masks and 21-channel CAMs: 0 = background, 1..20 = `CAT_LIST`, 255 = void/ignore;
  * image-level label vectors: 20 entries in `CAT_LIST` order (no background), so mask value c
    is label entry c - 1.
"""

import numpy as np

CAT_LIST = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
CLASS_NAMES = ("background",) + CAT_LIST   # index = mask value
NUM_CLASSES = len(CLASS_NAMES)             # 21, background included
NUM_FG_CLASSES = len(CAT_LIST)             # 20, the length of a label vector
IGNORE_LABEL = 255
CAT_NAME_TO_NUM = {name: i for i, name in enumerate(CAT_LIST)}  # label-vector index

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


def class_index(name_or_index):
  """VOC mask index (1..20) of a foreground class given its name or index."""
  if isinstance(name_or_index, (int, np.integer)):
    idx = int(name_or_index)
    if not 1 <= idx <= NUM_FG_CLASSES:
      raise ValueError(f"VOC foreground class index must be in 1..20, got {idx}")
    return idx
  name = str(name_or_index).strip()
  if name.isdigit():
    return class_index(int(name))
  if name not in CAT_NAME_TO_NUM:
    raise ValueError(f"unknown VOC class {name!r}; expected one of {', '.join(CAT_LIST)}")
  return CAT_NAME_TO_NUM[name] + 1
