"""Shared fixtures of the data tests: a tiny synthetic VOC tree on disk (made once per session).

Import the fixtures into a test module with `from data_fixtures import synth_root, voc_copy`.
"""

import hashlib
import os
import shutil

import numpy as np
import pytest

from ppc_jax.data import synth

# Tiny but complete: every split, saliency, XML; images 40-64 px so a pipeline step is cheap.
TINY = dict(num_train_aug=24, num_train=8, num_val=8, min_size=40, max_size=64, seed=3)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
  """VOC2012 root of a read-only (by convention) tiny synthetic tree."""
  return synth.generate(str(tmp_path_factory.mktemp("synth_voc")), **TINY)


@pytest.fixture
def voc_copy(synth_root, tmp_path):
  """A private copy of the tiny tree that a test may damage."""
  dst = os.path.join(str(tmp_path), "VOC2012")
  shutil.copytree(synth_root, dst)
  return dst


def input_config(root, **overrides):
  """A small `config.input` for the tiny tree (crop 32, view 2 at 16, long side 32-64)."""
  from ppc_jax import config_lib  # pylint: disable=import-outside-toplevel
  cfg = config_lib.seeds_input_config()
  cfg.update(dict(data_dir=root, batch_size=4, crop_size=32, view2_size=16, resize_long=(32, 64)))
  cfg.num_parallel_calls = 2
  for k, v in overrides.items():
    cfg[k] = v
  return cfg


def take(cfg, n, source=None, **kw):
  """The first n batches of a single-process (unless given) training iterator."""
  from ppc_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  kw.setdefault("process_index", 0)
  kw.setdefault("process_count", 1)
  with pipeline.make_train_iterator(cfg, source, **kw) as it:
    return [next(it) for _ in range(n)]


def digest(batches):
  """sha256 over the keys and bytes of a list of batch dicts."""
  h = hashlib.sha256()
  for b in batches:
    for k in sorted(b):
      h.update(k.encode())
      h.update(np.ascontiguousarray(b[k]).tobytes())
  return h.hexdigest()
