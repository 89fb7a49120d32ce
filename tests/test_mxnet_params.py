"""MXNet `.params` reader / writer (no mxnet) and loading the ImageNet ResNet38 from it."""

import hashlib
import os
import struct

import jax
import ml_dtypes
import numpy as np
import pytest

from ppc_jax import mxnet_params
from ppc_jax import untrusted
from ppc_jax import weights
from ppc_jax.models import SeamNet
from test_weights import HEADS, TINY, assert_trees_equal, random_like, shapes_of
from test_weights import torch_key_to_mxnet

REAL_DIR = os.path.join(os.path.dirname(__file__), "data", "mxnet")


def hand_built_list():
  """Bytes of a 3-array named list written field by field from the format description in
  `ppc_jax/mxnet_params.py` (not through its writer): a legacy float32 [2, 3], a V2 float16 [4]
  and a V1 int32 [1, 1, 2], then the names."""
  a = np.arange(6, dtype="<f4").reshape(2, 3) / 7
  b = np.array([0.5, -2, 65504, 1e-3], "<f2")
  c = np.array([[[-7, 2**30]]], "<i4")
  out = struct.pack("<QQ", 0x112, 0) + struct.pack("<Q", 3)
  out += struct.pack("<III", 2, 2, 3) + struct.pack("<ii", 1, 0) + struct.pack("<i", 0)
  out += a.tobytes()
  out += struct.pack("<Ii", 0xF993FAC9, 0) + struct.pack("<Iq", 1, 4)
  out += struct.pack("<iii", 2, 3, 2) + b.tobytes()          # a gpu(3) context, as saved on GPU
  out += struct.pack("<I", 0xF993FAC8) + struct.pack("<Iqqq", 3, 1, 1, 2)
  out += struct.pack("<iii", 1, 0, 4) + c.tobytes()
  names = [b"arg:a_weight", b"aux:b_moving_var", "\u00e9".encode()]
  out += struct.pack("<Q", 3) + b"".join(struct.pack("<Q", len(n)) + n for n in names)
  return out, {"arg:a_weight": a, "aux:b_moving_var": b, "\u00e9": c}


def test_reads_a_hand_built_file(tmp_path):
  data, expected = hand_built_list()
  path = tmp_path / "hand.params"
  path.write_bytes(data)
  arrays, names, headers = mxnet_params.read_ndarray_list(path)
  assert names == list(expected) and headers == ["legacy", "v2", "v1"]
  for got, want in zip(arrays, expected.values()):
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
  assert list(mxnet_params.load_params(path)) == list(expected)
  # The writer's encoding of each array under the same header reads back equal (array by
  # array, as one file mixes three headers; the bytes differ only in the saved context).
  for (name, arr), header in zip(expected.items(), headers):
    one = mxnet_params.encode_params({name: arr}, header=header)
    got, = mxnet_params.parse_ndarray_list("mem", one)[0]
    np.testing.assert_array_equal(got, arr)


@pytest.mark.parametrize("header", mxnet_params.HEADERS)
@pytest.mark.parametrize("dtype", ["float32", "float16", "float64", "int64", "uint8", "bfloat16"])
def test_round_trip(tmp_path, header, dtype):
  rng = np.random.default_rng(0)
  np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
  arrays = {f"arg:w{i}": (rng.normal(size=shape) * 50).astype(np_dtype)
            for i, shape in enumerate([(3, 2, 3, 3), (5,), (1, 7)])}
  path = tmp_path / "x.params"
  mxnet_params.save_params(arrays, path, header=header)
  back, names, headers = mxnet_params.read_ndarray_list(path)
  assert names == list(arrays) and headers == [header] * 3
  for got, want in zip(back, arrays.values()):
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def test_unnamed_list_and_empty_arrays(tmp_path):
  path = tmp_path / "unnamed.params"
  path.write_bytes(mxnet_params.encode_params([np.ones(2, np.float32)], header="v2"))
  arrays, names, _ = mxnet_params.read_ndarray_list(path)
  assert names == [] and len(arrays) == 1
  with pytest.raises(untrusted.UntrustedFileError, match=f"{path}.*unnamed list of 1 arrays"):
    mxnet_params.load_params(path)
  # A "none" array (rank 0 in the V2 sense): its shape and nothing else.
  none_v2 = (struct.pack("<QQQ", 0x112, 0, 1) + struct.pack("<IiI", 0xF993FAC9, 0, 0)
             + struct.pack("<QQ", 1, 1) + b"e")
  path.write_bytes(none_v2)
  (arr,), names, _ = mxnet_params.read_ndarray_list(path)
  assert names == ["e"] and arr.size == 0


def test_md5_check(tmp_path):
  data, _ = hand_built_list()
  path = tmp_path / "hand.params"
  path.write_bytes(data)
  good = hashlib.md5(data).hexdigest()
  assert len(mxnet_params.load_params(path, md5=good.upper())) == 3
  with pytest.raises(untrusted.UntrustedFileError, match=f"{path}: md5 {good} differs from the "
                     f"expected {mxnet_params.RESNET38_A1_MD5}"):
    mxnet_params.load_params(path, md5=mxnet_params.RESNET38_A1_MD5)


def test_every_truncation_is_a_named_error(tmp_path):
  data, _ = hand_built_list()
  path = tmp_path / "cut.params"
  for n in range(len(data)):
    path.write_bytes(data[:n])
    with pytest.raises(untrusted.UntrustedFileError, match=f"^{path}: ") as info:
      mxnet_params.read_ndarray_list(path)
    assert "truncated" in str(info.value) or "only" in str(info.value) or n < 16, (n, info.value)
  path.write_bytes(data + b"\0")
  with pytest.raises(untrusted.UntrustedFileError, match="1 bytes after the last name"):
    mxnet_params.read_ndarray_list(path)


def test_other_formats_and_crafted_headers(tmp_path):
  bad = tmp_path / "bad.params"
  cases = {
      "random": np.random.default_rng(1).bytes(4096),
      "zip (a torch .pth)": b"PK\x03\x04" + b"\0" * 100,
      "npy": b"\x93NUMPY\x01\x00" + b"\0" * 100,
  }
  for what, payload in cases.items():
    bad.write_bytes(payload)
    with pytest.raises(untrusted.UntrustedFileError, match=f"^{bad}: .*not an MXNet .params"):
      mxnet_params.read_ndarray_list(bad)
  head = struct.pack("<QQ", 0x112, 0)
  crafted = {
      # An array count of 2^60: refused before any allocation.
      "array count says": head + struct.pack("<Q", 2**60),
      # A legacy rank of 5 with dims whose product is 2^40 floats: the data cannot be there.
      "truncated: data of array 0": head + struct.pack("<QI5I", 1, 5, *(256,) * 5)
                                    + struct.pack("<iii", 1, 0, 0),
      "sparse storage type 1": head + struct.pack("<QIi", 1, 0xF993FAC9, 1),
      "type flag 99": head + struct.pack("<QII", 1, 1, 2) + struct.pack("<iii", 1, 0, 99),
      "negative dimension": head + struct.pack("<QIiIq", 1, 0xF993FAC9, 0, 1, -4),
      "2 names for 1 arrays": (head + struct.pack("<QII", 1, 1, 1) + struct.pack("<iii", 1, 0, 3)
                               + b"x" + struct.pack("<QQ", 2, 1) + b"a" + struct.pack("<Q", 1)
                               + b"b"),
      "name 0 is not UTF-8": (head + struct.pack("<QII", 1, 1, 1) + struct.pack("<iii", 1, 0, 3)
                              + b"x" + struct.pack("<QQ", 1, 1) + b"\xff"),
  }
  for message, payload in crafted.items():
    bad.write_bytes(payload)
    with pytest.raises(untrusted.UntrustedFileError, match=f"^{bad}: .*{message}"):
      mxnet_params.read_ndarray_list(bad)
  bad.write_bytes(head + struct.pack("<QII", 2, 1, 1) + struct.pack("<iii", 1, 0, 3) + b"x"
                  + struct.pack("<II", 1, 1) + struct.pack("<iii", 1, 0, 3) + b"y"
                  + struct.pack("<QQ", 2, 1) + b"a" + struct.pack("<Q", 1) + b"a")
  with pytest.raises(untrusted.UntrustedFileError, match="the name 'a' occurs twice"):
    mxnet_params.load_params(bad)
  with pytest.raises(FileNotFoundError, match="missing.params"):
    mxnet_params.load_params(tmp_path / "missing.params")
  with pytest.raises(untrusted.UntrustedFileError, match=f"{tmp_path}: is a directory"):
    mxnet_params.load_params(tmp_path)


def model_a1_file(path, variables, *, header, dtype=np.float32):
  """Writes a SeamNet's backbone as ademxapp's Model A1 `.params` would hold it (names, OIHW,
  BN moving statistics under 'aux:', the 1000-way classifier), through the test-side inverse of
  the reference renaming. Returns the written {name: array}."""
  sd = weights.to_torch_state_dict(variables, num_batches_tracked=False)
  arrays = {torch_key_to_mxnet(k): a.astype(dtype) for k, a in sd.items() if k not in HEADS}
  width = sd["bn7.weight"].shape[0]
  arrays["arg:linear1000_weight"] = np.ones((1000, width), dtype)
  arrays["arg:linear1000_bias"] = np.ones((1000,), dtype)
  mxnet_params.save_params(arrays, path, header=header)
  return arrays


@pytest.mark.parametrize("header,dtype", [("legacy", np.float32), ("v2", np.float16)])
def test_imagenet_backbone_load(tmp_path, header, dtype):
  shapes = shapes_of(SeamNet(**TINY))
  pretrained = random_like(shapes, seed=3)
  path = tmp_path / "a1.params"
  model_a1_file(path, pretrained, header=header, dtype=dtype)
  init = random_like(shapes, seed=4)
  out = weights.from_mxnet_file(path, template=init)
  # The backbone equals the file's values (float16 widened exactly to the model's float32) ...
  as_stored = jax.tree.map(lambda a: a.astype(dtype).astype(np.float32), pretrained)
  assert_trees_equal(out["params"]["backbone"], as_stored["params"]["backbone"])
  assert_trees_equal(out["batch_stats"], as_stored["batch_stats"])
  # ... and every head keeps its initialisation (the classifier is dropped).
  for head in ("fc8", "f8_3", "f8_4", "f9", "fc_proj"):
    np.testing.assert_array_equal(out["params"][head]["kernel"], init["params"][head]["kernel"])
  assert out["params"]["backbone"]["conv1a"]["kernel"].dtype == np.float32


def test_imagenet_backbone_must_match(tmp_path):
  shapes = shapes_of(SeamNet(**TINY))
  init = random_like(shapes, seed=4)
  path = tmp_path / "a1.params"
  arrays = model_a1_file(path, init, header="v2")
  partial = {k: v for k, v in arrays.items() if k != "aux:bn7_moving_var"}
  mxnet_params.save_params(partial, path)
  with pytest.raises(untrusted.UntrustedFileError,
                     match=f"{path}: .*backbone variables the file lacks: bn7.running_var"):
    weights.from_mxnet_file(path, template=init)
  # A deeper network's block (the full ResNet38's b4_5 in a tiny model's file).
  mxnet_params.save_params(dict(arrays, **{"arg:res4b5_branch2a_weight": np.zeros(
      (1, 1, 3, 3), np.float32)}), path)
  with pytest.raises(untrusted.UntrustedFileError, match="no place in the model: b4_5"):
    weights.from_mxnet_file(path, template=init)
  mxnet_params.save_params({"arg:fc9_weird": np.zeros(1, np.float32)}, path)
  with pytest.raises(untrusted.UntrustedFileError, match=f"{path}: .*'arg:fc9_weird'"):
    weights.from_mxnet_file(path, template=init)
  wrong_shape = dict(arrays, **{"arg:conv1a_weight": np.zeros((1, 3, 3, 3), np.float32)})
  mxnet_params.save_params(wrong_shape, path)
  with pytest.raises(untrusted.UntrustedFileError, match=f"{path}: shape mismatch.*conv1a"):
    weights.from_mxnet_file(path, template=init)


def test_trainer_starts_from_the_mxnet_file(tmp_path):
  """`--config.init.mxnet_params=...`: the trainer's state holds the file's backbone (replicated
  over the mesh), the heads keep the seeded initialisation, and the md5 option is enforced."""
  import e2e_fixtures as e2e  # pylint: disable=g-import-not-at-top
  from ppc_jax import models, optim, sharding as shd, train_state, trainer  # pylint: disable=g-import-not-at-top

  config = e2e.tiny_config(str(tmp_path / "unused"))
  model = models.build_model(config.model)
  shape = (config.input.crop_size, config.input.crop_size, 3)
  rng = jax.random.PRNGKey(config.seed)
  abstract = jax.eval_shape(lambda r: train_state.init_variables(model, r, shape), rng)
  tx, _, _ = optim.make_optimizer(config.optim, 10, abstract["params"])
  mesh = shd.make_mesh(None)
  fresh = jax.device_get(trainer.initial_state(config, model, tx, mesh, rng))
  pretrained = random_like({"params": abstract["params"], "batch_stats": abstract["batch_stats"]},
                           seed=5)
  path = tmp_path / "a1.params"
  model_a1_file(path, pretrained, header="legacy")

  config.init.mxnet_params = str(path)
  state = trainer.initial_state(config, model, tx, mesh, rng)
  assert state["params"]["backbone"]["conv1a"]["kernel"].sharding.is_fully_replicated
  state = jax.device_get(state)
  assert_trees_equal(state["params"]["backbone"], pretrained["params"]["backbone"])
  assert_trees_equal(state["batch_stats"], pretrained["batch_stats"])
  assert_trees_equal(state["params"]["fc8"], fresh["params"]["fc8"])
  assert int(state["step"]) == 0

  config.init.mxnet_md5 = hashlib.md5(path.read_bytes()).hexdigest()
  trainer.initial_state(config, model, tx, mesh, rng)
  config.init.mxnet_md5 = "a1"
  with pytest.raises(untrusted.UntrustedFileError, match=mxnet_params.RESNET38_A1_MD5):
    trainer.initial_state(config, model, tx, mesh, rng)
  config.init.torch_checkpoint = str(tmp_path / "x.pth")
  with pytest.raises(ValueError, match="expected at most one source of pretrained weights"):
    trainer.initial_state(config, model, tx, mesh, rng)


@pytest.mark.parametrize("name,expected_names", [
    ("legacy_ndarray.v0", None),                 # legacy headers, unnamed
    ("djl_two_arrays_dict.params", ["x", "y"]),  # V2
    ("mx191_v2_dtypes.params", "npz"),           # V2, eight dtypes, float16 among them
    ("mx191_v3_np.params", "npz"),               # V3: scalar, zero-size
])
def test_real_files_written_by_mxnet(name, expected_names):
  path = os.path.join(REAL_DIR, name)
  stem = name[:-len(".params")] if name.endswith(".params") else name
  with np.load(os.path.join(REAL_DIR, stem + ".expected.npz")) as z:
    expected = {k: z[k] for k in z.files}
  arrays, names, headers = mxnet_params.read_ndarray_list(path)
  if expected_names is None:
    assert names == [] and headers == ["legacy"] * len(arrays)
    names = [f"arr_{i}" for i in range(len(arrays))]   # np.savez's names for a list
  else:
    assert names == (list(expected) if expected_names == "npz" else expected_names)
    assert len(set(headers)) == 1 and headers[0] in ("v2", "v3")
  assert len(arrays) == len(expected)
  for n, got in zip(names, arrays):
    assert got.dtype == expected[n].dtype and got.shape == expected[n].shape, n
    np.testing.assert_array_equal(got, expected[n], err_msg=n)


def test_real_sparse_file_is_refused():
  path = os.path.join(REAL_DIR, "mx191_v2_sparse.params")
  with pytest.raises(untrusted.UntrustedFileError, match=f"{path}: .*sparse storage type 1"):
    mxnet_params.read_ndarray_list(path)
