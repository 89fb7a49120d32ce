"""torch state_dict <-> Flax variables converter and the MXNet key renaming."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppc_jax import weights
from ppc_jax.models import SeamNet

TINY = dict(width_divisor=16, stage_blocks=(2, 1, 2, 2), proj_dim=16)
HEADS = ("fc8.weight", "f8_3.weight", "f8_4.weight", "f9.weight", "fc_proj.weight")


def shapes_of(model):
  return jax.eval_shape(
      lambda: model.init({"params": jax.random.key(0)}, jnp.zeros((1, 32, 32, 3))))


def random_like(shapes, seed=0):
  """Distinct random values for every leaf (so a swapped or mis-transposed entry shows)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)


@pytest.fixture(scope="module")
def tiny_vars():
  shapes = shapes_of(SeamNet(**TINY))
  return shapes, random_like(shapes)


def assert_trees_equal(a, b):
  fa = flax.traverse_util.flatten_dict(a)
  fb = flax.traverse_util.flatten_dict(b)
  assert set(fa) == set(fb)
  for k in fa:
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=str(k))


def test_layout_and_names(tiny_vars):
  _, v = tiny_vars
  sd = weights.to_torch_state_dict(v)
  p, bs = v["params"], v["batch_stats"]
  kernel = p["backbone"]["b4_1"]["conv_branch2a"]["kernel"]                  # HWIO
  np.testing.assert_array_equal(sd["b4_1.conv_branch2a.weight"], kernel.transpose(3, 2, 0, 1))
  assert sd["b4_1.conv_branch2a.weight"].shape == (32, 32, 3, 3)   # OIHW
  np.testing.assert_array_equal(sd["bn7.weight"], p["backbone"]["bn7"]["scale"])
  np.testing.assert_array_equal(sd["bn7.bias"], p["backbone"]["bn7"]["bias"])
  np.testing.assert_array_equal(sd["bn7.running_mean"], bs["backbone"]["bn7"]["mean"])
  np.testing.assert_array_equal(sd["b6.bn_branch2b2.running_var"],
                                bs["backbone"]["b6"]["bn_branch2b2"]["var"])
  np.testing.assert_array_equal(sd["f9.weight"][:, :, 0, 0], p["f9"]["kernel"][0, 0].T)
  assert sd["bn7.num_batches_tracked"].dtype == np.int64
  assert all(k in sd for k in HEADS)
  assert not any(k.startswith("backbone") for k in sd)
  # same_shape blocks have no shortcut conv; width-changing and bottleneck blocks do.
  assert "b2_1.conv_branch1.weight" not in sd and "b5_1.conv_branch1.weight" not in sd
  assert {"b2.conv_branch1.weight", "b5.conv_branch1.weight", "b7.conv_branch1.weight"} <= set(sd)


def test_round_trip_through_a_torch_file(tiny_vars, tmp_path):
  torch = pytest.importorskip("torch")
  shapes, v = tiny_vars
  sd = weights.to_torch_state_dict(v)
  path = tmp_path / "model.pth"
  weights.save_torch_file(sd, str(path))
  loaded = weights.load_torch_file(str(path))
  assert set(loaded) == set(sd)
  assert_trees_equal(weights.from_torch_state_dict(loaded, template=shapes), v)
  assert_trees_equal(weights.from_torch_state_dict(loaded), v)   # no template: plain rename

  # A DataParallel checkpoint (module. prefix), saved by torch itself, wrapped in a dict.
  dp = {"module." + k: torch.from_numpy(np.array(a)) for k, a in sd.items()}
  torch.save({"state_dict": dp}, str(tmp_path / "dp.pth"))
  loaded = weights.load_torch_file(str(tmp_path / "dp.pth"))
  assert_trees_equal(weights.from_torch_state_dict(loaded, template=shapes), v)


def test_errors_name_the_keys(tiny_vars):
  shapes, v = tiny_vars
  sd = weights.to_torch_state_dict(v)

  missing = {k: a for k, a in sd.items() if k != "b3.conv_branch1.weight"}
  with pytest.raises(ValueError, match=r"missing keys: b3\.conv_branch1\.weight"):
    weights.from_torch_state_dict(missing, template=shapes)

  extra = dict(sd, **{"fc8.bias": np.zeros(21, np.float32), "b9.conv_x.weight": np.zeros(
      (1, 1, 1, 1), np.float32)})
  with pytest.raises(ValueError, match=r"unexpected keys: b9\.conv_x\.weight, fc8\.bias"):
    weights.from_torch_state_dict(extra, template=shapes)
  with pytest.raises(ValueError, match=r"unexpected keys.*fc8\.bias"):
    weights.from_torch_state_dict(extra)   # fc8.bias names nothing even without a template

  bad = dict(sd, **{"fc8.weight": np.zeros((20, 256, 1, 1), np.float32)})
  for strict in (True, False):  # as torch: a shape mismatch raises even when not strict
    with pytest.raises(ValueError, match=r"fc8\.weight: got \(20, 256, 1, 1\), model wants "
                       r"\(21, 256, 1, 1\)"):
      weights.from_torch_state_dict(bad, template=shapes, strict=strict)

  bad_rank = dict(sd, **{"bn7.weight": np.zeros((256, 1), np.float32)})
  with pytest.raises(ValueError, match=r"bn7\.weight \(256, 1\)"):
    weights.from_torch_state_dict(bad_rank)


def test_partial_backbone_load_keeps_head_init(tiny_vars):
  shapes, v = tiny_vars
  backbone_only = {k: a for k, a in weights.to_torch_state_dict(v).items() if k not in HEADS}
  init = random_like(shapes, seed=1)
  with pytest.raises(ValueError, match=r"missing keys: f8_3\.weight, f8_4\.weight, f9\.weight, "
                     r"fc8\.weight, fc_proj\.weight"):
    weights.from_torch_state_dict(backbone_only, template=init)
  out = weights.from_torch_state_dict(backbone_only, template=init, strict=False)
  assert_trees_equal(out["params"]["backbone"], v["params"]["backbone"])
  assert_trees_equal(out["batch_stats"], v["batch_stats"])
  for head in ("fc8", "f8_3", "f8_4", "f9", "fc_proj"):
    np.testing.assert_array_equal(out["params"][head]["kernel"], init["params"][head]["kernel"])
  # Shapes alone cannot fill the heads: a clear error instead of a silent hole.
  with pytest.raises(ValueError, match="has no values to keep"):
    weights.from_torch_state_dict(backbone_only, template=shapes, strict=False)


def torch_key_to_mxnet(key):
  """Test-side inverse of the MXNet renaming (ademxapp Model A1 naming), to build inputs."""
  module, leaf = key.rsplit(".", 1)
  if key == "conv1a.weight":
    return "arg:conv1a_weight"
  mx_bn = {"weight": "arg:{}_gamma", "bias": "arg:{}_beta",
           "running_mean": "aux:{}_moving_mean", "running_var": "aux:{}_moving_var"}
  if module == "bn7":
    return mx_bn[leaf].format("bn7")
  block, layer = module.split(".")
  stage, _, idx = block[1:].partition("_")
  unit = f"{stage}a" if not idx else f"{stage}b{idx}"
  kind, branch = layer.split("_", 1)   # conv / bn, branch2a ...
  if kind == "conv":
    return f"arg:res{unit}_{branch}_weight"
  return mx_bn[leaf].format(f"bn{unit}_{branch}")


def test_convert_mxnet_keys(tiny_vars):
  shapes, v = tiny_vars
  sd = weights.to_torch_state_dict(v, num_batches_tracked=False)
  backbone = {k: a for k, a in sd.items() if k not in HEADS}
  mx = {torch_key_to_mxnet(k): a for k, a in backbone.items()}
  assert "arg:res4b1_branch2a_weight" in mx and "aux:bn5a_branch2b1_moving_var" in mx
  mx["arg:linear1000_weight"] = np.zeros((1000, 256), np.float32)   # dropped
  mx["arg:linear1000_bias"] = np.zeros(1000, np.float32)
  mx["res2a_branch1_weight"] = mx.pop("arg:res2a_branch1_weight")   # prefix-less also works
  renamed = weights.convert_mxnet_keys(mx)
  assert set(renamed) == set(backbone)
  for k in backbone:
    np.testing.assert_array_equal(renamed[k], backbone[k])
  out = weights.from_torch_state_dict(renamed, template=v, strict=False)
  assert_trees_equal(out["params"]["backbone"], v["params"]["backbone"])

  # Full model: the key set of all 106 M backbone parameters survives the round trip.
  full = shapes_of(SeamNet())
  full_keys = {k for k in weights.to_torch_state_dict(
      jax.tree.map(lambda s: np.zeros((1,) * len(s.shape), np.float32), full),
      num_batches_tracked=False) if k not in HEADS}
  # conv1a + 15 ResBlocks x (2 BN x 4 + 2 convs) + 4 shortcut convs + 2 bottlenecks x
  # (3 BN x 4 + 4 convs) + bn7 x 4.
  assert len(full_keys) == 1 + 15 * 10 + 4 + 2 * 16 + 4
  renamed = weights.convert_mxnet_keys({torch_key_to_mxnet(k): np.zeros(1) for k in full_keys})
  assert set(renamed) == full_keys

  with pytest.raises(ValueError, match="'arg:fc9_weird'"):
    weights.convert_mxnet_keys({"arg:fc9_weird": np.zeros(1)})
