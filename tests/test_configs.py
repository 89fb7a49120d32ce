"""Every config file builds, its variants parse, and every name in it resolves."""

import glob
import importlib.util
import os

import jax
import pytest

from ppc_jax import config_lib
from ppc_jax import models
from ppc_jax import optim
from ppc_jax import steps
from ppc_jax.losses import objective

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))
SEED_KEYS = ("cam", "cam_rv")


def _load(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_every_expected_config_exists():
  names = {os.path.basename(p) for p in CONFIG_FILES}
  assert {"cam_voc12.py", "seam_voc12.py", "ppc_voc12.py", "demo.py"} <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_config_builds_and_resolves(path):
  module = _load(path)
  doc = module.__doc__ or ""
  assert "python -m ppc_jax" in doc or "make demo" in doc, "docstring must give the run command"
  assert "Expected" in doc, "docstring must state the expected result"
  config = module.get_config(None)
  config.lock()  # as config_flags does: later typos fail
  # Model name resolves and the module accepts every model field.
  model = models.build_model(config.model)
  # Loss variant and momentum mode resolve.
  assert config.loss.variant in objective.VARIANTS
  assert optim.momentum_value(config.optim) in optim.MOMENTUM.values()
  assert config.optim.momentum_mode in ("reference", "corrected")  # explicit in every config
  # Batch, crop and schedule are coherent; the PPC head exists exactly when PPC is trained.
  assert config.input.batch_size > 0 and config.input.crop_size >= config.input.view2_size
  assert (config.loss.variant == "seam_ppc") == (config.model.proj_dim is not None)
  assert config.infer.cam_key in SEED_KEYS
  # The full graph traces at the config's own sizes (shapes only, nothing is computed).
  shapes = jax.eval_shape(
      lambda r: steps.init_variables(model, r, (config.input.crop_size,) * 2 + (3,)),
      jax.random.PRNGKey(0))
  groups = optim.param_groups(shapes["params"], config.optim)
  labels = set(jax.tree.leaves(groups))
  assert {optim.BACKBONE, optim.NEW, optim.FROZEN} <= labels


@pytest.mark.parametrize("path", [p for p in CONFIG_FILES if "voc12" in p], ids=os.path.basename)
def test_voc_variants(path):
  module = _load(path)
  local = module.get_config("runlocal,batch=4,momentum_mode=corrected,data_dir=somewhere")
  assert local.input.batch_size == 4
  assert local.optim.momentum_mode == "corrected"
  assert local.input.data_dir == "somewhere"
  assert local.model.width_divisor > 1
  with pytest.raises(ValueError, match="not one of"):
    module.get_config("runlcoal")


def test_parse_arg_types_and_errors():
  cfg = config_lib.parse_arg("a=3,b=0.5,c,d=x", a=1, b=0.1, c=False, d="")
  assert (cfg.a, cfg.b, cfg.c, cfg.d) == (3, 0.5, True, "x")
  with pytest.raises(ValueError, match="expects int"):
    config_lib.parse_arg("a=x", a=1)
  with pytest.raises(ValueError, match="needs a value"):
    config_lib.parse_arg("a", a=1)
