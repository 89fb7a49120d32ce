"""Pixel-pair geometry and AffinityNet training labels (numpy, host side).

The reference (PSA `tool/pyutils.get_indices_of_pairs`, `voc12/data.ExtractAffinityLabelInRadius`
and `VOC12AffDataset`; identical in SEAM and wseg) compares every pixel of the stride-8 feature
map with the pixels at a fixed set of "half-plane" offsets (dy, dx) inside a radius
(METHOD.md 11.8):

* offsets: (0, 1) .. (0, r-1), then for dy = 1 .. r-1 and dx = -(r-1) .. r-1 every (dy, dx) with
  dx^2 + dy^2 < r^2, in that order (34 offsets for r = 5). Only one of (d, -d) is listed, so each
  unordered pair appears once;
* "from" pixels: the window that drops the last r-1 rows and the first and last r-1 columns, so
  that every offset stays inside the map; "to" pixels: that window shifted by the offset.
  Pairs whose "from" pixel lies outside the window (e.g. two neighbours in the bottom rows) are
  never compared, neither in training nor in the dense matrix of the random walk;
* pair arrays are laid out [D, P]: D offsets (in the order above) by P from-pixels (row-major over
  the from window), the reference's `ind_to.view(D, P)`.

Radius shrink (wseg `network/resnet38_aff.py`, METHOD 11.8): when the feature map's shorter edge
is below 2r+1 (11 for r = 5), the radius becomes (min_edge - 1) // 2. PSA's original has no
shrink (and breaks on such maps); the reference's training crops (448 -> 56) never trigger it.
Every function here and in `ppc_jax.refine.affinity_loss` / `ppc_jax.refine.random_walk` takes the
*requested* radius and applies the shrink itself, so pair labels, pair affinities and the dense
matrix always agree on the geometry. Effective radius <= 1 has no offsets (D = 0).

Labels (METHOD 11.9): the la / ha CRF score stacks (channel 0 = background) of the training crop
are block-averaged 8x8 (`pool_scores`), turned into one label map (`label_map_from_crf`) and
into bg / fg / neg pair indicators (`pair_labels`).
"""

from typing import NamedTuple, Optional, Tuple

import numpy as np

IGNORE = 255  # label of pixels that take part in no pair

# Pooled pixels whose la and ha scores are all below this carry no score (the crop's zero
# padding), reference `no_score_region = np.max(label, -1) < 1e-5`.
_NO_SCORE = 1e-5


def search_offsets(radius):
  """The reference's half-plane pair offsets inside `radius`, in its order.

  Args:
    radius: the (effective) radius r; pairs have dx^2 + dy^2 < r^2.

  Returns:
    list of (dy, dx) int tuples: (0, 1) .. (0, r-1), then row by row dy = 1 .. r-1, dx ascending
    from -(r-1). 34 offsets for r = 5; none for r <= 1.
  """
  radius = int(radius)
  offsets = [(0, dx) for dx in range(1, radius)]
  for dy in range(1, radius):
    for dx in range(-radius + 1, radius):
      if dx * dx + dy * dy < radius * radius:
        offsets.append((dy, dx))
  return offsets


def effective_radius(radius, h, w):
  """The radius the reference uses on an h x w feature map (wseg's shrink rule).

  Args:
    radius: the requested radius r (5 in the reference).
    h, w: feature-map size.

  Returns:
    r if min(h, w) >= 2r + 1, else (min(h, w) - 1) // 2 (so that the from window keeps at least
    3 columns).
  """
  radius, min_edge = int(radius), min(int(h), int(w))
  if min_edge < 2 * radius + 1:
    return (min_edge - 1) // 2
  return radius


class PairGeometry(NamedTuple):
  """Where the pairs of one h x w map live.

  Attributes:
    radius: the effective radius (after `effective_radius`).
    offsets: tuple of D (dy, dx) offsets, `search_offsets(radius)`.
    from_window: ((row_start, row_stop), (col_start, col_stop)) of the from pixels:
      rows [0, h - (r-1)), columns [r-1, w - (r-1)).
    to_windows: D windows of the same form: from_window shifted by (dy, dx).
  """
  radius: int
  offsets: Tuple[Tuple[int, int], ...]
  from_window: Tuple[Tuple[int, int], Tuple[int, int]]
  to_windows: Tuple[Tuple[Tuple[int, int], Tuple[int, int]], ...]

  @property
  def num_offsets(self):
    """D."""
    return len(self.offsets)

  @property
  def num_from(self):
    """P, the number of from pixels (size of the from window)."""
    (r0, r1), (c0, c1) = self.from_window
    return (r1 - r0) * (c1 - c0)


def pair_geometry(h, w, radius):
  """The from window and the per-offset to windows on an h x w map.

  Args:
    h, w: feature-map size.
    radius: requested radius; the shrink rule is applied (see `effective_radius`).

  Returns:
    PairGeometry. For an effective radius <= 1 there are no offsets and the from window is the
    whole map (the reference's window would be empty then; with D = 0 nothing depends on it).
  """
  h, w = int(h), int(w)
  r = effective_radius(radius, h, w)
  rf = max(r - 1, 0)
  ch, cw = h - rf, w - 2 * rf
  offsets = tuple(search_offsets(r))
  from_window = ((0, ch), (rf, rf + cw))
  to_windows = tuple(((dy, dy + ch), (rf + dx, rf + dx + cw)) for dy, dx in offsets)
  return PairGeometry(r, offsets, from_window, to_windows)


def _crop(x, window):
  (r0, r1), (c0, c1) = window
  return x[r0:r1, c0:c1]


def pair_indices(h, w, radius):
  """Flat (row-major, h*w grid) indices of every pair, the reference's ind_from / ind_to.

  Args:
    h, w: feature-map size.
    radius: requested radius (shrink rule applied).

  Returns:
    (ind_from [P] int32, ind_to [D, P] int32): pair (k, p) joins pixel ind_from[p] with pixel
    ind_to[k, p].
  """
  geom = pair_geometry(h, w, radius)
  grid = np.arange(h * w, dtype=np.int32).reshape(h, w)
  ind_from = _crop(grid, geom.from_window).reshape(-1)
  ind_to = np.zeros((geom.num_offsets, ind_from.size), np.int32)
  for k, window in enumerate(geom.to_windows):
    ind_to[k] = _crop(grid, window).reshape(-1)
  return ind_from, ind_to


def pool_scores(scores, stride=8):
  """stride x stride block mean with zero padding counted in the mean (skimage block_reduce).

  The reference pools the crop's score stack with `skimage.measure.block_reduce(x, (8, 8, 1),
  np.mean)`, which zero-pads the bottom / right to a multiple of the block and averages the
  whole block, so a block that is half padding has half the mean.

  Args:
    scores: [H, W, C] float scores.
    stride: block size.

  Returns:
    [ceil(H/stride), ceil(W/stride), C] float32.
  """
  scores = np.asarray(scores)
  if scores.ndim != 3:
    raise ValueError(f"pool_scores expects [H, W, C], got shape {scores.shape}")
  hh, ww, c = scores.shape
  h, w = -(-hh // stride), -(-ww // stride)
  padded = np.zeros((h * stride, w * stride, c), np.float64)
  padded[:hh, :ww] = scores
  pooled = padded.reshape(h, stride, w, stride, c).mean(axis=(1, 3))
  return pooled.astype(np.float32)


def label_map_from_crf(la_scores, ha_scores, stride: Optional[int] = None):
  """The reference's training label map from the la / ha CRF score stacks (METHOD 11.9).

  la = low alpha (background score (1 - max)^4: large, so only confident foreground beats it),
  ha = high alpha ((1 - max)^24 or ^32: small, so only confident background survives).
  Channel 0 is the background; the other channels are the image's present classes in a fixed
  order (the reference's CRF dicts hold {0: bg, k+1: class k} for present k only, so argmax gives
  compact indices; only equality of labels matters to the pair labels, so compact or VOC class
  indices both work). Rules, applied in this order, each overriding the previous ones exactly as
  `VOC12AffDataset.__getitem__`:

    1. label = argmax over the la channels (ties: the lowest channel);
    2. la argmax == 0 (la background)            -> 255 (unsure);
    3. ha argmax == 0 (ha background)            -> 0, also where rule 2 set 255;
    4. every pooled la and ha score < 1e-5       -> 255 (no score: the crop's padding), also
       where rule 3 set 0 (an all-zero pixel argmaxes to channel 0 in both stacks).

  Args:
    la_scores: [h, w, K] pooled la CRF scores (or [H, W, K] unpooled with `stride`).
    ha_scores: [h, w, K] pooled ha CRF scores, same shape.
    stride: None if the inputs are already pooled; else they are pooled by `pool_scores` first.

  Returns:
    uint8 [h, w] label map: 0 = background, 1..K-1 = la channel, 255 = ignore.
  """
  la, ha = np.asarray(la_scores), np.asarray(ha_scores)
  if la.shape != ha.shape or la.ndim != 3:
    raise ValueError(f"la / ha scores must both be [h, w, K] of one shape, got {la.shape} and "
                     f"{ha.shape}")
  if la.shape[-1] >= IGNORE:
    raise ValueError(f"at most {IGNORE - 1} channels fit a uint8 label map, got {la.shape[-1]}")
  if stride is not None:
    la, ha = pool_scores(la, stride), pool_scores(ha, stride)
  no_score = np.maximum(la.max(axis=-1), ha.max(axis=-1)) < _NO_SCORE
  la_arg = np.argmax(la, axis=-1)
  ha_arg = np.argmax(ha, axis=-1)
  label = la_arg.astype(np.uint8)
  label[la_arg == 0] = IGNORE
  label[ha_arg == 0] = 0
  label[no_score] = IGNORE
  return label


def pair_labels(label_map, radius):
  """bg / fg / neg indicators of every pair (METHOD 11.9, `ExtractAffinityLabelInRadius`).

  With a = label of the from pixel and b = label of the to pixel (255 = ignore):
    bg:  a == b == 0;
    fg:  a == b, a != 0, both < 255;
    neg: a != b, both < 255.
  A pair with an ignored pixel is in none of them; no pair is in two.

  Args:
    label_map: [h, w] integer labels (uint8 from `label_map_from_crf`), 255 = ignore.
    radius: requested radius (shrink rule applied, as in `pair_affinity`).

  Returns:
    dict with 'bg', 'fg', 'neg': float32 [D, P] each, 1 where the pair is of that kind.
  """
  label = np.asarray(label_map)
  if label.ndim != 2:
    raise ValueError(f"pair_labels expects an [h, w] label map, got shape {label.shape}")
  label = label.astype(np.int64)  # uint8 compares fine, but keep 255 unambiguous for any dtype
  geom = pair_geometry(label.shape[0], label.shape[1], radius)
  lab_from = _crop(label, geom.from_window).reshape(1, -1)
  if geom.num_offsets:
    lab_to = np.stack([_crop(label, wnd).reshape(-1) for wnd in geom.to_windows])
  else:
    lab_to = np.zeros((0, lab_from.shape[1]), np.int64)
  same = lab_from == lab_to
  valid = (lab_from < IGNORE) & (lab_to < IGNORE)
  return {
      "bg": (same & (lab_from == 0)).astype(np.float32),
      "fg": (same & (lab_from != 0) & valid).astype(np.float32),
      "neg": (~same & valid).astype(np.float32),
  }
