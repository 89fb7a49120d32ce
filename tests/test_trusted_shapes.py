"""ppc_jax.models.trusted_shapes: Flax's per-parameter shape re-check off in one thread only, the
traced program unchanged (the engine's results against the per-image programs, which keep the
check: tests/test_inference.py)."""

import threading

import flax.linen as nn
from flax import errors as flax_errors
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppc_jax import models
from ppc_jax import train_state
from ppc_jax.models import trusted_shapes


_INIT_CALLS = []  # the shapes _Counted's initialiser was called with


def _counted_init(key, shape, dtype=jnp.float32):
  _INIT_CALLS.append(shape)
  return jax.random.normal(key, shape, dtype)


class _Counted(nn.Module):
  """A dense layer whose initialiser records its calls (Flax's re-check calls it in apply)."""

  @nn.compact
  def __call__(self, x):
    return x @ self.param("kernel", _counted_init, (x.shape[-1], 3))


def _variables():
  return _Counted().init(jax.random.PRNGKey(0), jnp.ones((2, 4)))


def test_the_initialiser_runs_in_apply_only_outside_the_block():
  variables = _variables()
  model = _Counted()
  x = jnp.ones((2, 4))
  calls = _INIT_CALLS
  del calls[:]
  want = model.apply(variables, x)
  assert calls == [(4, 3)]  # Flax's eval_shape of the initialiser
  with trusted_shapes.skip_param_shape_checks():
    got = model.apply(variables, x)
  assert calls == [(4, 3)]
  np.testing.assert_array_equal(got, want)
  model.apply(variables, x)  # the check is back after the block
  assert calls == [(4, 3), (4, 3)]


def test_wrong_shapes_and_missing_parameters():
  variables = _variables()
  wrong = {"params": {"kernel": jnp.ones((5, 3))}}
  with pytest.raises(flax_errors.ScopeParamShapeError, match="kernel"):
    _Counted().apply(wrong, jnp.ones((2, 4)))
  with trusted_shapes.skip_param_shape_checks():
    # Unchecked, the first op that uses the parameter refuses it.
    with pytest.raises(TypeError, match="dot_general"):
      _Counted().apply(wrong, jnp.ones((2, 4)))
    with pytest.raises(flax_errors.ScopeParamNotFoundError, match="kernel"):
      _Counted().apply({"params": {"other": variables["params"]["kernel"]}},
                            jnp.ones((2, 4)))


def test_other_threads_keep_the_check_and_blocks_nest():
  wrong = {"params": {"kernel": jnp.ones((5, 3))}}
  errors = []

  def other_thread():
    try:
      _Counted().apply(wrong, jnp.ones((2, 4)))
    except flax_errors.ScopeParamShapeError as e:
      errors.append(e)

  with trusted_shapes.skip_param_shape_checks():
    with trusted_shapes.skip_param_shape_checks():
      pass
    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    with pytest.raises(TypeError):  # still skipped here after the inner block
      _Counted().apply(wrong, jnp.ones((2, 4)))
  assert len(errors) == 1
  with pytest.raises(flax_errors.ScopeParamShapeError):
    _Counted().apply(wrong, jnp.ones((2, 4)))


def test_a_network_traces_to_the_same_program():
  model = models.get_model("affinity_net", width_divisor=32, stage_blocks=(1, 1, 1, 1))
  variables = train_state.init_variables(model, jax.random.PRNGKey(0), (24, 24, 3))
  def program():  # a new function each time: no trace cached by jit
    def features(v, x):
      return model.apply(v, x, train=False)["features"]
    return jax.jit(features)

  x = jax.ShapeDtypeStruct((1, 20, 28, 3), jnp.float32)
  want = program().lower(variables, x).as_text()
  with trusted_shapes.skip_param_shape_checks():
    got = program().lower(variables, x).as_text()
  assert got == want
