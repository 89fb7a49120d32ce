"""The reference code bases' checkpoint key layouts <-> the one layout of ppc_jax.

ppc_jax has one convention for every model: SeamNet names (backbone + fc8, fc_proj, f8_3, f8_4,
f9; AffinityNet adds f8_5) and the background at fc8 row 0. The reference networks share the
ResNet38 names (`resnet38d.Net`; METHOD 1.1) but differ in their heads:

  layout    reference network                          heads (torch names)          fc8 rows
  backbone  ImageNet ResNet38 converted to torch       none                         -
  psa       psa `resnet38_cls.Net`                     fc8                          20, no background
  seam      SEAM `resnet38_SEAM.Net`                   fc8, f8_3, f8_4, f9          21, background first
  ppc       wseg@master `resnet38_contrast.Net`        seam's + fc_proj             21, background first
  eps       EPS / wseg@esp `resnet38_eps.Net`          fc8                          21, background LAST
  eps_ppc   wseg@esp `resnet38_contrast.Net`           fc8, proj_fc, f8_3, f8_4, f9 21, background LAST
  aff       PSA / wseg `resnet38_aff.Net`              f8_3, f8_4, f8_5, f9         - (AffinityNet)

Moving EPS's background row to the front is a permutation of fc8's output channels: every loss
and inference step of ppc_jax treats channel 0 as the background, so the EPS networks compute the
same maps with their channels rotated (the `esp` branch's channel-order bug in `max_onehot` is
reproduced by the EPS loss itself, `ppc_jax.seeds.losses.eps`). PSA's fc8 has no background row; one of
zeros is inserted (CAM inference reads only the foreground channels) and dropped on export.

State dicts here are {torch key: np.ndarray} with conv weights in torch's OIHW layout, after
`weights.normalise_keys` (no DataParallel `module.` prefix); `weights` handles the Flax side.
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Layout:
  """One reference network's head set.

  Attributes:
    name: the layout's name (a key of LAYOUTS).
    description: the reference network, for messages.
    fc8: 'none' (no classifier), 'fg' (foreground rows only), 'bg_first' or 'bg_last'.
    pcm: whether f8_3, f8_4, f9 exist.
    proj: the projection head's torch name ('' = none).
    aff: AffinityNet's heads f8_3, f8_4, f8_5, f9 (same names as the PCM's, other widths and
      inputs; f8_5 tells them apart).
  """
  name: str
  description: str
  fc8: str
  pcm: bool
  proj: str
  aff: bool = False

  @property
  def head_keys(self):
    """The torch keys of the heads, in the reference's names."""
    keys = [] if self.fc8 == "none" else ["fc8.weight"]
    if self.pcm:
      keys += ["f8_3.weight", "f8_4.weight", "f9.weight"]
    if self.aff:
      keys += [h + ".weight" for h in _AFF_HEADS]
    if self.proj:
      keys.append(self.proj + ".weight")
    return keys


LAYOUTS = {layout.name: layout for layout in (
    Layout("backbone", "an ImageNet ResNet38 without heads (resnet38d.Net)", "none", False, ""),
    Layout("psa", "PSA's resnet38_cls.Net (20-class fc8, no background)", "fg", False, ""),
    Layout("seam", "SEAM's resnet38_SEAM.Net (fc8 + PCM)", "bg_first", True, ""),
    Layout("ppc", "wseg@master resnet38_contrast.Net (SEAM + fc_proj)", "bg_first", True,
           "fc_proj"),
    Layout("eps", "EPS's resnet38_eps.Net (fc8, background last)", "bg_last", False, ""),
    Layout("eps_ppc", "wseg@esp resnet38_contrast.Net (EPS + PCM + proj_fc, background last)",
           "bg_last", True, "proj_fc"),
    Layout("aff", "PSA's / wseg's resnet38_aff.Net (AffinityNet: f8_3, f8_4, f8_5, f9, no fc8)",
           "none", False, "", aff=True),
)}

_HEAD_NAMES = ("fc8", "f8_3", "f8_4", "f8_5", "f9", "fc_proj", "proj_fc")
_AFF_HEADS = ("f8_3", "f8_4", "f8_5", "f9")


def _heads_present(state_dict):
  return {k.split(".", 1)[0] for k in state_dict if k.split(".", 1)[0] in _HEAD_NAMES}


def detect(state_dict):
  """The name of the layout `state_dict` (torch keys, `module.` stripped) is in.

  Raises:
    ValueError: heads that fit no layout, or an fc8 whose row count says nothing (naming them).
  """
  heads = _heads_present(state_dict)
  if "proj_fc" in heads and "fc_proj" in heads:
    raise ValueError("both proj_fc (wseg@esp) and fc_proj (wseg@master) are present: "
                     "no reference network has both")
  if not heads:
    return "backbone"
  # f8_5 exists only in AffinityNet, whose heads are exactly these four.
  if "f8_5" in heads:
    if heads == set(_AFF_HEADS):
      return "aff"
    raise ValueError(f"heads {sorted(heads)}: f8_5 is AffinityNet's (resnet38_aff.Net), whose "
                     f"heads are exactly {', '.join(_AFF_HEADS)} (no fc8, no projection)")
  pcm = {"f8_3", "f8_4", "f9"} & heads
  if pcm and pcm != {"f8_3", "f8_4", "f9"}:
    raise ValueError(f"an incomplete PCM ({sorted(pcm)}); expected all of f8_3, f8_4, f9")
  if "fc8" not in heads:
    raise ValueError(f"heads {sorted(heads)} without fc8: no reference network looks like this "
                     "(SEAM's PCM comes with fc8; AffinityNet's heads are f8_3, f8_4, f8_5, f9)")
  if "proj_fc" in heads:
    return "eps_ppc" if pcm else _no_layout(heads)
  if "fc_proj" in heads:
    return "ppc" if pcm else _no_layout(heads)
  if pcm:
    return "seam"
  rows = int(np.shape(state_dict["fc8.weight"])[0])
  if rows == 21:
    return "eps"
  if rows == 20:
    return "psa"
  raise ValueError(
      f"fc8 has {rows} rows and no PCM: PSA's has 20 (no background) and EPS's 21 (background "
      "last); for another class count name the layout (--layout=psa or --layout=eps)")


def _no_layout(heads):
  raise ValueError(f"heads {sorted(heads)}: a projection head without PCM fits no reference "
                   "network")


def get(name):
  if name not in LAYOUTS:
    raise ValueError(f"unknown layout {name!r}; expected one of {sorted(LAYOUTS)}")
  return LAYOUTS[name]


def _check_heads(state_dict, layout, what):
  heads = _heads_present(state_dict)
  want = {k.split(".", 1)[0] for k in layout.head_keys}
  if heads != want:
    raise ValueError(
        f"{what} has heads {sorted(heads)}, but the {layout.name!r} layout ({layout.description}) "
        f"has {sorted(want)}")


def to_canonical(state_dict, layout_name):
  """A reference state_dict in `layout_name` -> ppc_jax's layout (names + background row 0).

  Args:
    state_dict: {torch key: array}, `module.` prefix already stripped.
    layout_name: a key of LAYOUTS.

  Returns:
    a new dict: proj_fc renamed fc_proj; fc8 with the background row first (EPS: moved from the
    last row; PSA: a zero row inserted).
  """
  layout = get(layout_name)
  _check_heads(state_dict, layout, "the state_dict")
  out = dict(state_dict)
  if layout.proj and layout.proj != "fc_proj":
    out["fc_proj.weight"] = out.pop(layout.proj + ".weight")
  if layout.fc8 in ("fg", "bg_last"):
    fc8 = np.asarray(out["fc8.weight"])
    if layout.fc8 == "bg_last":
      out["fc8.weight"] = np.concatenate([fc8[-1:], fc8[:-1]], axis=0)
    else:
      out["fc8.weight"] = np.concatenate([np.zeros_like(fc8[:1]), fc8], axis=0)
  return out


def from_canonical(state_dict, layout_name):
  """ppc_jax's layout -> a reference state_dict in `layout_name` (the inverse of to_canonical).

  Heads the layout has no place for (e.g. fc_proj when exporting a SEAM+PPC model for SEAM's
  network) are dropped; heads it needs but the model lacks are an error.
  """
  layout = get(layout_name)
  heads = _heads_present(state_dict)
  want = {"fc_proj" if k == layout.proj + ".weight" else k.split(".", 1)[0]
          for k in layout.head_keys}
  missing = want - heads
  if missing:
    raise ValueError(f"the model has no {sorted(missing)}, which the {layout.name!r} layout "
                     f"({layout.description}) needs")
  out = {k: v for k, v in state_dict.items()
         if k.split(".", 1)[0] not in _HEAD_NAMES or k.split(".", 1)[0] in want}
  if layout.proj and layout.proj != "fc_proj":
    out[layout.proj + ".weight"] = out.pop("fc_proj.weight")
  if layout.fc8 in ("fg", "bg_last"):
    fc8 = np.asarray(out["fc8.weight"])
    out["fc8.weight"] = np.array(fc8[1:] if layout.fc8 == "fg"
                                 else np.concatenate([fc8[1:], fc8[:1]], axis=0), order="C")
  return out


def model_settings(layout_name):
  """The `config.model` fields a ppc_jax model needs to hold a `layout_name` checkpoint."""
  layout = get(layout_name)
  if layout.aff:
    return {"name": "affinity_net"}
  # The backbone fits every model; the others are stage 1's network.
  settings = {} if layout.name == "backbone" else {"name": "seam_net"}
  settings["pcm"] = layout.pcm
  if not layout.proj:
    settings["proj_dim"] = None
  return settings


def for_model(model_config, loss_variant):
  """The reference layout that holds a model of `model_config` trained with `loss_variant`."""
  if model_config.name == "affinity_net":  # its config has no pcm / proj_dim
    return "aff"
  eps = str(loss_variant).startswith("eps")
  has_proj = model_config.proj_dim is not None
  if model_config.pcm:
    if eps:
      return "eps_ppc"
    return "ppc" if has_proj else "seam"
  if has_proj:
    raise ValueError("a model with a projection head but no PCM fits no reference layout")
  return "eps" if eps else "psa"
