"""Model registry: ResNet38, SeamNet (SEAM heads + PCM + PPC projection), AffinityNet, DeepLab.

`get_model(name, **kwargs)` builds a Linen module by registry name; `build_model(config.model)`
does it from the ml_collections model config (`ppc_jax.config_lib.model_config()`), passing every
field except `name` as a module attribute, so a typo in the config fails loudly.
"""

import dataclasses

from ppc_jax.models.affinity_net import AffinityNet
from ppc_jax.models.deeplab import DeepLab
from ppc_jax.models.resnet101 import ResNet101
from ppc_jax.models.resnet38 import ResNet38
from ppc_jax.models.seam import SeamNet

MODELS = {
    "seam_net": SeamNet,
    "resnet38": ResNet38,
    "affinity_net": AffinityNet,
    "deeplab": DeepLab,          # stage 3: DeepLab-v1 / v2 on ResNet38 or ResNet-101
    "resnet101": ResNet101,
}


def get_model(name, **kwargs):
  """Returns the Linen module registered as `name`, constructed with `kwargs`.

  Raises:
    ValueError: unknown name, or a keyword the module does not take.
  """
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; registered models: {sorted(MODELS)}")
  cls = MODELS[name]
  fields = {f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("parent", "name")}
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise ValueError(f"model {name!r} has no setting(s) {unknown}; it takes {sorted(fields)}")
  # Lists (e.g. from a JSON/YAML round trip of the config) become tuples: module attributes must
  # be hashable for jit caching.
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
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


__all__ = ["MODELS", "AffinityNet", "DeepLab", "ResNet101", "ResNet38", "SeamNet", "build_model",
           "get_model"]
