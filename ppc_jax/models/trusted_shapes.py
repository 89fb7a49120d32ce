"""Tracing Flax models without Flax's per-parameter shape re-check, where shapes were checked.

On every `apply`, Flax's `Scope.param` re-derives the shape of each existing parameter by a
`jax.eval_shape` of its initialiser. In a trace of an inference program that is a large share of
the tracing (DeepLab at 6 scales: 390 parameters, ~0.15 of ~0.35 CPU-s per program), paid once
per image size. The inference engine traces one program per size, always from variables that
`restore` read against the stage's abstract variables, so the re-check repeats a check made.

`skip_param_shape_checks()` turns the re-check off for the calling thread only (the engine's
compile threads); every other thread, and this one outside the block, keeps Flax's behaviour.
The traced program is the same either way (tests/test_inference.py compares the HLO text).
"""

import contextlib
import threading

from flax.core import meta
from flax.core import scope as flax_scope

_state = threading.local()
_install_lock = threading.Lock()
_flax_param = flax_scope.Scope.param


def _param(self, name, init_fn, *init_args, unbox=True, **init_kwargs):
  """`Scope.param`, returning an existing parameter unchecked inside `skip_param_shape_checks`."""
  if getattr(_state, "skip", False) and self.has_variable("params", name):
    self.reserve(name, "params")
    value = self.get_variable("params", name)
    return meta.unbox(value) if unbox else value
  return _flax_param(self, name, init_fn, *init_args, unbox=unbox, **init_kwargs)


def _install():
  with _install_lock:
    if flax_scope.Scope.param is not _param:
      flax_scope.Scope.param = _param


@contextlib.contextmanager
def skip_param_shape_checks():
  """In this thread, Flax returns existing parameters without re-deriving their shapes.

  Only for variables whose shapes were already checked against the model (a restore with the
  stage's abstract target): a wrong shape is then met by the first op that uses it, with JAX's
  error instead of Flax's `ScopeParamShapeError`. A missing parameter still raises Flax's error.
  """
  _install()
  before = getattr(_state, "skip", False)
  _state.skip = True
  try:
    yield
  finally:
    _state.skip = before
