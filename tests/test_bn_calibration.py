"""BN calibration: every frozen BN ends up holding the statistics of the input it sees in eval mode.

The check is independent of ppc_jax.seeds.bn_calibration's mechanics: after calibration, an ordinary
eval-mode forward (running statistics, no interception of the normalisation) records the input of
every nn.BatchNorm call, and each BN's stored mean / var must be that input's mean / variance over
(B, H, W). This holds only if each layer was calibrated on the output of already-calibrated layers.
"""

import flax.linen as nn
import jax
import numpy as np
import pytest

from ppc_jax.seeds import bn_calibration
from ppc_jax import config_lib
from ppc_jax import models
from ppc_jax import sharding as shd
from ppc_jax import train_state

SIZE = 48


@pytest.fixture(scope="module")
def setup():
  model_cfg = config_lib.model_config(width_divisor=32)
  model_cfg.stage_blocks = (1, 1, 1, 1)
  model = models.build_model(model_cfg)
  rng = np.random.RandomState(0)
  variables = _host_init(model, rng)
  # Not zero-mean per channel: the statistics to recover are not the identity's.
  images = (rng.randn(8, SIZE, SIZE, 3) * 1.5 + np.array([0.5, -0.3, 0.2])).astype(np.float32)
  mesh = shd.make_mesh()
  # Sharded over the 8 devices, as the trainer runs it: the statistics are global-batch ones.
  calibrated = jax.device_get(bn_calibration.jit_calibrate(model, shd.batch_sharding(mesh))(
      variables, jax.device_put(images, shd.batch_sharding(mesh))))
  return model, variables, images, calibrated


def _host_init(model, rng):
  """Model variables drawn with numpy (He-scaled kernels, BN affines away from the identity), the
  BN statistics at their created mean 0 / var 1.

  Compiling the model's own random init costs ~10 s on CPU (a threefry kernel per parameter);
  any reasonable weights serve this test.
  """
  abstract = jax.eval_shape(lambda r: train_state.init_variables(model, r, (SIZE, SIZE, 3)),
                            jax.random.PRNGKey(0))

  def draw(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      return rng.randn(*leaf.shape) * np.sqrt(2.0 / fan_in)
    if name == "scale":
      return rng.uniform(0.5, 1.5, leaf.shape)
    if name == "bias":
      return rng.randn(*leaf.shape) * 0.1
    return np.zeros(leaf.shape) if name == "mean" else np.ones(leaf.shape)

  return jax.tree_util.tree_map_with_path(
      lambda p, x: np.asarray(draw(p, x), x.dtype), abstract)


def _bn_inputs(model, variables, images):
  """{'/'-joined BN module path: [inputs of each call]} from a plain eval-mode forward."""

  @jax.jit
  def record(variables, images):
    seen = {}

    def interceptor(next_fun, args, kwargs, context):
      if isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__":
        seen.setdefault("/".join(context.module.path), []).append(args[0])
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
      model.apply(variables, images, train=False)
    return seen

  return jax.device_get(record(variables, images))


def _bn_paths(batch_stats, prefix=()):
  """'/'-joined paths of the BN modules in a batch_stats tree (the dicts holding 'mean')."""
  if "mean" in batch_stats:
    return {"/".join(prefix): batch_stats}
  out = {}
  for name, sub in batch_stats.items():
    out.update(_bn_paths(sub, prefix + (name,)))
  return out


def test_stored_statistics_are_those_of_each_bn_input(setup):
  model, _, images, calibrated = setup
  stored = _bn_paths(calibrated["batch_stats"])
  inputs = _bn_inputs(model, calibrated, images)
  assert set(inputs) == set(stored) and len(stored) == 15  # every BN of the tiny net, seen once
  assert all(len(calls) == 1 for calls in inputs.values())
  for path, (x,) in inputs.items():
    x = np.asarray(x, np.float64)
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    scale = np.sqrt(var)
    # float32 forward passes compared in float64: agreement to float32 rounding (errors here are
    # ~5e-7; backing the statistics out of a 0.99-momentum update gave ~2e-5).
    np.testing.assert_allclose(stored[path]["mean"], mean, rtol=0, atol=4e-6 * scale.max(),
                               err_msg=path)
    np.testing.assert_allclose(stored[path]["var"], var, rtol=4e-6, err_msg=path)
    # Not the initial identity statistics: calibration did change every layer.
    assert not np.allclose(stored[path]["var"], 1.0, rtol=1e-2), path


def test_parameters_and_structure_unchanged(setup):
  _, variables, _, calibrated = setup
  assert set(calibrated) == set(variables)
  assert jax.tree.structure(calibrated["batch_stats"]) == jax.tree.structure(
      variables["batch_stats"])
  for a, b in zip(jax.tree.leaves(calibrated["params"]), jax.tree.leaves(variables["params"])):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(calibrated["batch_stats"]),
                  jax.tree.leaves(variables["batch_stats"])):
    assert a.shape == b.shape and a.dtype == b.dtype
