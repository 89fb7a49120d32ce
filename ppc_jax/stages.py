"""The training stages by name: what each one is, declared once in its own package.

  pretrain  stage 0: image-classification pretraining of a backbone (ppc_jax/pretrain/stage.py)
  seeds     stage 1: CAM / SEAM / SEAM+PPC / EPS / EPS+PPC (ppc_jax/seeds/stage.py)
  affinity  stage 2: AffinityNet (ppc_jax/refine/stage.py)
  segment   stage 3: DeepLab (ppc_jax/segment/stage.py)

`config.stage` names one. The entry points (`train`, `infer`, `convert`, `restore`, `pipeline`)
look it up here and hold no stage-specific branch; the shared recipe (model + optimizer +
abstract state) is `train_state.build_recipe`, the optimizer `optim.make_optimizer` and the
pretrained weights `pretrained.load`, the same for every stage. Like the model registry, this
module names the stage packages by string and imports one only when it is asked for, so no
shared module imports a stage package.
"""

import dataclasses
import importlib
from typing import Any, Callable, Optional, Tuple

# config.stage -> the module holding that stage's `STAGE`.
STAGE_MODULES = {
    "pretrain": "ppc_jax.pretrain.stage",
    "seeds": "ppc_jax.seeds.stage",
    "affinity": "ppc_jax.refine.stage",
    "segment": "ppc_jax.segment.stage",
}


@dataclasses.dataclass(frozen=True)
class StageSpec:
  """One training stage.

  Attributes:
    name: its `config.stage`.
    description: for messages ('stage 1 (seeds)').
    models: the model registry names it trains (`config.model.name`).
    train: `(config, workdir) -> final metrics`; raises `interrupt.Interrupted` when stopped.
    infer: `(config, workdir, *, split=None, out_dir=None) -> summary`: the stage's inference
      over a split (CAMs and seeds / random-walk masks / segmentations).
    import_torch: `(state_dict, template, config, path) -> (variables, layout)`: a reference
      `.pth` state dict as this stage's model variables (`pretrained.load`, the converter).
    export_torch: `(variables, config, layout) -> (state_dict, layout)`: the model as a reference
      state dict ('auto' layout: the network the config corresponds to).
    torch_layout: `(state_dict) -> layout name` of a reference file for this stage.
    labels: optional `(cam_dir, data_dir, split, out_dir, **options) -> summary`: the training
      labels the stage makes from the previous stage's outputs (AffinityNet: the CRF score files).
    validate: optional `(config) -> None` raising ValueError for settings the stage cannot
      use (beyond its model, which `of` checks).
  """
  name: str
  description: str
  models: Tuple[str, ...]
  train: Callable[..., Any]
  infer: Callable[..., Any]
  import_torch: Callable[..., Any]
  export_torch: Callable[..., Any]
  torch_layout: Callable[[Any], str]
  labels: Optional[Callable[..., Any]] = None
  validate: Optional[Callable[[Any], None]] = None


def get(name):
  """The `StageSpec` registered as `name`."""
  if name not in STAGE_MODULES:
    raise ValueError(f"config.stage={name!r}: expected one of {sorted(STAGE_MODULES)}")
  return importlib.import_module(STAGE_MODULES[name]).STAGE


def of(config):
  """The stage of an experiment config, its model checked against it."""
  stage = get(config.stage)
  if config.model.name not in stage.models:
    raise ValueError(f"config.model.name={config.model.name!r}: the {stage.name!r} stage trains "
                     f"{' or '.join(repr(m) for m in stage.models)}")
  if stage.validate is not None:
    stage.validate(config)
  return stage
