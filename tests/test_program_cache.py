"""ppc_jax.program_cache: fingerprints, the file cache, and the engine loading programs from it.

Why the engine's results can be asserted bit for bit equal with and without the cache: a program
loaded from the cache is the export of the same jaxpr, lowered to the same StableHLO and called
from a wrapper that XLA inlines; XLA compiles the same computation, so every float operation is
the same (on the 8 fake CPU devices of tests/conftest.py, sub-meshes included).
"""

import functools
import importlib
import logging
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import config_dict

from ppc_jax import inference
from ppc_jax import models
from ppc_jax import program_cache
from ppc_jax import train_state
from ppc_jax.ops import resize
from ppc_jax.refine import rw_infer
from ppc_jax.segment import seg_infer

TRACES = []  # sizes traced by _toy_compute, in this process


def _toy_compute(variables, inputs, size, *, gain):
  """A per-image function with a convolution and a resize to the image size."""
  TRACES.append(tuple(size))
  y = jax.lax.conv_general_dilated(inputs[None], variables["w"], (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return resize.resize_bilinear(jnp.tanh(y) * gain, size, align_corners=False)[0]


def _toy_spec(size):
  return jax.ShapeDtypeStruct((size[0] // 2 + 1, size[1] // 2 + 1, 3), jnp.float32)


def _toy_inputs(size, n):
  rng = np.random.RandomState(sum(size) + n)
  return [rng.normal(size=_toy_spec(size).shape).astype(np.float32) for _ in range(n)]


def _toy_variables():
  return {"w": np.random.RandomState(0).normal(size=(3, 3, 3, 4)).astype(np.float32)}


def _affinity_compute(width_divisor=32, beta=8):
  model = models.get_model("affinity_net", width_divisor=width_divisor,
                           stage_blocks=(1, 1, 1, 1))
  refine = config_dict.ConfigDict(dict(radius=5, beta=beta, logt=3, bg_mode="power",
                                       bg_value=0.27, bg_power=6.0))
  return functools.partial(rw_infer.mask_of_image, model, refine_config=refine)


def test_a_fingerprint_names_what_a_function_computes():
  fp = program_cache.fingerprint
  assert fp(functools.partial(_toy_compute, gain=2.0)) == fp(
      functools.partial(_toy_compute, gain=2.0))
  assert fp(functools.partial(_toy_compute, gain=2.0)) != fp(
      functools.partial(_toy_compute, gain=3.0))
  # A Flax model by its fields, a ConfigDict by value: equal when built alike, else different.
  assert fp(_affinity_compute()) == fp(_affinity_compute())
  assert fp(_affinity_compute()) != fp(_affinity_compute(width_divisor=16))
  assert fp(_affinity_compute()) != fp(_affinity_compute(beta=10))
  # The random walk's task binds only the walk's fields: its key ignores the refine paths.
  from ppc_jax import config_lib  # pylint: disable=import-outside-toplevel
  refine = config_lib.refine_config()
  walk = lambda rc: functools.partial(  # noqa: E731
      rw_infer.mask_of_image, None, refine_config=rw_infer.walk_settings(rc))
  other_paths, other_beta = (refine.copy_and_resolve_references() for _ in range(2))
  other_paths.cam_dir, other_paths.la_dir, other_beta.beta = "elsewhere/cams", "la", 4.0
  assert fp(walk(refine)) == fp(walk(other_paths)) != fp(walk(other_beta))
  # What it captures cannot be seen: no fingerprint, so the engine traces as without a cache.
  local = lambda v, x, size: x  # noqa: E731
  for fn in (local, functools.partial(_toy_compute, gain=object())):
    with pytest.raises(program_cache.NoFingerprint):
      fp(fn)


def test_a_fingerprint_follows_the_code_outside_the_package(tmp_path, monkeypatch):
  monkeypatch.syspath_prepend(str(tmp_path))
  module_path = tmp_path / "user_compute.py"
  module_path.write_text("def compute(variables, x, size):\n  return x * 2\n")
  module = importlib.import_module("user_compute")
  try:
    before = program_cache.fingerprint(module.compute)
    assert program_cache.fingerprint(module.compute) == before
    module_path.write_text("def compute(variables, x, size):\n  return x * 3\n")
    assert program_cache.fingerprint(module.compute) != before  # the file's bytes are keyed
  finally:
    sys.modules.pop("user_compute", None)


def _exported_toy(size=(8, 10)):
  fn = jax.jit(functools.partial(_toy_compute, size=size, gain=1.0))
  return fn, jax.export.export(fn)(_toy_variables(), _toy_spec(size))


def _avals(exported):
  return tuple((tuple(a.shape), np.dtype(a.dtype)) for a in exported.in_avals)


def test_the_cache_round_trips_and_ignores_damaged_entries(tmp_path, caplog):
  fn, exported = _exported_toy()
  cache = program_cache.ProgramCache(str(tmp_path / "programs"))
  assert cache.get("k", expected_avals=_avals(exported), num_devices=1) is None  # absent
  cache.put("k", exported)
  loaded = cache.get("k", expected_avals=_avals(exported), num_devices=1)
  x = _toy_inputs((8, 10), 1)[0]
  np.testing.assert_array_equal(jax.jit(loaded.call)(_toy_variables(), x),
                                fn(_toy_variables(), x))
  # Another input shape or device count than the key says: a miss, named in the log.
  other = ((_avals(exported)[0][0], np.dtype(np.float32)), ((3, 3, 3), np.dtype(np.float32)))
  with caplog.at_level(logging.WARNING):
    assert cache.get("k", expected_avals=other, num_devices=1) is None
    assert cache.get("k", expected_avals=_avals(exported), num_devices=2) is None
  assert caplog.text.count(cache.path("k")) == 2
  data = open(cache.path("k"), "rb").read()
  damaged = {"flipped byte": data[:-100] + bytes([data[-100] ^ 1]) + data[-99:],
             "truncated": data[:len(data) // 2], "no header": b"\x00" * 64, "empty": b""}
  for what, payload in damaged.items():
    with open(cache.path("k"), "wb") as f:
      f.write(payload)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      assert cache.get("k", expected_avals=_avals(exported), num_devices=1) is None, what
    assert cache.path("k") in caplog.text, what
  cache.put("k", exported)  # rewritten whole
  assert cache.get("k", expected_avals=_avals(exported), num_devices=1) is not None


def test_the_cache_keeps_the_most_recently_used_within_its_limit(tmp_path):
  _, exported = _exported_toy()
  cache = program_cache.ProgramCache(str(tmp_path))
  cache.put("a", exported)
  entry = os.path.getsize(cache.path("a"))
  cache.max_bytes = int(2.5 * entry)
  cache.put("b", exported)
  for name, age in (("a", 30), ("b", 20)):  # a: used longest ago
    t = os.path.getmtime(cache.path(name)) - age
    os.utime(cache.path(name), (t, t))
  assert cache.get("a", expected_avals=_avals(exported), num_devices=1) is not None  # a: now
  cache.put("c", exported)  # 3 entries > 2.5: the least recently used (b) goes
  assert sorted(os.listdir(tmp_path)) == ["a.exported", "c.exported"]


@pytest.mark.parametrize("images_per_device", [1, 2])
def test_the_engine_loads_its_programs_instead_of_tracing(tmp_path, images_per_device):
  variables = _toy_variables()
  compute = functools.partial(_toy_compute, gain=1.5)
  plain = inference.Engine(compute, _toy_spec, variables, images_per_device=images_per_device,
                           program_cache=None)
  calls = [((12, 16), plain.batch_size), ((12, 16), 3), ((9, 20), 1)]  # 8 devices, 2, 1
  want = [plain(_toy_inputs(size, n), size) for size, n in calls]
  runs = []
  for _ in range(2):  # the first engine exports and stores, the second loads
    del TRACES[:]
    engine = inference.Engine(compute, _toy_spec, variables, images_per_device=images_per_device,
                              program_cache=program_cache.ProgramCache(str(tmp_path)))
    got = [engine(_toy_inputs(size, n), size) for size, n in calls]
    for g, w in zip(got, want):
      for a, b in zip(g, w):
        np.testing.assert_array_equal(a, b)
    runs.append((len(TRACES), engine.programs_loaded))
  programs = len({plain.key(n, size) for size, n in calls})
  assert runs == [(programs, 0), (0, programs)]
  assert len(os.listdir(tmp_path)) == programs


def test_segmentation_from_cached_programs_equals_the_traced_program(tmp_path):
  from test_segment_models import flax_model  # pylint: disable=import-outside-toplevel
  model = flax_model("resnet38", "v1", wd=32)
  variables = jax.device_get(train_state.init_variables(model, jax.random.PRNGKey(1),
                                                        (24, 32, 3)))
  scales = (0.5, 1.0, 1.5)
  compute = functools.partial(seg_infer.logits_of_image, model)
  spec = functools.partial(seg_infer.seg_input_spec, scales=scales, flip=True)
  size = (20, 28)
  rng = np.random.RandomState(0)
  inputs = [seg_infer.seg_inputs(rng.normal(size=size + (3,)).astype(np.float32), scales, True)
            for _ in range(2)]
  want = inference.Engine(compute, spec, variables, program_cache=None)(inputs, size)
  for run in range(2):
    engine = inference.Engine(compute, spec, variables,
                              program_cache=program_cache.ProgramCache(str(tmp_path)))
    for a, b in zip(engine(inputs, size), want):
      np.testing.assert_array_equal(a, b)
    assert engine.programs_loaded == run


def test_the_default_cache_sits_beside_the_compilation_cache(tmp_path):
  assert program_cache.default_cache(directory="", max_size=-1, enabled=True) is None
  assert program_cache.default_cache(directory=str(tmp_path), max_size=-1,
                                     enabled=False) is None
  assert program_cache.default_cache(directory="gs://bucket/xla", max_size=-1,
                                     enabled=True) is None
  cache = program_cache.default_cache(directory=str(tmp_path), max_size=8 << 20, enabled=True)
  assert cache.directory == os.path.join(str(tmp_path), program_cache.SUBDIR)
  assert cache.max_bytes == 2 << 20 and os.path.isdir(cache.directory)
  assert program_cache.default_cache(directory=str(tmp_path), max_size=-1,
                                     enabled=True).max_bytes == 0


def test_a_cache_that_cannot_be_written_is_named_and_the_run_goes_on(tmp_path, caplog):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with caplog.at_level(logging.WARNING):
    assert program_cache.default_cache(directory=str(blocker), max_size=-1, enabled=True) is None
  assert str(blocker) in caplog.text
  cache = program_cache.ProgramCache(str(blocker / "programs"))
  variables = _toy_variables()
  compute = functools.partial(_toy_compute, gain=0.5)
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    got = inference.Engine(compute, _toy_spec, variables, program_cache=cache)(
        _toy_inputs((12, 16), 2), (12, 16))
  assert "cannot write" in caplog.text and str(blocker) in caplog.text
  want = inference.Engine(compute, _toy_spec, variables, program_cache=None)(
      _toy_inputs((12, 16), 2), (12, 16))
  for a, b in zip(got, want):
    np.testing.assert_array_equal(a, b)
