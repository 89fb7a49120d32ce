"""PyTorch state_dict <-> Flax variables for ResNet38 / SeamNet / AffinityNet (and MXNet keys).

The Flax modules use the reference module names, so conversion is a rename plus a layout change:

  torch key                             Flax leaf
  b4_3.conv_branch2a.weight  [O,I,H,W]  params/backbone/b4_3/conv_branch2a/kernel  [H,W,I,O]
  bn7.weight / bn7.bias                 params/backbone/bn7/scale / bias
  bn7.running_mean / running_var        batch_stats/backbone/bn7/mean / var
  fc8.weight (also f8_3, f8_4, f8_5,    params/fc8/kernel (heads sit at the top level)
    f9, fc_proj)

`*.num_batches_tracked` is ignored on the way in (BN is frozen) and written as 0 on the way out so
that `torch.nn.Module.load_state_dict(strict=True)` accepts the result. A `module.` prefix (from
DataParallel) is stripped.

Arrays are numpy on the host; callers put them on devices (and shard them) themselves. `.pth`
files are read without torch and without running code from them (`ppc_jax.pth_reader`); writing
them needs torch, the optional extra `pip install .[torch]`.
"""

import logging

import numpy as np
from flax import traverse_util

from ppc_jax import atomic_io
from ppc_jax import layouts
from ppc_jax import mxnet_params
from ppc_jax import pth_reader
from ppc_jax import untrusted

# Top-level modules of the torch networks; every other key belongs to the backbone scope.
HEAD_NAMES = ("fc8", "f8_3", "f8_4", "f8_5", "f9", "fc_proj")

# torch BatchNorm2d entry -> (Flax collection, Flax leaf name).
_BN_TORCH_TO_FLAX = {
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}
_BN_FLAX_TO_TORCH = {v: k for k, v in _BN_TORCH_TO_FLAX.items()}


def _is_bn(module_name):
  # Every BatchNorm in the reference is named bn7 or bn_branch*; no conv name starts with 'bn'.
  return module_name.startswith("bn")


def _torch_key_to_flax(key, backbone_scope, conv_bias=False):
  """'b4_3.conv_branch2a.weight' -> ('params', 'backbone', 'b4_3', 'conv_branch2a', 'kernel').

  Returns None for keys that name nothing in these models (e.g. linear1000.weight is 2-D and
  is caught by the rank check; a BN entry other than the four).
  """
  parts = key.split(".")
  if len(parts) < 2:
    return None
  *modules, leaf = parts
  if _is_bn(modules[-1]):
    if leaf not in _BN_TORCH_TO_FLAX:
      return None
    collection, flax_leaf = _BN_TORCH_TO_FLAX[leaf]
  elif leaf == "weight":
    collection, flax_leaf = "params", "kernel"
  elif leaf == "bias" and conv_bias:  # DeepLab's cls_conv (no stage-1 / 2 conv has one)
    collection, flax_leaf = "params", "bias"
  else:
    return None
  scope = () if (modules[0] in HEAD_NAMES or not backbone_scope) else (backbone_scope,)
  return (collection, *scope, *modules, flax_leaf)


def _flax_path_to_torch(path, backbone_scope):
  """Inverse of `_torch_key_to_flax`; path = (collection, ..., leaf). Returns (key, is_conv)."""
  collection, *modules, leaf = path
  if backbone_scope and modules and modules[0] == backbone_scope:
    modules = modules[1:]
  if not modules:
    raise ValueError(f"cannot map Flax variable {'/'.join(path)} to a torch key")
  if collection == "params" and leaf == "kernel" and not _is_bn(modules[-1]):
    return ".".join(modules) + ".weight", True
  if collection == "params" and leaf == "bias" and not _is_bn(modules[-1]):
    return ".".join(modules) + ".bias", False
  if _is_bn(modules[-1]) and (collection, leaf) in _BN_FLAX_TO_TORCH:
    return ".".join(modules) + "." + _BN_FLAX_TO_TORCH[(collection, leaf)], False
  raise ValueError(f"cannot map Flax variable {'/'.join(path)} to a torch key")


def normalise_keys(state_dict):
  """Strips DataParallel's `module.` prefix and drops `num_batches_tracked` entries."""
  out = {}
  for key, value in state_dict.items():
    key = key[len("module."):] if key.startswith("module.") else key
    if key.endswith("num_batches_tracked"):
      continue
    if key in out:
      raise ValueError(f"duplicate key {key!r} after stripping the 'module.' prefix")
    out[key] = value
  return out


def _fmt(keys, limit=20):
  keys = sorted(keys)
  more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
  return ", ".join(keys[:limit]) + more


def from_torch_state_dict(state_dict, *, template=None, strict=True, backbone_scope="backbone",
                          conv_bias=False):
  """Converts a reference torch state_dict to Flax variables {'params', 'batch_stats'}.

  Args:
    state_dict: {torch key: array-like} (numpy arrays; CPU torch tensors also work).
    template: optional Flax variables of the target model (arrays, or jax.ShapeDtypeStruct from
      `jax.eval_shape(model.init, ...)` when strict). Keys and shapes are checked against it and
      the result takes its dtypes. With strict=False, its arrays fill every variable the
      state_dict lacks (e.g. the heads when loading an ImageNet backbone).
    strict: as torch's load_state_dict: with True, missing and unexpected keys raise; with False
      they are skipped (and logged). Mis-shaped keys always raise, as in torch.
    backbone_scope: Flax scope of the backbone ('backbone' in SeamNet; None for a bare ResNet38).
    conv_bias: accept conv biases ('<conv>.bias' -> params/<conv>/bias; DeepLab's classifier).
      Off for the stage-1 / 2 networks, whose convs have none: such a key is unexpected there.

  Returns:
    {'params': nested dict, 'batch_stats': nested dict} of numpy arrays (template leaves where
    filled from the template).

  Raises:
    ValueError: naming the missing / unexpected / mis-shaped keys.
  """
  sd = normalise_keys(state_dict)
  flat = {}
  torch_key_of = {}
  unexpected = []
  bad_rank = []
  for key, value in sd.items():
    path = _torch_key_to_flax(key, backbone_scope, conv_bias)
    if path is None:
      unexpected.append(key)
      continue
    value = np.asarray(value)
    if path[-1] == "bias" and not _is_bn(path[-2]):
      if value.ndim != 1:
        bad_rank.append(f"{key} {tuple(value.shape)} (a conv bias must be 1-D)")
        continue
    elif path[-1] == "kernel":
      if value.ndim != 4:
        bad_rank.append(f"{key} {tuple(value.shape)} (a conv weight must be 4-D OIHW)")
        continue
      value = np.transpose(value, (2, 3, 1, 0))  # OIHW -> HWIO
    elif value.ndim != 1:
      bad_rank.append(f"{key} {tuple(value.shape)} (a BatchNorm entry must be 1-D)")
      continue
    flat[path] = value
    torch_key_of[path] = key
  if bad_rank:
    raise ValueError(f"mis-shaped keys in the state_dict: {_fmt(bad_rank)}")

  if template is None:
    if unexpected and strict:
      raise ValueError(
          f"unexpected keys (no such variable in ResNet38/SeamNet/AffinityNet): "
          f"{_fmt(unexpected)}")
    if unexpected:
      logging.warning("from_torch_state_dict: ignored unexpected keys: %s", _fmt(unexpected))
    out = {"params": {}, "batch_stats": {}}
    for path, value in flat.items():
      out[path[0]][path[1:]] = value.astype(np.float32, copy=False)
    return {col: traverse_util.unflatten_dict(d) for col, d in out.items()}

  tmpl = {}
  for col in ("params", "batch_stats"):
    for path, leaf in traverse_util.flatten_dict(dict(template.get(col, {}))).items():
      tmpl[(col, *path)] = leaf

  def torch_name(path):
    try:
      return _flax_path_to_torch(path, backbone_scope)[0]
    except ValueError:
      return "/".join(path)

  unexpected += [torch_key_of[p] for p in flat if p not in tmpl]
  missing = [p for p in tmpl if p not in flat]
  mismatched = []
  for path, value in flat.items():
    if path in tmpl and tuple(value.shape) != tuple(tmpl[path].shape):
      want = tuple(tmpl[path].shape)
      if path[-1] == "kernel":  # report in torch layout, like the key
        want = (want[3], want[2], want[0], want[1])
      got = tuple(np.shape(sd[torch_key_of[path]]))
      mismatched.append(f"{torch_key_of[path]}: got {got}, model wants {want}")
  if mismatched:
    raise ValueError(f"shape mismatch for keys: {_fmt(mismatched)}")
  problems = []
  if missing:
    problems.append(f"missing keys: {_fmt(torch_name(p) for p in missing)}")
  if unexpected:
    problems.append(f"unexpected keys: {_fmt(unexpected)}")
  if problems and strict:
    raise ValueError("state_dict does not match the model (strict=True): " + "; ".join(problems))
  if problems:
    logging.warning("from_torch_state_dict (strict=False): %s", "; ".join(problems))

  out = {"params": {}, "batch_stats": {}}
  for path, leaf in tmpl.items():
    if path in flat:
      out[path[0]][path[1:]] = flat[path].astype(np.dtype(leaf.dtype), copy=False)
    else:
      if not hasattr(leaf, "__array__"):
        raise ValueError(
            f"template leaf {'/'.join(path)} has no values to keep (it is {type(leaf).__name__});"
            " pass initialised variables as template when the state_dict is partial")
      out[path[0]][path[1:]] = leaf
  return {col: traverse_util.unflatten_dict(d) for col, d in out.items()}


def to_torch_state_dict(variables, *, backbone_scope="backbone", num_batches_tracked=True):
  """Converts Flax variables {'params', 'batch_stats'} to a reference-named torch state_dict.

  Args:
    variables: Flax variables of SeamNet (or of a bare ResNet38 with backbone_scope=None).
    backbone_scope: the backbone's Flax scope ('backbone' in SeamNet).
    num_batches_tracked: also emit `<bn>.num_batches_tracked` = 0 (int64) per BatchNorm, so the
      dict loads into the torch model with strict=True.

  Returns:
    {torch key: np.ndarray}, conv weights in OIHW.
  """
  out = {}
  for col in ("params", "batch_stats"):
    for path, value in traverse_util.flatten_dict(dict(variables.get(col, {}))).items():
      key, is_conv = _flax_path_to_torch((col, *path), backbone_scope)
      value = np.asarray(value)
      # Fresh, writable copies (np.asarray of a jax array is a read-only view, which torch warns
      # about in from_numpy).
      out[key] = np.array(np.transpose(value, (3, 2, 0, 1)) if is_conv else value, order="C")
      if num_batches_tracked and col == "batch_stats" and path[-1] == "mean":
        out[key.rsplit(".", 1)[0] + ".num_batches_tracked"] = np.zeros((), np.int64)
  return out


def load_torch_file(path):
  """Reads a `torch.save`d state_dict into {key: np.ndarray}, without torch or running its code.

  `ppc_jax.pth_reader` parses the zip or legacy format with a restricted unpickler (tensors,
  dicts, numbers and strings only); a file asking for anything else is refused. Accepts a plain
  state_dict or a dict holding one under 'state_dict' / 'model' (other entries, e.g. 'epoch',
  are ignored). bfloat16 tensors come back as ml_dtypes.bfloat16 arrays.

  Raises:
    FileNotFoundError: no such file.
    untrusted.UntrustedFileError (a ValueError; UnsafeFileError for a refused payload): every
      other problem, naming the file.
  """
  obj = pth_reader.read_torch_file(path)
  if isinstance(obj, dict):
    for wrapper in ("state_dict", "model"):
      if isinstance(obj.get(wrapper), dict):
        obj = obj[wrapper]
        break
  if not isinstance(obj, dict):
    raise untrusted.UntrustedFileError(
        path, f"holds {type(obj).__name__}; expected a state_dict (dict of tensors)")
  not_tensors = [str(k) for k, v in obj.items()
                 if not (isinstance(k, str) and isinstance(v, np.ndarray)
                         and (v.dtype.kind in "biuf" or v.dtype == pth_reader.BFLOAT16))]
  if not_tensors:
    raise untrusted.UntrustedFileError(
        path, f"entries that are not tensors under string keys: {_fmt(not_tensors)}")
  return dict(obj)


def save_torch_file(state_dict, path):
  """Writes {key: np.ndarray} with `torch.save` (torch imported lazily) for the reference code.

  Atomic: a reader never sees a half-written file.
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("save_torch_file writes .pth files with PyTorch, an optional extra: "
                      "pip install .[torch] (reading .pth files does not need it)") from e
  tensors = {k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}
  atomic_io.atomic_write(path, lambda f: torch.save(tensors, f))


_MX_BN_LEAF = {"beta": "bias", "gamma": "weight", "mean": "running_mean", "var": "running_var"}


def convert_mxnet_keys(mx_dict):
  """Renames MXNet Model A1 keys to reference torch keys (`resnet38d.convert_mxnet_to_torch`).

  Takes the dict `mxnet.nd.load` gives (names such as 'arg:res4b3_branch2a_weight',
  'aux:bn4b3_branch2a_moving_mean', 'arg:bn7_gamma'; the 'arg:'/'aux:' prefixes may be present or
  not) with numpy values, so mxnet itself is not needed here. Rules, on '_'-split tokens:
    * 'conv1a' in token 0 -> conv1a.weight; 'linear1000' in token 0 -> dropped (the ImageNet
      classifier);
    * 'branch' in token 1 -> block b{stage} if token 0 ends in 'a' (res2a -> b2) else
      b{stage}_{i} (res4b3 -> b4_3); layer conv_{token1} for 'res*' keys, bn_{token1} otherwise;
    * anything else -> bn7.*; BN leaves gamma/beta/(moving_)mean/(moving_)var map to
      weight/bias/running_mean/running_var.

  Returns:
    {torch key: np.ndarray}, ready for `from_torch_state_dict(..., strict=False)`.

  Raises:
    ValueError: for a key that fits none of the rules (naming it).
  """
  out = {}
  for key, value in mx_dict.items():
    name = key.split(":", 1)[1] if key.startswith(("arg:", "aux:")) else key
    toks = name.split("_")
    try:
      if "conv1a" in toks[0]:
        torch_key = "conv1a.weight"
      elif "linear1000" in toks[0]:
        continue
      elif len(toks) > 1 and "branch" in toks[1]:
        t0 = toks[0]
        block = f"b{t0[-2]}" if t0.endswith("a") else f"b{t0[-3]}_{t0[-1]}"
        if "res" in t0:
          layer, leaf = f"conv_{toks[1]}", "weight"
        else:
          layer, leaf = f"bn_{toks[1]}", _MX_BN_LEAF[toks[-1]]
        torch_key = f"{block}.{layer}.{leaf}"
      else:
        torch_key = f"bn7.{_MX_BN_LEAF[toks[-1]]}"
    except (KeyError, IndexError) as e:
      raise ValueError(f"MXNet key {key!r} fits none of the Model A1 renaming rules") from e
    if torch_key in out:
      raise ValueError(f"MXNet keys collide on {torch_key!r} (second one: {key!r})")
    out[torch_key] = np.asarray(value)
  return out


def template_keys(template, backbone_scope="backbone", *, backbone_only=False):
  """The reference torch keys of the variables in `template` (Flax variables)."""
  keys = set()
  for col in ("params", "batch_stats"):
    for path in traverse_util.flatten_dict(dict(template.get(col, {}))):
      if not backbone_only or backbone_scope is None or path[0] == backbone_scope:
        keys.add(_flax_path_to_torch((col, *path), backbone_scope)[0])
  return keys


def backbone_keys(template, backbone_scope="backbone"):
  """The reference torch keys of the backbone variables in `template` (Flax variables)."""
  return template_keys(template, backbone_scope, backbone_only=True)


def from_reference_state_dict(state_dict, *, template, layout="auto", strict=True,
                              backbone_scope="backbone"):
  """A state_dict of any reference network (`ppc_jax.layouts`) -> Flax variables of a model.

  Args:
    state_dict: {torch key: array}; a `module.` prefix is stripped.
    template: initialised Flax variables of the target model; heads the checkpoint lacks keep
      these values.
    layout: a `layouts.LAYOUTS` name, or 'auto' (`layouts.detect`).
    strict: True: the checkpoint and the model have the same variables, exactly (the 'backbone'
      layout excepted: its missing heads keep their initialisation); anything else is an error
      naming the keys. False: what maps is loaded, the rest keeps its initialisation (logged).
      Either way an AffinityNet checkpoint and a stage-1 model (or the reverse) are refused.
    backbone_scope: the backbone's Flax scope.

  Returns:
    (variables, layout name): {'params', 'batch_stats'} numpy variables.

  Raises:
    ValueError: naming the layout, the keys and what was expected.
  """
  sd = normalise_keys(state_dict)
  name = layouts.detect(sd) if layout == "auto" else layouts.get(layout).name
  sd = layouts.to_canonical(sd, name)
  model_keys = template_keys(template, backbone_scope)
  # AffinityNet's f8_3 / f8_4 / f9 share only their names with SEAM's PCM: never mix the two,
  # not even with strict=False.
  model_is_aff = "f8_5.weight" in model_keys
  if name != "backbone" and (name == "aff") != model_is_aff:
    raise ValueError(
        f"the {name!r} checkpoint ({layouts.get(name).description}) does not fit "
        f"{'an AffinityNet' if model_is_aff else 'a model that is not an AffinityNet'}; "
        f"expected config.model settings {layouts.model_settings(name)}")
  if strict:
    want = model_keys
    if name == "backbone":
      want = backbone_keys(template, backbone_scope)
    missing, unexpected = want - set(sd), set(sd) - model_keys
    if missing or unexpected:
      problems = [f"the {name!r} checkpoint ({layouts.get(name).description})"]
      if missing:
        problems.append(f"lacks the model's {_fmt(missing)}")
      if unexpected:
        problems.append(f"has {_fmt(unexpected)}, which the model does not")
      raise ValueError(", ".join(problems) + "; expected a model with the same heads: "
                       f"config.model settings {layouts.model_settings(name)}")
  return from_torch_state_dict(sd, template=template, strict=False,
                               backbone_scope=backbone_scope), name


def import_reference(state_dict, template, config, path=None):
  """A stage's `import_torch` for the ResNet38 networks of `layouts` (stages 1 and 2): the
  layout and strictness of `config.init`. Returns (variables, layout name)."""
  del path
  return from_reference_state_dict(state_dict, template=template, layout=config.init.layout,
                                   strict=config.init.strict)


def detect_layout(state_dict):
  """The `layouts` name of a reference state dict (a `module.` prefix allowed)."""
  return layouts.detect(normalise_keys(state_dict))


def to_reference_state_dict(variables, layout, *, backbone_scope="backbone"):
  """Flax variables -> a state_dict of the reference network of `layout` (torch names, OIHW).

  Heads the layout has no place for are dropped; `num_batches_tracked` entries are included so
  that torch's `load_state_dict(strict=True)` accepts the result.
  """
  return layouts.from_canonical(
      to_torch_state_dict(variables, backbone_scope=backbone_scope), layout)


def from_mxnet_file(path, *, template, md5=None, backbone_scope="backbone"):
  """Loads an MXNet ImageNet ResNet38 (`.params`, Model A1 names) into a model's backbone.

  The reference (`resnet38d.convert_mxnet_to_torch` + `load_state_dict(strict=False)`) renames
  the keys, drops the ImageNet classifier (`linear1000`) and leaves the new heads (fc8, PCM,
  projection) at their initialisation. Here the file must cover the template's backbone
  exactly: a backbone variable the file lacks, or a file key the model has no place for, is an
  error naming the file (the reference would silently keep a random layer).

  Args:
    path: the `.params` file (read with `ppc_jax.mxnet_params`, no mxnet).
    template: initialised Flax variables {'params', 'batch_stats'} (numpy or jax arrays); the
      heads and dtypes come from it.
    md5: optional expected md5 of the file (`mxnet_params.RESNET38_A1_MD5` for the published one).
    backbone_scope: the backbone's Flax scope ('backbone' in SeamNet; None for a bare ResNet38).

  Returns:
    {'params', 'batch_stats'} numpy variables: the backbone from the file, the rest from template.

  Raises:
    FileNotFoundError, untrusted.UntrustedFileError: naming the file.
  """
  arrays = mxnet_params.load_params(path, md5=md5)
  try:
    state_dict = convert_mxnet_keys(arrays)
  except ValueError as e:
    raise untrusted.UntrustedFileError(path, str(e)) from e
  want = backbone_keys(template, backbone_scope)
  missing = want - set(state_dict)
  unexpected = set(state_dict) - want
  if missing or unexpected:
    problems = []
    if missing:
      problems.append(f"backbone variables the file lacks: {_fmt(missing)}")
    if unexpected:
      problems.append(f"keys with no place in the model: {_fmt(unexpected)}")
    raise untrusted.UntrustedFileError(
        path, "does not match the model's ResNet38 backbone (after the Model A1 renaming): "
        + "; ".join(problems))
  try:
    return from_torch_state_dict(state_dict, template=template, strict=False,
                                 backbone_scope=backbone_scope)
  except ValueError as e:
    raise untrusted.UntrustedFileError(path, str(e)) from e
