"""Model registry and the shared backbones (ResNet38, the deep-stem ResNet-101, torch-mode BN).

`get_model(name, **kwargs)` builds a Linen module by registry name; `build_model(config.model)`
does it from the ml_collections model config (`ppc_jax.config_lib.model_config()`), passing every
field except `name` as a module attribute, so a typo in the config fails loudly.
"""

import dataclasses
import importlib

import jax.numpy as jnp

from ppc_jax.models.resnet101 import ResNet101
from ppc_jax.models.resnet38 import ResNet38

# name -> 'module:Class'. Each stage's network lives with its stage (seeds/, refine/, segment/)
# and imports its backbone from here, so the registry resolves them on first use (no import
# cycle between this package and the stage packages).
MODELS = {
    "seam_net": "ppc_jax.seeds.seam_net:SeamNet",        # stage 1
    "affinity_net": "ppc_jax.refine.affinity_net:AffinityNet",  # stage 2
    "deeplab": "ppc_jax.segment.deeplab:DeepLab",        # stage 3: DeepLab-v1 / v2
    "resnet38": "ppc_jax.models.resnet38:ResNet38",      # backbones
    "resnet101": "ppc_jax.models.resnet101:ResNet101",
}


def model_class(name):
  """The Linen module class registered as `name`."""
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; registered models: {sorted(MODELS)}")
  module, cls = MODELS[name].split(":")
  return getattr(importlib.import_module(module), cls)


def __getattr__(attr):
  """`models.SeamNet` etc.: the stage networks, resolved lazily (see MODELS)."""
  for path in MODELS.values():
    module, cls = path.split(":")
    if cls == attr:
      return getattr(importlib.import_module(module), cls)
  raise AttributeError(f"module 'ppc_jax.models' has no attribute {attr!r}")


def get_model(name, **kwargs):
  """Returns the Linen module registered as `name`, constructed with `kwargs`.

  Raises:
    ValueError: unknown name, or a keyword the module does not take.
  """
  cls = model_class(name)
  fields = {f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("parent", "name")}
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise ValueError(f"model {name!r} has no setting(s) {unknown}; it takes {sorted(fields)}")
  # Lists (e.g. from a JSON/YAML round trip of the config) become tuples: module attributes must
  # be hashable for jit caching.
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
  if isinstance(kwargs.get("dtype"), str):  # config strings: 'float32', 'bfloat16'
    try:
      kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
    except TypeError as e:
      raise ValueError(f"model {name!r}: dtype {kwargs['dtype']!r} is not a dtype name "
                       "(expected 'float32' or 'bfloat16')") from e
  return cls(**kwargs)


def build_model(model_config):
  """Builds the model described by an ml_collections model config (see config_lib.model_config).

  Args:
    model_config: ConfigDict (or Mapping) with `name` and the module's attributes.

  Returns:
    the Linen module (unbound).
  """
  cfg = model_config.to_dict() if hasattr(model_config, "to_dict") else dict(model_config)
  if "name" not in cfg:
    raise ValueError(f"model config needs a 'name' field; got keys {sorted(cfg)}")
  name = cfg.pop("name")
  return get_model(name, **cfg)


__all__ = ["MODELS", "ResNet101", "ResNet38", "build_model", "get_model", "model_class"]
