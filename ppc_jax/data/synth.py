r"""A synthetic PASCAL-VOC-format data set, so the real loader is what demos and tests exercise.

  python -m ppc_jax.data.synth --out DIR [--num_train_aug 320 --num_train 80 --num_val 80]
      [--classes aeroplane,bird,car,cat,dog,person] [--min_size 96 --max_size 160] [--seed 0]
      [--class_list NAME,NAME,...] [--size_mix voc [--size_scale 1.0]]

writes `DIR/VOCdevkit/VOC2012/` with JPEGImages/*.jpg, SegmentationClass/*.png (train and val,
like VOC's 2,913), SegmentationClassAug/*.png (all ids), SALImages/*.png, Annotations/*.xml,
ImageSets/Segmentation/{train,val,trainval}.txt (plain ids), train_aug.txt (the reference
"/JPEGImages/ID.jpg /SegmentationClassAug/ID.png" format), cls_labels.npy (np.save of a dict
id -> float32[F]) and classes.txt (the set's class list, F foreground names; see
`voc_meta.ClassList`). `train` is a subset of `train_aug` and `val` is disjoint from it, as in VOC.

Class list: VOC's 20 classes by default (masks and labels use real VOC indices), or any list of
names with --class_list / `generate(class_list=...)`, e.g. 5 classes with mask values 0..5: a
non-VOC data set that every tool reads through its classes.txt.

What the images are made to do: a classifier trained on image labels alone should find the
task learnable but produce *partial* CAMs, so seed mIoU means something.
  * Each class (a subset of the class list, its indices in masks and labels) has a body
    shape (ellipse, star, triangle, cross, ring, ...), a body texture that it SHARES with one other
    class, and a "cap" (a part covering ~25-35 % of the body, on a random side) with a texture and
    colour range of its own. Only shape and cap identify the class; the cap is the most
    discriminative region, like a face or a wheel, so CAMs tend to cover it first.
  * Colours are not a shortcut: body colours are drawn from one shared distribution, cap hues
    from overlapping class ranges, and 30 % of caps get a random hue.
  * Scale varies (object radius 18-42 % of the short side), objects overlap (painter's order), some
    leave the frame, textured non-class clutter lies behind and sometimes in front of objects
    (occlusion), and backgrounds are smooth colour fields plus texture and sensor noise.
  * Masks have a void (255) band on object boundaries as VOC does (`void_width`).
  * Saliency maps are imperfect: blurred foreground, per-object confidence, partly missed objects
    and some salient clutter (false positives), like real saliency detectors.

Every image comes from `np.random.default_rng([seed, k])` for its running number k, so a set is
deterministic given the seed, and changing the counts of one split leaves the other images as
they were. Rendering is vectorised numpy inside each object's bounding box: a few hundred
demo-size images take a few seconds.
"""

import argparse
import colorsys
import json
import os
import time
import xml.etree.ElementTree as ET

import numpy as np
import PIL.Image
import PIL.ImageFilter

from ppc_jax import atomic_io
from ppc_jax import fileio
from ppc_jax.data import voc
from ppc_jax.data import voc_meta

DEFAULT_CLASSES = ("aeroplane", "bird", "car", "cat", "dog", "person")
SHAPES = ("ellipse", "star", "triangle", "cross", "ring", "hexagon", "crescent", "diamond", "rect")
BODY_TEXTURES = ("stripes", "checker", "dots", "waves", "rings", "grid")
CAP_TEXTURES = ("zigzag", "hatch", "bullseye", "spots", "chevron", "plaid", "solid", "speckle")
ID_YEAR = 2100  # ids look like VOC's 'YYYY_NNNNNN' without clashing with real ones


def class_specs(classes, class_list=voc_meta.VOC):
  """Appearance of each class, fixed by its rank in `classes` (independent of the seed).

  Args:
    classes: sequence of class names or mask indices (1..F) of `class_list`.
    class_list: the data set's voc_meta.ClassList (default VOC's 20).

  Returns:
    list of dicts: index (mask value), name, shape, body_texture, cap_texture, cap_hue.
  """
  indices = [class_list.index(c) for c in classes]
  if len(set(indices)) != len(indices):
    raise ValueError(f"classes repeat: {list(classes)}")
  if not indices:
    raise ValueError("need at least one class")
  k = len(indices)
  specs = []
  for rank, idx in enumerate(indices):
    specs.append(dict(
        index=idx,
        name=class_list.names[idx],
        shape=SHAPES[rank % len(SHAPES)],
        # Pairs of classes share the body texture: texture alone never tells them apart.
        body_texture=BODY_TEXTURES[(rank // 2) % len(BODY_TEXTURES)],
        cap_texture=CAP_TEXTURES[rank % len(CAP_TEXTURES)],
        cap_hue=rank / k,
    ))
  return specs


# ----------------------------------------------------------------------------------------------
# Vectorised pattern functions on object coordinates (u, v ~ [-1, 1] inside the object).


def _shape(kind, u, v):
  """Boolean inside-mask of a unit-size shape."""
  rho = np.hypot(u, v)
  if kind == "ellipse":
    return rho <= 1.0
  if kind == "rect":
    return np.maximum(np.abs(u), np.abs(v)) <= 0.8
  if kind == "diamond":
    return np.abs(u) + np.abs(v) <= 1.0
  if kind == "cross":
    return (((np.abs(u) <= 0.34) & (np.abs(v) <= 1.0)) |
            ((np.abs(v) <= 0.34) & (np.abs(u) <= 1.0)))
  if kind == "ring":
    return (rho <= 1.0) & (rho >= 0.52)
  if kind == "crescent":
    return (rho <= 1.0) & (np.hypot(u - 0.55, v) >= 0.78)
  if kind == "star":
    phi = np.arctan2(v, u)
    return rho <= 0.55 + 0.42 * np.cos(5.0 * phi)
  if kind in ("triangle", "hexagon"):
    n, reach = (3, 0.55) if kind == "triangle" else (6, 0.88)
    inside = np.ones(u.shape, bool)
    for k in range(n):
      a = 2 * np.pi * k / n + np.pi / 2
      inside &= u * np.cos(a) + v * np.sin(a) <= reach
    return inside
  raise ValueError(kind)


def _texture(kind, u, v, rng):
  """Texture value in [0, 1] (mix weight between two colours); parameters drawn per instance."""
  a = rng.uniform(0, np.pi)
  f = rng.uniform(2.0, 4.0)
  ru, rv = u * np.cos(a) + v * np.sin(a), -u * np.sin(a) + v * np.cos(a)
  if kind == "stripes":
    return 0.5 + 0.5 * np.sin(2 * np.pi * f * ru)
  if kind == "checker":
    return ((np.floor(f * ru) + np.floor(f * rv)) % 2).astype(np.float32)
  if kind == "dots":
    fu, fv = f * ru - np.round(f * ru), f * rv - np.round(f * rv)
    return (np.hypot(fu, fv) < 0.28).astype(np.float32)
  if kind == "waves":
    return 0.5 + 0.5 * np.sin(2 * np.pi * f * ru + 1.6 * np.sin(2 * np.pi * 0.7 * f * rv))
  if kind == "rings":
    return 0.5 + 0.5 * np.sin(2 * np.pi * f * np.hypot(u, v))
  if kind == "grid":
    return (((f * ru) % 1 < 0.2) | ((f * rv) % 1 < 0.2)).astype(np.float32)
  # Cap textures: higher frequency, each used by one class only.
  f2 = f * 1.8
  if kind == "zigzag":
    return (np.sin(2 * np.pi * f2 * (rv + 0.35 * np.abs((f2 * ru) % 1 - 0.5))) > 0).astype(
        np.float32)
  if kind == "hatch":
    return ((((f2 * (ru + rv)) % 1) < 0.25) | (((f2 * (ru - rv)) % 1) < 0.25)).astype(np.float32)
  if kind == "bullseye":
    return (np.sin(2 * np.pi * 2 * f2 * np.hypot(u, v)) > 0).astype(np.float32)
  if kind == "spots":
    return (np.sin(2 * np.pi * f2 * ru) * np.sin(2 * np.pi * 1.3 * f2 * rv) > 0.45).astype(
        np.float32)
  if kind == "chevron":
    return (((f2 * (rv + np.abs(ru))) % 1) < 0.5).astype(np.float32)
  if kind == "plaid":
    return 0.5 * (np.sin(2 * np.pi * f2 * ru) > 0.3) + 0.5 * (np.sin(2 * np.pi * f2 * rv) > 0.3)
  if kind == "solid":
    return np.zeros(u.shape, np.float32)
  if kind == "speckle":
    return (rng.random(u.shape) < 0.35).astype(np.float32)
  raise ValueError(kind)


def _hsv(h, s, v):
  return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32) * 255.0


def _random_colour(rng, hue=None, spread=0.5):
  h = rng.uniform(0, 1) if hue is None else hue + rng.uniform(-spread, spread)
  return _hsv(h, rng.uniform(0.25, 0.95), rng.uniform(0.3, 1.0))


def _smooth_field(rng, height, width, grid, channels=3):
  """float32 [H, W, C] in [0, 1]: a coarse random grid upsampled bicubically (PIL)."""
  gh, gw = grid
  coarse = (rng.random((gh, gw, channels)) * 255).astype(np.uint8)
  mode = "RGB" if channels == 3 else "L"
  img = PIL.Image.fromarray(coarse if channels == 3 else coarse[..., 0], mode)
  up = np.asarray(img.resize((width, height), PIL.Image.BICUBIC), np.float32) / 255.0
  return up if channels == 3 else up[..., None]


# ----------------------------------------------------------------------------------------------
# Scene rendering


def _paint(canvas, region, colour_a, colour_b, weight, shade):
  """Writes colour mix a*(1-w) + b*w, times shading, into canvas[region] (views, in place)."""
  mix = colour_a[None, :] * (1.0 - weight[:, None]) + colour_b[None, :] * weight[:, None]
  canvas[region] = mix * shade[:, None]


def _object_frame(height, width, cx, cy, radius, aspect, angle, pad=1.05):
  """Bounding box slices and (u, v) object coordinates for a rotated, stretched unit shape."""
  reach = radius * max(aspect, 1.0 / aspect) * pad
  y0, y1 = int(max(0, np.floor(cy - reach))), int(min(height, np.ceil(cy + reach) + 1))
  x0, x1 = int(max(0, np.floor(cx - reach))), int(min(width, np.ceil(cx + reach) + 1))
  if y0 >= y1 or x0 >= x1:
    return None
  ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
  dx, dy = xs + 0.5 - cx, ys + 0.5 - cy
  c, s = np.cos(angle), np.sin(angle)
  u = (dx * c + dy * s) / (radius * aspect)
  v = (-dx * s + dy * c) / (radius / aspect)
  return (slice(y0, y1), slice(x0, x1)), u, v


def _draw_clutter(rng, image, height, width, sal_fp, salient_prob):
  """One non-class distractor (line, small box or blob) with a plain colour or a body texture."""
  kind = rng.choice(["line", "box", "blob"])
  short = min(height, width)
  cx, cy = rng.uniform(0, width), rng.uniform(0, height)
  angle = rng.uniform(0, np.pi)
  if kind == "line":
    radius, aspect = rng.uniform(0.15, 0.5) * short, rng.uniform(6, 14)
    shape = "rect"
  elif kind == "box":
    radius, aspect, shape = rng.uniform(0.05, 0.14) * short, rng.uniform(0.6, 1.6), "rect"
  else:
    radius, aspect, shape = rng.uniform(0.05, 0.13) * short, rng.uniform(0.6, 1.6), "ellipse"
  frame = _object_frame(height, width, cx, cy, radius / np.sqrt(aspect) if kind == "line" else
                        radius, aspect, angle)
  if frame is None:
    return
  box, u, v = frame
  inside = _shape(shape, u, v)
  if not inside.any():
    return
  if kind != "blob" and rng.random() < 0.5:
    # Body textures also appear on clutter, so texture is not a class cue; blobs stay plain so
    # they never pass for a small textured ellipse-class object.
    weight = _texture(rng.choice(BODY_TEXTURES), u * 2, v * 2, rng)[inside]
  else:
    weight = np.zeros(int(inside.sum()), np.float32)
  sub = image[box]
  _paint(sub, inside, _random_colour(rng), _random_colour(rng), weight,
         np.ones(weight.shape, np.float32))
  if rng.random() < salient_prob:
    sal_fp[box][inside] = np.maximum(sal_fp[box][inside], rng.uniform(0.3, 0.8))


def render_scene(rng, height, width, specs, *, max_objects=3, void_width=1, min_visible=0.2,
                 max_attempts=20, clutter=1.0, class_colours=False, object_scale=(0.18, 0.42)):
  """Renders one image with its mask, saliency and objects.

  Args:
    rng: np.random.Generator (the only randomness used).
    height, width: image size.
    specs: `class_specs(...)` output.
    max_objects: objects per image are 1..max_objects (classes may repeat).
    void_width: width in pixels of the 255 band on each side of object boundaries (0 = none).
    min_visible: each object keeps at least this fraction of its area visible (else redrawn),
      so every object in the image is also in its labels.
    max_attempts: scene redraws before accepting the last one.
    clutter: scales the number of distractors (1 = default, 0 = none).
    class_colours: body colours drawn around a class-specific hue (an easier set, where colour
      statistics also tell classes apart: what a small from-scratch model learns in minutes).
    object_scale: (min, max) object radius as a fraction of the short side; larger objects give
      a from-scratch model more pixels of each class per image (an easier set).

  Returns:
    dict: image uint8 [H, W, 3], mask uint8 [H, W], saliency uint8 [H, W],
    objects: list of dict(index, name, bbox=(xmin, ymin, xmax, ymax) 1-based inclusive,
    truncated) for every object with visible pixels.
  """
  short = min(height, width)
  for _ in range(max_attempts):
    # Background: smooth colour field + a low-contrast texture + coarse mottling.
    base = _smooth_field(rng, height, width, rng.integers(2, 6, size=2))
    tint = _random_colour(rng) / 255.0
    image = (0.55 * base + 0.45 * tint[None, None, :]) * 255.0
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    tex = _texture(rng.choice(("stripes", "waves", "rings", "grid")), xs / short * 2,
                   ys / short * 2, rng)
    image *= (0.85 + 0.15 * tex)[..., None]
    image *= 0.8 + 0.4 * _smooth_field(rng, height, width, (8, 8), channels=1)
    sal_fp = np.zeros((height, width), np.float32)
    inst = np.zeros((height, width), np.int32)
    for _ in range(int(round(rng.integers(3, 9) * clutter))):
      _draw_clutter(rng, image, height, width, sal_fp, salient_prob=0.25)

    objects = []
    for n in range(1, rng.integers(1, max_objects + 1) + 1):
      spec = specs[rng.integers(len(specs))]
      radius = rng.uniform(*object_scale) * short
      aspect = np.exp(rng.uniform(-0.3, 0.3))
      cx, cy = rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height
      frame = _object_frame(height, width, cx, cy, radius, aspect, rng.uniform(0, 2 * np.pi))
      if frame is None:
        continue
      box, u, v = frame
      inside = _shape(spec["shape"], u, v)
      full_area = int(inside.sum())
      if full_area == 0:
        continue
      # Body: a shared texture with colours from the shared distribution.
      weight = _texture(spec["body_texture"], u, v, rng)
      light = rng.uniform(0, 2 * np.pi)
      shade = np.clip(1.0 + 0.18 * (u * np.cos(light) + v * np.sin(light)), 0.6, 1.3)
      sub = image[box]
      if class_colours:  # around the hue opposite the cap's, so body and cap stay distinct
        body_hue = spec["cap_hue"] + 0.5
        body = (_random_colour(rng, body_hue, 0.06), _random_colour(rng, body_hue, 0.06))
      else:
        body = (_random_colour(rng), _random_colour(rng))
      _paint(sub, inside, body[0], body[1], weight[inside], shade[inside])
      # Cap: the class's own texture and hue range, on a random side of the body.
      side = rng.uniform(0, 2 * np.pi)
      cap = inside & (u * np.cos(side) + v * np.sin(side) > rng.uniform(0.25, 0.45))
      if cap.any():
        cap_hue = None if rng.random() < 0.3 else spec["cap_hue"]
        cap_weight = _texture(spec["cap_texture"], u, v, rng)
        _paint(sub, cap, _random_colour(rng, cap_hue, 0.12), _random_colour(rng),
               cap_weight[cap], shade[cap])
      inst[box][inside] = n
      objects.append(dict(n=n, spec=spec, full_area=full_area,
                          truncated=bool(cx - radius < 0 or cy - radius < 0 or
                                         cx + radius > width or cy + radius > height)))
    # Clutter in front of objects: occlusion by things that are not a class.
    for _ in range(int(round(rng.integers(0, 3) * clutter))):
      before = image.copy()
      _draw_clutter(rng, image, height, width, sal_fp, salient_prob=0.0)
      covered = np.any(image != before, axis=-1)
      inst[covered] = 0

    class_of = np.zeros(max_objects + 1, np.uint8)  # instance number -> VOC class (0 = none)
    for o in objects:
      class_of[o["n"]] = o["spec"]["index"]
    mask = class_of[inst]
    if void_width > 0:
      edge = np.zeros((height, width), bool)
      edge[1:, :] |= inst[1:, :] != inst[:-1, :]
      edge[:-1, :] |= inst[1:, :] != inst[:-1, :]
      edge[:, 1:] |= inst[:, 1:] != inst[:, :-1]
      edge[:, :-1] |= inst[:, 1:] != inst[:, :-1]
      for _ in range(void_width - 1):
        grown = edge.copy()
        grown[1:, :] |= edge[:-1, :]
        grown[:-1, :] |= edge[1:, :]
        grown[:, 1:] |= edge[:, :-1]
        grown[:, :-1] |= edge[:, 1:]
        edge = grown
      mask = np.where(edge, np.uint8(voc_meta.IGNORE_LABEL), mask)
    visible = [o for o in objects
               if np.count_nonzero((inst == o["n"]) & (mask != voc_meta.IGNORE_LABEL)) > 0]
    ok = bool(visible) and all(
        np.count_nonzero(inst == o["n"]) >= min_visible * o["full_area"] for o in objects)
    if ok:
      break

  # Photometric: soften edges (like optics), then global gain and sensor noise.
  img8 = PIL.Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
  img8 = img8.filter(PIL.ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))
  out = np.asarray(img8, np.float32) * rng.uniform(0.85, 1.15)
  out += rng.normal(0.0, rng.uniform(2.0, 6.0), out.shape)
  image_u8 = np.clip(np.round(out), 0, 255).astype(np.uint8)

  # Saliency: blurred foreground with per-object confidence, partly missed objects, false positives.
  sal = np.zeros((height, width), np.float32)
  for o in objects:
    conf = rng.uniform(0.6, 1.0)
    region = inst == o["n"]
    if rng.random() < 0.3:  # a detector missing part of the object
      a = rng.uniform(0, 2 * np.pi)
      ys, xs = np.nonzero(region)
      if len(xs):
        proj = (xs - xs.mean()) * np.cos(a) + (ys - ys.mean()) * np.sin(a)
        keep = proj < np.quantile(proj, rng.uniform(0.5, 0.8))
        region = np.zeros_like(region)
        region[ys[keep], xs[keep]] = True
    sal[region] = conf
  sal = np.maximum(sal, sal_fp)
  sal_img = PIL.Image.fromarray(np.clip(sal * 255, 0, 255).astype(np.uint8), "L")
  sal_img = sal_img.filter(PIL.ImageFilter.GaussianBlur(max(1.0, short / 80)))
  sal_u8 = np.asarray(sal_img, np.float32) + rng.normal(0, 3.0, (height, width))
  sal_u8 = np.clip(np.round(sal_u8), 0, 255).astype(np.uint8)

  described = []
  for o in objects:
    ys, xs = np.nonzero((inst == o["n"]) & (mask != voc_meta.IGNORE_LABEL))
    if len(xs) == 0:
      continue
    described.append(dict(index=o["spec"]["index"], name=o["spec"]["name"],
                          bbox=(int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1,
                                int(ys.max()) + 1),
                          truncated=o["truncated"]))
  return dict(image=image_u8, mask=mask, saliency=sal_u8, objects=described)


def _image_size(rng, min_size, max_size, aspect_range):
  """(height, width): long side in [min_size, max_size], short/long in aspect_range, 70 % landscape
  (VOC's typical 500x375 / 375x500 mix)."""
  long_side = int(rng.integers(min_size, max_size + 1))
  short_side = max(8, int(round(long_side * rng.uniform(*aspect_range))))
  return (short_side, long_side) if rng.random() < 0.7 else (long_side, short_side)


def _write_xml(path, image_id, height, width, objects):
  root = ET.Element("annotation")
  ET.SubElement(root, "folder").text = "VOC2012"
  ET.SubElement(root, "filename").text = image_id + ".jpg"
  size = ET.SubElement(root, "size")
  for tag, val in (("width", width), ("height", height), ("depth", 3)):
    ET.SubElement(size, tag).text = str(val)
  ET.SubElement(root, "segmented").text = "1"
  for o in objects:
    obj = ET.SubElement(root, "object")
    ET.SubElement(obj, "name").text = o["name"]
    ET.SubElement(obj, "pose").text = "Unspecified"
    ET.SubElement(obj, "truncated").text = str(int(o["truncated"]))
    ET.SubElement(obj, "difficult").text = "0"
    bb = ET.SubElement(obj, "bndbox")
    for tag, val in zip(("xmin", "ymin", "xmax", "ymax"), o["bbox"]):
      ET.SubElement(bb, tag).text = str(val)
  atomic_io.atomic_write(path, lambda f: ET.ElementTree(root).write(f, encoding="utf-8"))


def _save_palette_png(path, mask):
  img = PIL.Image.fromarray(mask, "P")
  img.putpalette(voc_meta.palette_bytes())
  # Level 1: speed matters more than bytes.
  atomic_io.save_image(path, img, optimize=False, compress_level=1)


# Image size draws: 'range' (the long side uniform in [min_size, max_size]) or 'voc' (VOC 2012's
# shape: half 375x500, a quarter 500x375, a quarter a long tail of other sizes; `voc_like_size`).
SIZE_MIXES = ("range", "voc")


def voc_like_size(rng, size_scale=1.0):
  """(height, width) drawn as VOC 2012's: half 375x500, a quarter 500x375, and a quarter from a
  long tail (the long side 500 four times in five, else 200..499; the short side 150..long), so
  most tail images have a size of their own, as in VOC. Sides are scaled by `size_scale`
  (rounded, at least 8)."""
  u = rng.random()
  if u < 0.5:
    h, w = 375, 500
  elif u < 0.75:
    h, w = 500, 375
  else:
    long_side = 500 if rng.random() < 0.8 else int(rng.integers(200, 500))
    short_side = int(rng.integers(150, long_side + 1))
    h, w = (short_side, long_side) if rng.random() < 0.7 else (long_side, short_side)
  return tuple(max(8, int(round(x * size_scale))) for x in (h, w))


def generate(out_dir, *, num_train_aug=320, num_train=80, num_val=80, classes=None,
             class_list=None, min_size=96, max_size=160, aspect_range=(0.6, 1.0),
             size_mix="range", size_scale=1.0, max_objects=3,
             seed=0, saliency=True, xml=True, void_width=1, jpeg_quality=90, clutter=1.0,
             class_colours=False, object_scale=(0.18, 0.42), verbose=False, voc_root=None):
  """Writes a synthetic VOCdevkit tree and returns its VOC2012 root.

  This writes whatever directory it is given; `generate_owned` is the guarded form that never
  writes into a directory it did not make itself.

  Args:
    out_dir: the tree goes to `<out_dir>/VOCdevkit/VOC2012` (created; files of the same names
      are replaced; extra files of an earlier, larger set stay but are in no list).
    num_train_aug: images in train_aug (the training split).
    num_train: the first `num_train` of them also form `train` (seed evaluation split).
    num_val: further images forming `val` (disjoint from train_aug).
    classes: names or indices (1..F) of the classes that appear; default: DEFAULT_CLASSES (6 of
      VOC's 20) with the VOC list, every class of any other list.
    class_list: the set's class list: None = VOC's 20, or a sequence of foreground names (mask
      values 1, 2, ... in order), or a voc_meta.ClassList. Written to `<root>/classes.txt`.
    min_size, max_size: range of the long side in pixels.
    aspect_range: range of short/long side ratio.
    size_mix: 'range' (min_size, max_size, aspect_range) or 'voc' (`voc_like_size`, scaled by
      size_scale; min_size / max_size / aspect_range unused).
    max_objects: objects per image are 1..max_objects.
    seed: the set is a deterministic function of the seed (and of each image's number).
    saliency: write SALImages/*.png.
    xml: write Annotations/*.xml.
    void_width: the void band on boundaries (see `render_scene`).
    clutter, class_colours, object_scale: difficulty knobs (see `render_scene`); the defaults give
      the hard set.
    jpeg_quality: JPEG quality of the images.
    verbose: print progress.
    voc_root: write the VOC2012 tree here instead of `<out_dir>/VOCdevkit/VOC2012`.

  Returns:
    str path of the VOC2012 directory.
  """
  if not 0 <= num_train <= num_train_aug:
    raise ValueError(f"num_train={num_train} must be in 0..num_train_aug={num_train_aug}")
  if min_size > max_size or min_size < 8:
    raise ValueError(f"need 8 <= min_size <= max_size, got {min_size}, {max_size}")
  if size_mix not in SIZE_MIXES:
    raise ValueError(f"size_mix={size_mix!r}: expected one of {SIZE_MIXES}")
  if class_list is None:
    class_list = voc_meta.VOC
  elif not isinstance(class_list, voc_meta.ClassList):
    class_list = voc_meta.ClassList.from_foreground(class_list, "synth.generate(class_list=...)")
  if classes is None:
    classes = DEFAULT_CLASSES if class_list.names == voc_meta.VOC.names else class_list.fg_names
  specs = class_specs(classes, class_list)
  root = os.path.join(out_dir, "VOCdevkit", "VOC2012") if voc_root is None else voc_root
  dirs = [voc.IMAGE_DIR, voc.MASK_DIR, voc.MASK_AUG_DIR, "ImageSets/Segmentation"]
  dirs += [voc.SALIENCY_DIR] if saliency else []
  dirs += [voc.ANNOTATION_DIR] if xml else []
  for d in dirs:
    fileio.makedirs(os.path.join(root, d))

  total = num_train_aug + num_val
  ids = [f"{ID_YEAR}_{k:06d}" for k in range(total)]
  train_aug, val = ids[:num_train_aug], ids[num_train_aug:]
  train = train_aug[:num_train]
  with_voc_mask = set(train) | set(val)  # VOC's SegmentationClass covers train + val only
  labels = {}
  t0 = time.perf_counter()
  for k, image_id in enumerate(ids):
    rng = np.random.default_rng([seed, k])
    if size_mix == "voc":
      height, width = voc_like_size(rng, size_scale)
    else:
      height, width = _image_size(rng, min_size, max_size, aspect_range)
    scene = render_scene(rng, height, width, specs, max_objects=max_objects, clutter=clutter,
                         class_colours=class_colours, object_scale=tuple(object_scale),
                         void_width=void_width)
    atomic_io.save_image(os.path.join(root, voc.IMAGE_DIR, image_id + ".jpg"),
                         PIL.Image.fromarray(scene["image"]), quality=jpeg_quality)
    _save_palette_png(os.path.join(root, voc.MASK_AUG_DIR, image_id + ".png"), scene["mask"])
    if image_id in with_voc_mask:
      _save_palette_png(os.path.join(root, voc.MASK_DIR, image_id + ".png"), scene["mask"])
    if saliency:
      atomic_io.save_image(os.path.join(root, voc.SALIENCY_DIR, image_id + ".png"),
                           PIL.Image.fromarray(scene["saliency"], "L"), compress_level=1)
    if xml:
      _write_xml(os.path.join(root, voc.ANNOTATION_DIR, image_id + ".xml"), image_id, height,
                 width, scene["objects"])
    labels[image_id] = voc.labels_from_mask(scene["mask"], class_list)
    if verbose and (k + 1) % 100 == 0:
      print(f"  {k + 1}/{total} images ({time.perf_counter() - t0:.1f} s)")

  list_dir = os.path.join(root, "ImageSets", "Segmentation")
  for name, split_ids in (("train", train), ("val", val), ("trainval", train + val)):
    atomic_io.write_text(os.path.join(list_dir, name + ".txt"),
                         "".join(i + "\n" for i in split_ids))
  atomic_io.write_text(os.path.join(list_dir, "train_aug.txt"), "".join(
      f"/{voc.IMAGE_DIR}/{i}.jpg /{voc.MASK_AUG_DIR}/{i}.png\n" for i in train_aug))
  voc.save_cls_labels(os.path.join(root, voc.CLS_LABELS_FILE), labels, class_list)
  # Every tool reads the class list from here (voc.load_classes), also for VOC's: a file left
  # over from an earlier set of another class list is never read with this one.
  voc_meta.write_classes_file(os.path.join(root, voc.CLASSES_FILE), class_list)
  return root


# In the VOC2012 root of a set made by `generate_owned`: {"complete": bool, "settings": {...}}.
OWNER_FILE = ".ppc_jax_synthetic.json"


def is_generated_here(voc_root):
  """Whether `voc_root` holds a synthetic set `generate_owned` made (complete or not)."""
  return fileio.exists(os.path.join(voc_root, OWNER_FILE))


def generate_owned(voc_root, settings):
  """Makes the synthetic set at `voc_root` unless it is there already; never touches other data.

  Writes only into a directory that is absent, empty, or marked by `OWNER_FILE` as made here
  (the marker is written before the first image, so an interrupted generation is redone).

  Args:
    voc_root: the VOC2012 directory of the set.
    settings: `generate`'s keyword arguments (e.g. `config.synth.to_dict()`).

  Returns:
    'generated' or 'kept' (a complete set of the same settings was there).

  Raises:
    FileExistsError: `voc_root` holds files and no marker: it is someone's data, left as it is.
  """
  settings = json.loads(json.dumps(settings))  # tuples -> lists, as the marker stores them
  owner = os.path.join(voc_root, OWNER_FILE)
  if fileio.exists(owner):
    with fileio.open(owner) as f:
      try:
        marked = json.load(f)
      except ValueError:
        marked = {}
    if marked.get("complete") and marked.get("settings") == settings:
      return "kept"
  elif fileio.isdir(voc_root) and fileio.listdir(voc_root):
    raise FileExistsError(
        f"{voc_root}: exists and holds files, but no {OWNER_FILE}: it is not a synthetic set "
        "this project made, so nothing is generated there (a data set is only ever read)")
  fileio.makedirs(voc_root)
  atomic_io.write_json(owner, {"complete": False, "settings": settings})
  generate(None, voc_root=voc_root, **settings)
  atomic_io.write_json(owner, {"complete": True, "settings": settings})
  return "generated"


def main(argv=None):
  parser = argparse.ArgumentParser(
      description="Write a synthetic VOCdevkit/VOC2012 tree (see the module docstring).")
  parser.add_argument("--out", required=True, help="output directory (VOCdevkit/VOC2012 inside)")
  parser.add_argument("--num_train_aug", type=int, default=320)
  parser.add_argument("--num_train", type=int, default=80)
  parser.add_argument("--num_val", type=int, default=80)
  parser.add_argument("--class_list", default="",
                      help="comma-separated foreground names of the set's class list (mask "
                           "values 1, 2, ...); default VOC's 20. Written to classes.txt")
  parser.add_argument("--classes", default="",
                      help="comma-separated names or indices of the classes that appear "
                           f"(default: {','.join(DEFAULT_CLASSES)} for VOC, else all)")
  parser.add_argument("--num_classes", type=int, default=0,
                      help="> 0: use the first N classes of the list instead of --classes")
  parser.add_argument("--min_size", type=int, default=96)
  parser.add_argument("--max_size", type=int, default=160)
  parser.add_argument("--aspect", type=float, nargs=2, default=(0.6, 1.0),
                      metavar=("MIN", "MAX"), help="short/long side ratio range")
  parser.add_argument("--size_mix", choices=SIZE_MIXES, default="range",
                      help="image sizes: 'range' (--min_size/--max_size/--aspect) or 'voc' "
                           "(VOC 2012's mix of 375x500, 500x375 and a long tail)")
  parser.add_argument("--size_scale", type=float, default=1.0,
                      help="with --size_mix=voc: scale every side by this")
  parser.add_argument("--max_objects", type=int, default=3)
  parser.add_argument("--void_width", type=int, default=1)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--no_saliency", action="store_true")
  parser.add_argument("--no_xml", action="store_true")
  parser.add_argument("--clutter", type=float, default=1.0, help="distractor amount (0 = none)")
  parser.add_argument("--class_colours", action="store_true",
                      help="class-specific body colours (an easier set)")
  parser.add_argument("--object_scale", type=float, nargs=2, default=(0.18, 0.42),
                      metavar=("MIN", "MAX"), help="object radius range, fraction of the short side")
  args = parser.parse_args(argv)
  class_list = voc_meta.VOC
  if args.class_list.strip():
    class_list = voc_meta.ClassList.from_foreground(
        [c.strip() for c in args.class_list.split(",") if c.strip()], "--class_list")
  if args.num_classes > 0:
    classes = class_list.fg_names[:args.num_classes]
  else:
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] or None
  t0 = time.perf_counter()
  root = generate(args.out, num_train_aug=args.num_train_aug, num_train=args.num_train,
                  num_val=args.num_val, classes=classes, class_list=class_list,
                  min_size=args.min_size,
                  max_size=args.max_size, aspect_range=tuple(args.aspect),
                  size_mix=args.size_mix, size_scale=args.size_scale,
                  max_objects=args.max_objects, seed=args.seed, saliency=not args.no_saliency,
                  xml=not args.no_xml, void_width=args.void_width, clutter=args.clutter,
                  class_colours=args.class_colours, object_scale=tuple(args.object_scale),
                  verbose=True)
  n = args.num_train_aug + args.num_val
  print(f"wrote {n} images to {root} in {time.perf_counter() - t0:.1f} s")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
