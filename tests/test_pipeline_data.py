"""The pipeline's data stage never writes into a user's data set.

The synthetic set is generated only into a directory that is absent, empty or marked as made by
the generator; an existing tree is only read (its files hashed before and after), and a missing
cls_labels.npy is an error naming the path and the command that makes it.
"""

import hashlib
import json
import os

import pytest

import e2e_fixtures as e2e
from ppc_jax import pipeline
from ppc_jax.data import synth
from ppc_jax.data import voc

SMALL = dict(num_train_aug=6, num_train=3, num_val=2, min_size=40, max_size=48, seed=3)


def _hashes(root):
  """{relative path: sha256} of every file under root."""
  out = {}
  for d, _, files in os.walk(root):
    for name in files:
      path = os.path.join(d, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
  return out


def _user_tree(tmp_path):
  """A VOC-layout tree that the generator did not make (as a user's would be): the ids clash with
  the synthetic set's, and its cls_labels.npy sits one level up, as in the issue's report."""
  root = synth.generate(str(tmp_path / "user"), **dict(SMALL, seed=11, min_size=50,
                                                       max_size=60))
  os.rename(os.path.join(root, voc.CLS_LABELS_FILE),
            os.path.join(os.path.dirname(root), voc.CLS_LABELS_FILE))
  return root


def _demo_config(data_dir):
  config = e2e.tiny_pipeline_config()
  config.input.data_dir = data_dir
  return config


def test_existing_tree_without_labels_is_read_only_and_named(tmp_path):
  root = _user_tree(tmp_path)
  parent = os.path.dirname(os.path.dirname(root))
  before = _hashes(parent)
  with pytest.raises(FileNotFoundError) as error:
    pipeline.run_pipeline(_demo_config(root), str(tmp_path / "work"), stop_after="data")
  message = str(error.value)
  assert os.path.join(root, voc.CLS_LABELS_FILE) in message
  assert f"python -m ppc_jax.data.make_cls_labels --voc_root={root}" in message
  assert _hashes(parent) == before  # no file written, changed or added
  assert not os.path.exists(os.path.join(str(tmp_path / "work"), "pipeline", "data.json"))


def test_existing_tree_with_labels_is_used_as_it_is(tmp_path, caplog):
  root = _user_tree(tmp_path)
  os.rename(os.path.join(os.path.dirname(root), voc.CLS_LABELS_FILE),
            os.path.join(root, voc.CLS_LABELS_FILE))
  before = _hashes(os.path.dirname(os.path.dirname(root)))
  caplog.set_level("INFO")
  results = pipeline.run_pipeline(_demo_config(root), str(tmp_path / "work"), stop_after="data")
  assert _hashes(os.path.dirname(os.path.dirname(root))) == before
  data = results["data"]
  assert data["synthetic"] is False and data["generated"] is False
  assert data["classes"][:2] == ["background", "aeroplane"]
  assert data["classes_from"] == os.path.join(root, voc.CLASSES_FILE)
  assert any("21 classes from" in r.getMessage() and "tvmonitor" in r.getMessage()
             for r in caplog.records)  # the class list in use is logged


def test_synthetic_set_only_where_absent_empty_or_its_own(tmp_path):
  settings = dict(SMALL, aspect_range=(0.75, 1.0))
  absent = str(tmp_path / "absent" / "VOC2012")
  assert synth.generate_owned(absent, settings) == "generated"
  with open(os.path.join(absent, synth.OWNER_FILE), encoding="utf-8") as f:
    assert json.load(f)["complete"] is True
  first = _hashes(absent)
  assert synth.generate_owned(absent, settings) == "kept"
  assert _hashes(absent) == first
  # Its own, interrupted half-way (the marker says incomplete): generated again, same files.
  with open(os.path.join(absent, synth.OWNER_FILE), "w", encoding="utf-8") as f:
    json.dump({"complete": False, "settings": json.loads(json.dumps(settings))}, f)
  os.remove(os.path.join(absent, voc.CLS_LABELS_FILE))
  assert synth.generate_owned(absent, settings) == "generated"
  assert _hashes(absent) == first
  empty = tmp_path / "empty"
  empty.mkdir()
  assert synth.generate_owned(str(empty), settings) == "generated"
  # Someone's directory: refused, nothing touched.
  other = tmp_path / "other"
  other.mkdir()
  (other / "notes.txt").write_text("mine")
  with pytest.raises(FileExistsError, match="not a synthetic set"):
    synth.generate_owned(str(other), settings)
  assert sorted(os.listdir(other)) == ["notes.txt"]
