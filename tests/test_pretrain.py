"""The pretrain stage (stage 0, ppc_jax/pretrain/): the class-folder and TFDS readers, the
synthetic pretext set, the loss against numpy, the schedule, the step sharded over 8 devices
(equal to 1 device) and in bfloat16, training through `python -m ppc_jax.train` with an exact
resume, and the hand-over of the pretrained backbone to a stage-1 SeamNet (ResNet38) and to a
ResNet-101 DeepLab. The two-process run of the stage: tests/test_multihost_pretrain.py."""

import io
import json
import os
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

import e2e_fixtures as e2e
from ppc_jax import config_lib
from ppc_jax import models
from ppc_jax import optim
from ppc_jax import pretrained
from ppc_jax import sharding as shd
from ppc_jax import stages
from ppc_jax import train_state
from ppc_jax import trainer
from ppc_jax.data import synth
from ppc_jax.data import synth_classes
from ppc_jax.data import voc
from ppc_jax.data import voc_meta
from ppc_jax.models.batchnorm import TorchBatchNorm
from ppc_jax.pretrain import data
from ppc_jax.pretrain import defaults
from ppc_jax.pretrain import schedule as schedule_lib
from ppc_jax.pretrain import step as step_lib

# One worker runs the module: its fixtures (the pretext set, the training runs) are made once.
pytestmark = pytest.mark.xdist_group("pretrain")

ROOT = e2e.ROOT
NUM_CLASSES = 6
# The demo config shrunk to seconds: 1/32 width, one block per stage, 32 px crops, 4 steps of
# one image per fake device, an evaluation after steps 2 and 4.
TINY = ["--config.model.width_divisor=32", "--config.model.stage_blocks=(1, 1, 1, 1)",
        f"--config.model.num_classes={NUM_CLASSES}", "--config.input.batch_size=8",
        "--config.input.crop_size=32", "--config.input.num_parallel_calls=2",
        "--config.pretrain.eval_size=32", "--config.pretrain.eval_batch_size=8",
        "--config.pretrain.eval_every_steps=2", "--config.infer.max_images=12",
        "--config.log_every_steps=1", "--config.ckpt_every_steps=2",
        "--config.ckpt_max_to_keep=5", "--config.progress_bar=False"]


# ------------------------------------------------------------------------------------------------
# Fixtures.
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pretext(tmp_path_factory):
  """The synthetic pretext set: 6 classes, 4 training and 2 validation images each, 24-32 px."""
  return synth_classes.generate(str(tmp_path_factory.mktemp("pretext")), num_train=4, num_val=2,
                                min_size=24, max_size=32, num_classes=NUM_CLASSES, seed=3)


def _write_png(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  PIL.Image.fromarray(array).save(path)


def _write_jpeg(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  PIL.Image.fromarray(array).save(path, quality=95)


def _folder_config(root, **pretrain):
  """A 'pretrain' config on class folders with fields of the tests' choosing."""
  config = defaults.pretrain_config(backbone="resnet38", num_classes=2, batch_size=2,
                                    crop_size=16)
  config.pretrain.source = "folders"
  config.pretrain.folder_dir = str(root)
  config.infer.split = "val"
  config.input.num_parallel_calls = 1
  config.pretrain.eval_size = 16
  config.pretrain.eval_batch_size = 4
  config.pretrain.update(pretrain)
  return config


def _normalized(array):
  mean = np.asarray(voc_meta.IMAGENET_MEAN, np.float32)
  std = np.asarray(voc_meta.IMAGENET_STD, np.float32)
  return (array.astype(np.float32) / 255.0 - mean) / std


# ------------------------------------------------------------------------------------------------
# The class-folder reader.
# ------------------------------------------------------------------------------------------------


def _two_class_tree(root):
  """train: 'cat' (3 PNGs) and 'ant' (2 JPEGs); val: one of each. 16x16 images, known pixels."""
  rng = np.random.default_rng(0)
  images = {}
  for split, counts in (("train", {"cat": 3, "ant": 2}), ("val", {"cat": 1, "ant": 1})):
    for name, count in counts.items():
      for k in range(count):
        array = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        if name == "cat":
          path = os.path.join(root, split, name, f"{k}.png")
          _write_png(path, array)
        else:
          # Smooth content: JPEG keeps it within a few levels.
          array = np.full((16, 16, 3), 40 * (k + 1), np.uint8)
          path = os.path.join(root, split, name, f"{k}.jpg")
          _write_jpeg(path, array)
        images[path] = array
  return images


def test_folder_source_lists_sorted_classes_and_reads_png_and_jpeg(tmp_path):
  images = _two_class_tree(tmp_path)
  source = data.FolderSource(str(tmp_path), "train")
  assert source.classes == ("ant", "cat") and source.num_examples == 5
  assert list(source.labels) == [0, 0, 1, 1, 1]
  val = data.FolderSource(str(tmp_path), "val", classes=source.classes)
  assert list(val.labels) == [0, 1]
  for i, path in enumerate(source.paths):
    encoded, label = source.read(i)
    assert label == source.labels[i] and encoded == open(path, "rb").read()
    assert path in images


def test_the_eval_crop_of_a_whole_square_image_is_the_image(tmp_path):
  """Central crop of the whole short side (fraction 1) at the image's own size: the normalised
  pixels themselves, in split order, each example once, the last batch padded with weight 0."""
  images = _two_class_tree(tmp_path)
  config = _folder_config(tmp_path, eval_crop_fraction=1.0)
  source = data.FolderSource(str(tmp_path), "train")
  batches, num_batches, count = data.make_eval_iterator(config, source, process_index=0,
                                                        process_count=1)
  with batches:
    got = [next(batches) for _ in range(num_batches)]
  assert (num_batches, count) == (2, 5)
  weight = np.concatenate([b["weight"] for b in got])
  label = np.concatenate([b["label"] for b in got])
  image = np.concatenate([b["image"] for b in got])
  np.testing.assert_array_equal(weight, [1, 1, 1, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(label[:5], source.labels)
  for i, path in enumerate(source.paths):
    tol = 0 if path.endswith(".png") else 0.1  # JPEG: a few levels of 255 after normalising
    np.testing.assert_allclose(image[i], _normalized(images[path]), atol=tol + 1e-5)


def test_train_crops_of_the_whole_image_are_the_image_or_its_mirror(tmp_path):
  images = _two_class_tree(tmp_path)
  config = _folder_config(tmp_path, area_range=(1.0, 1.0), aspect_range=(1.0, 1.0))
  source = data.FolderSource(str(tmp_path), "train")
  config.input.batch_size = 5
  with data.make_train_iterator(config, source, process_index=0, process_count=1) as it:
    batch = next(it)
  assert batch["image"].shape == (5, 16, 16, 3) and batch["label"].dtype == np.int32
  by_label = {}
  for image, label in zip(batch["image"], batch["label"]):
    by_label.setdefault(int(label), []).append(image)
  for path in source.paths:
    if not path.endswith(".png"):
      continue
    want = _normalized(images[path])
    match = [np.allclose(got, want, atol=1e-5) for got in by_label[1]]
    mirror = [np.allclose(got, want[:, ::-1], atol=1e-5) for got in by_label[1]]
    assert any(match) or any(mirror), path
  assert sorted(batch["label"].tolist()) == [0, 0, 1, 1, 1]  # one epoch: each example once


def test_train_order_resumes_exactly_and_processes_split_the_global_batch(pretext):
  config = _folder_config(pretext, area_range=(0.25, 1.0))
  config.input.batch_size = 4
  source = data.FolderSource(pretext, "train")

  def batches(start, n, process_index=0, process_count=1):
    with data.make_train_iterator(config, source, start_step=start, process_index=process_index,
                                  process_count=process_count) as it:
      return [next(it) for _ in range(n)]

  full = batches(0, 8)  # 24 images, batch 4: two epochs
  for a, b in zip(full[5:], batches(5, 3)):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  halves = [batches(5, 1, p, 2)[0] for p in (0, 1)]
  np.testing.assert_array_equal(np.concatenate([h["image"] for h in halves]), full[5]["image"])
  assert not np.array_equal(full[0]["image"], full[6]["image"])  # epochs differ


@pytest.mark.parametrize("case,where,message", [
    ("missing", "", "class-folder directory does not exist"),
    ("no_split", "train", "no split 'train'"),
    ("empty_split", "train", "no class folders"),
    ("stray_file", "train", "files outside class folders (notes.txt)"),
    ("empty_class", "train/cat", "no images in this class folder"),
    ("not_an_image", "train/cat", "not an image file: list.csv"),
    ("unknown_val_class", "val", "class folders ['dog'] are not among"),
])
def test_malformed_trees_are_errors_naming_the_directory(tmp_path, case, where, message):
  root = tmp_path / "folders"
  pixel = np.zeros((4, 4, 3), np.uint8)
  if case != "missing":
    os.makedirs(root)
  if case not in ("missing", "no_split"):
    os.makedirs(root / "train")
  if case in ("stray_file", "empty_class", "not_an_image", "unknown_val_class"):
    _write_png(str(root / "train" / "ant" / "0.png"), pixel)
    os.makedirs(root / "train" / "cat")
  if case == "stray_file":
    _write_png(str(root / "train" / "cat" / "0.png"), pixel)
    (root / "train" / "notes.txt").write_text("x")
  if case == "not_an_image":
    _write_png(str(root / "train" / "cat" / "0.png"), pixel)
    (root / "train" / "cat" / "list.csv").write_text("x")
  if case == "unknown_val_class":
    _write_png(str(root / "train" / "cat" / "0.png"), pixel)
    _write_png(str(root / "val" / "dog" / "0.png"), pixel)
  config = _folder_config(root)
  split = "val" if case == "unknown_val_class" else "train"
  with pytest.raises(voc.DataError) as e:
    data.open_source(config, split)
  assert message in str(e.value)
  assert e.value.path == str(root / where if where else root).rstrip("/")


def test_an_unreadable_image_is_an_error_naming_the_file(tmp_path):
  _two_class_tree(tmp_path)
  bad = tmp_path / "train" / "cat" / "1.png"
  bad.write_bytes(b"not a png")
  config = _folder_config(tmp_path)
  source = data.FolderSource(str(tmp_path), "train")
  config.input.batch_size = 5
  with pytest.raises(voc.DataError, match="1.png: cannot open image"):
    with data.make_train_iterator(config, source, process_index=0, process_count=1) as it:
      next(it)


# ------------------------------------------------------------------------------------------------
# A TFDS image-classification set (a tiny builder writing real JPEGs).
# ------------------------------------------------------------------------------------------------


class PretrainTinyClasses(tfds.core.GeneratorBasedBuilder):
  """Three classes, six training and three validation 20x24 JPEGs (a stand-in for ImageNet)."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(encoding_format="jpeg"),
        "label": tfds.features.ClassLabel(names=["n01", "n02", "n03"])}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(6, 0), "validation": self._generate_examples(3, 1)}

  def _generate_examples(self, count, seed):
    rng = np.random.default_rng(seed)
    for i in range(count):
      yield i, {"image": rng.integers(0, 256, (20, 24, 3), dtype=np.uint8), "label": i % 3}


def test_a_tfds_set_is_read_by_name_record_by_record(tmp_path):
  data_dir = str(tmp_path / "tfds")
  config = _folder_config(tmp_path)
  config.pretrain.update(source="tfds", tfds_name="pretrain_tiny_classes",
                         tfds_data_dir=data_dir)
  config.infer.split = "validation"
  config.model.num_classes = 3
  source = data.open_source(config, "train")  # prepares it (array_record) on first use
  assert source.classes == ("n01", "n02", "n03") and source.num_examples == 6
  records = tfds.builder("pretrain_tiny_classes", data_dir=data_dir).as_data_source("train")
  encoded, label = source.read(4)
  decoded = np.asarray(PIL.Image.open(io.BytesIO(encoded)))
  np.testing.assert_array_equal(decoded, records[4]["image"])
  assert label == records[4]["label"] == 1
  config.input.batch_size = 3
  with data.make_train_iterator(config, source, process_index=0, process_count=1) as it:
    batch = next(it)
  assert batch["image"].shape == (3, 16, 16, 3) and np.isfinite(batch["image"]).all()
  val = data.open_source(config, "validation")
  batches, num_batches, count = data.make_eval_iterator(config, val, process_index=0,
                                                        process_count=1)
  with batches:
    labels = next(batches)["label"]
  want = [r["label"] for r in tfds.builder("pretrain_tiny_classes", data_dir=data_dir)
          .as_data_source("validation")]
  assert (num_batches, count) == (1, 3) and labels[:3].tolist() == want


def test_a_tfds_set_without_random_access_names_the_conversion(tmp_path):
  data_dir = str(tmp_path / "tfds_tfrecord")
  PretrainTinyClasses(data_dir=data_dir, file_format="tfrecord").download_and_prepare()
  with pytest.raises(ValueError, match="tfds convert_format --dataset_version_dir=.*"
                     "--out_file_format=array_record"):
    data.TFDSSource("pretrain_tiny_classes", "train", data_dir=data_dir)


# ------------------------------------------------------------------------------------------------
# The synthetic pretext set.
# ------------------------------------------------------------------------------------------------


def test_pretext_set_layout_classes_and_determinism(pretext, tmp_path):
  names = synth_classes.class_names()
  assert len(names) == 48 and list(names) == sorted(names)
  # None of them is a segmentation class of the synthetic VOC set (or of VOC).
  assert not set(names) & (set(voc_meta.CAT_LIST) | set(synth.DEFAULT_CLASSES))
  assert sorted(os.listdir(pretext)) == ["synth_classes.json", "train", "val"]
  for split, count in (("train", 4), ("val", 2)):
    assert sorted(os.listdir(os.path.join(pretext, split))) == list(names[:NUM_CLASSES])
    for name in names[:NUM_CLASSES]:
      files = sorted(os.listdir(os.path.join(pretext, split, name)))
      assert files == [f"{name}_{k:04d}.jpg" for k in range(count)]
  with open(os.path.join(pretext, "synth_classes.json"), encoding="utf-8") as f:
    assert json.load(f)["classes"] == list(names[:NUM_CLASSES])
  assert data.FolderSource(pretext, "train").classes == names[:NUM_CLASSES]
  # The command line, as docs/pretrain.md prints it, writes the same bytes for the same seed;
  # another seed other images.
  again = str(tmp_path / "again")
  proc = subprocess.run(
      [sys.executable, "-m", "ppc_jax.data.synth_classes", "--out", again, "--num_train", "4",
       "--num_val", "2", "--min_size", "24", "--max_size", "32", "--classes", str(NUM_CLASSES),
       "--seed", "3"], cwd=ROOT, capture_output=True, text=True, timeout=e2e.PROCESS_TIMEOUT_S,
      check=False)
  assert proc.returncode == 0 and "wrote 36 images of 6 classes" in proc.stdout, proc.stderr
  other = synth_classes.generate(str(tmp_path / "other"), num_train=1, num_val=0, min_size=24,
                                 max_size=32, num_classes=1, seed=4)
  name = names[0]
  first = os.path.join("train", name, f"{name}_0000.jpg")
  for split, count in (("train", 4), ("val", 2)):
    for n in names[:NUM_CLASSES]:
      for k in range(count):
        rel = os.path.join(split, n, f"{n}_{k:04d}.jpg")
        with open(os.path.join(pretext, rel), "rb") as a, open(os.path.join(again, rel),
                                                               "rb") as b:
          assert a.read() == b.read(), rel
  with open(os.path.join(pretext, first), "rb") as a, open(os.path.join(other, first), "rb") as b:
    assert a.read() != b.read()


def test_every_pretext_class_renders_in_range_and_differs_from_the_others():
  rng_images = {}
  for name in synth_classes.class_names():
    image = synth_classes.render(name, np.random.default_rng(0), 40, 48)
    assert image.shape == (40, 48, 3) and image.dtype == np.uint8
    assert image.std() > 2.0, name  # a pattern, not a flat colour
    rng_images[name] = image
  assert len({im.tobytes() for im in rng_images.values()}) == 48


# ------------------------------------------------------------------------------------------------
# Model, loss and schedule.
# ------------------------------------------------------------------------------------------------


def test_cross_entropy_equals_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 3, (5, 7)).astype(np.float32)
  labels = rng.integers(0, 7, 5)
  shifted = logits - logits.max(-1, keepdims=True)
  log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  np.testing.assert_allclose(step_lib.cross_entropy(logits, labels),
                             -log_p[np.arange(5), labels], rtol=1e-6)
  q = np.full((5, 7), 0.1 / 7) + 0.9 * np.eye(7)[labels]
  np.testing.assert_allclose(step_lib.cross_entropy(logits, labels, 0.1),
                             -(q * log_p).sum(-1), rtol=1e-6)


def _tiny_classifier(backbone="resnet38", num_classes=5):
  config = defaults.model_config(backbone=backbone, num_classes=num_classes, width_divisor=32)
  config.stage_blocks = (1, 1, 1, 1)
  config.layers = (1, 1, 1, 1)
  return models.build_model(config)


class _ConvBNClassifier(nn.Module):
  """A stand-in for `Classifier` that compiles in a moment: conv, torch-mode BN, ReLU, pool,
  dense; the same output and the same 'batch_stats' handling."""

  @nn.compact
  def __call__(self, x, *, train=False):
    x = nn.Conv(4, (3, 3), use_bias=False, name="conv")(x)
    x = nn.relu(TorchBatchNorm(name="bn")(x, use_batch_stats=train))
    return {"logits": nn.Dense(5, name="fc")(jnp.mean(x, axis=(1, 2)))}


def test_train_step_loss_and_top1_equal_numpy_on_a_random_batch():
  """The step's loss is the mean softmax cross entropy of the logits the model gives in training
  mode (batch-statistics BN) on that batch; top-1 their argmax accuracy."""
  model = _ConvBNClassifier()
  config = defaults.pretrain_schema()
  variables = jax.jit(lambda r: train_state.init_variables(model, r, (8, 8, 3)))(
      jax.random.PRNGKey(0))
  tx, schedule, groups = schedule_lib.make_optimizer(config, 10, 5, variables["params"])
  state = train_state.create_state(variables, tx)
  rng = np.random.default_rng(1)
  batch = {"image": rng.normal(size=(6, 8, 8, 3)).astype(np.float32),
           "label": rng.integers(0, 5, 6).astype(np.int32)}
  new_state, metrics = jax.jit(step_lib.make_train_step(model, tx, schedule, groups))(
      state, batch, jax.random.PRNGKey(2))
  out, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
      variables, batch["image"])
  logits = np.asarray(out["logits"], np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  want = -np.mean(log_p[np.arange(6), batch["label"]])
  np.testing.assert_allclose(float(metrics["loss"]), want, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["top1"]),
                             np.mean(logits.argmax(-1) == batch["label"]))
  np.testing.assert_allclose(float(metrics["lr"]), float(schedule(0)))
  # The running BN statistics of the new state are the ones this forward pass updated.
  np.testing.assert_allclose(new_state["batch_stats"]["bn"]["mean"],
                             updates["batch_stats"]["bn"]["mean"], rtol=1e-6)
  assert int(new_state["step"]) == 1


def test_classifier_outputs_logits_of_both_backbones():
  for backbone in ("resnet38", "resnet101"):
    model = _tiny_classifier(backbone, num_classes=3)
    shapes = jax.eval_shape(lambda r, m=model: m.init(r, jnp.zeros((2, 32, 32, 3))),
                            jax.random.PRNGKey(0))
    out = jax.eval_shape(lambda v, m=model: m.apply(v, jnp.zeros((2, 32, 32, 3))), shapes)
    assert out["logits"].shape == (2, 3) and out["logits"].dtype == jnp.float32
    assert set(shapes["params"]) == {"backbone", "fc"}


def test_schedule_warmup_cosine_step_and_the_optimizer_state_of_every_stage():
  config = defaults.pretrain_schema()
  config.optim.lr = 0.4
  config.pretrain.warmup_epochs = 1.0
  sched, warmup, _ = schedule_lib.lr_schedule(config, 100, 10)
  assert warmup == 10
  np.testing.assert_allclose([float(sched(t)) for t in (0, 4, 9)], [0.04, 0.2, 0.4], rtol=1e-6)
  for t in (10, 37, 99):
    np.testing.assert_allclose(float(sched(t)), 0.2 * (1 + np.cos(np.pi * (t - 10) / 90)),
                               rtol=1e-5, atol=1e-7)
  config.pretrain.update(schedule="step", warmup_epochs=0.0, step_epochs=(3.0, 6.0),
                         step_factor=0.1)
  sched, _, boundaries = schedule_lib.lr_schedule(config, 100, 10)
  assert boundaries == (30, 60)
  np.testing.assert_allclose([float(sched(t)) for t in (0, 29, 30, 59, 60, 99)],
                             [0.4, 0.4, 0.04, 0.04, 0.004, 0.004], rtol=1e-6)
  # Weight decay on the weights only; the state has the structure of every stage's optimizer,
  # so the shared restore (built from `optim.make_optimizer`) reads a pretraining checkpoint.
  params = jax.eval_shape(lambda r: _tiny_classifier().init(r, jnp.zeros((1, 16, 16, 3))),
                          jax.random.PRNGKey(0))["params"]
  tx, _, groups = schedule_lib.make_optimizer(config, 100, 10, params)
  flat = {optim.path_str(p): g for p, g in jax.tree_util.tree_leaves_with_path(groups)}
  assert flat["fc/bias"] == flat["backbone/bn7/scale"] == "no_decay"
  assert flat["fc/kernel"] == flat["backbone/conv1a/kernel"] == "weights"
  shared, _, _ = optim.make_optimizer(config.optim, 100, params)
  assert (jax.tree.structure(tx.init(params)) == jax.tree.structure(shared.init(params)))


# ------------------------------------------------------------------------------------------------
# The step sharded over the mesh and in bfloat16.
# ------------------------------------------------------------------------------------------------

STEP_CROP = 32
STEP_BATCH = 8  # one image per fake device


def _tiny_pretrain_step(dtype="float32"):
  """A tiny Classifier (ResNet38 at 1/32 width, one block per stage, NUM_CLASSES classes), its
  variables for 32 px crops (host arrays: the jitted step donates its state) and the unjitted
  pretraining step of the schema's recipe (SGD + momentum, weight decay) at its full lr 0.1 from
  step 0 (no warm-up): full-size updates feed any rounding difference back at full strength."""
  config = defaults.pretrain_schema()
  config.model.update(num_classes=NUM_CLASSES, width_divisor=32, stage_blocks=(1, 1, 1, 1),
                      dtype=dtype)
  config.pretrain.warmup_epochs = 0.0
  model = models.build_model(config.model)
  variables = jax.device_get(jax.jit(lambda r: train_state.init_variables(
      model, r, (STEP_CROP, STEP_CROP, 3)))(jax.random.PRNGKey(0)))
  tx, schedule, groups = schedule_lib.make_optimizer(config, 10, 5, variables["params"])
  return model, variables, tx, step_lib.make_train_step(model, tx, schedule, groups)


def _random_batch(seed=0):
  rng = np.random.default_rng(seed)
  return {"image": rng.normal(size=(STEP_BATCH, STEP_CROP, STEP_CROP, 3)).astype(np.float32),
          "label": rng.integers(0, NUM_CLASSES, STEP_BATCH).astype(np.int32)}


def _sharded_steps(step, variables, tx, batch, num_devices, steps=2):
  """`steps` steps jitted as the trainer jits them (`train_state.jit_train_step`: batch sharded
  on the 'data' axis of a `num_devices` mesh, state replicated); host state and metrics."""
  mesh = shd.make_mesh(num_devices)
  state = jax.device_put(train_state.create_state(variables, tx), shd.replicated(mesh))
  jitted = train_state.jit_train_step(step, mesh)
  metrics = []
  with jax.set_mesh(mesh):
    global_batch = shd.to_global(batch, shd.batch_sharding(mesh))
    for _ in range(steps):
      state, m = jitted(state, global_batch, jax.random.PRNGKey(3))
      metrics.append(jax.device_get(m))
  return jax.device_get(state), metrics


def test_sharded_pretrain_step_equals_single_device():
  """Two steps on 8 devices (one image each) equal the same two steps on 1 device.

  Error analysis. Both programs compute the same math on the same 8 images; what differs is how
  the sums over the batch are split: the BN batch statistics (global-batch: the mean and
  variance over all 8 x h x w positions, one all-reduce each), the mean loss and every
  parameter's gradient (a sum over the batch) are 8 per-device partial sums plus an all-reduce
  instead of one sum. Reordering an fp32 sum changes it by a few ulps of its terms' scale
  (unit roundoff u = 2^-24 = 6e-8 relative). So step 1's loss and top-1 see the initial state
  through BN statistics that differ by ~u, and its gradients differ by a few ulps as well, small
  against updates of <= 0.06 at lr 0.1; applying the update rounds the parameter itself (1 ulp =
  1.2e-7 for |w| in [1, 2): the BN scales start at 1). Step 2 adds the same again, fed through
  the network once. Measured (4 batches, 1 vs 8 devices; 1 vs 2 and 4 alike at a 10x smaller
  lr): loss <= 1.2e-7 absolute (1 ulp of ~1.8), grad_norm <= 7e-8 relative, parameters <=
  1.2e-7 absolute (1 ulp of the BN scales; ~2e-8 on near-zero weights), BN running statistics
  <= 6e-8 absolute, top-1 equal.
  Bounds: |a - b| <= 1e-6 + 1e-5 |b|, >= 8x every measured difference (>= 100x for the loss,
  ~2); the absolute part covers values near zero, which carry absolute, not relative, error.
  top-1 exactly: an argmax flips only when the top two logits are within the ~1e-7 logit
  difference; their smallest gap on this batch is ~1e-2 (measured, both steps).
  """
  assert jax.device_count() == 8
  _, variables, tx, step = _tiny_pretrain_step()
  batch = _random_batch()
  state8, metrics8 = _sharded_steps(step, variables, tx, batch, 8)
  state1, metrics1 = _sharded_steps(step, variables, tx, batch, 1)
  assert int(state8["step"]) == int(state1["step"]) == 2
  for k, (m8, m1) in enumerate(zip(metrics8, metrics1), start=1):
    assert float(m8["top1"]) == float(m1["top1"]), k
    for key in ("loss", "grad_norm", "lr"):
      np.testing.assert_allclose(m8[key], m1[key], rtol=1e-5, atol=1e-6, err_msg=(k, key))
  assert float(metrics1[1]["loss"]) < float(metrics1[0]["loss"])  # the steps do train
  for col in ("params", "batch_stats"):
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(state8[col]),
                            jax.tree.leaves(state1[col])):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6,
                                 err_msg=f"{col}/{optim.path_str(path)}")
  # The BN statistics moved (global-batch statistics of the two forward passes).
  assert e2e.max_abs_diff(state1["batch_stats"], variables["batch_stats"]) > 1e-3


STEP1_RTOL, STEP2_RTOL = 1e-3, 5e-3


def test_bf16_classifier_keeps_float32_logits_and_parameters_and_fp32_loss():
  """model.dtype='bfloat16': the backbone computes in bfloat16, the logits come out float32
  (float32 pooling and classifier), parameters, BN statistics and optimizer state stay float32,
  and the losses of the first two steps (the initial state's, and the state's after one update)
  are close to the float32 run's.

  Tolerances: bf16 keeps 8 significand bits, so every stored activation is rounded by up to
  2^-9 = 0.2 % relative; over the backbone's ~20 layers the pooled features, and the logits,
  move by ~1 % of their own scale (measured: <= 1.5e-3 on logits of ~0.13). Near the uniform
  softmax of step 1 the loss moves by mean_i sum_k (p_ik - y_ik) dz_ik, whose terms cancel in
  sign: measured (4 batches) <= 1.2e-4 relative; bound STEP1_RTOL = 1e-3 (~9x). The loss after
  one update also carries the bf16 gradient's ~1 % error times the full lr 0.1 (parameter updates
  of up to 0.06): measured <= 7.9e-4 relative (this batch, the largest of the 4);
  bound STEP2_RTOL = 5e-3 (~6x). (The gap keeps growing with more steps: 3.9e-3 at step 3.)
  """
  batch, rng = _random_batch(), jax.random.PRNGKey(3)
  losses = {}
  for dtype in ("float32", "bfloat16"):
    model, variables, tx, step = _tiny_pretrain_step(dtype)
    out = jax.eval_shape(lambda v, x, m=model: m.apply(v, x, train=True,
                                                       mutable=["batch_stats"])[0],
                         variables, batch["image"])
    assert out["logits"].dtype == jnp.float32 and out["features"].dtype == jnp.float32
    state = train_state.create_state(variables, tx)
    step = jax.jit(step)
    losses[dtype] = []
    for _ in range(2):
      state, metrics = step(state, batch, rng)
      losses[dtype].append(float(metrics["loss"]))
    state = jax.device_get(state)
    for col in ("params", "batch_stats", "opt_state"):
      dtypes = {leaf.dtype for leaf in jax.tree.leaves(state[col])
                if jnp.issubdtype(leaf.dtype, jnp.floating)}
      assert dtypes == {np.dtype(np.float32)}, (dtype, col, dtypes)
  for k, (l16, l32, rtol) in enumerate(zip(losses["bfloat16"], losses["float32"],
                                             (STEP1_RTOL, STEP2_RTOL)), start=1):
    assert abs(l16 - l32) <= rtol * abs(l32), (k, l16, l32)
  assert losses["bfloat16"] != losses["float32"]  # the switch is real: bf16 changes the numbers


# ------------------------------------------------------------------------------------------------
# Training: `python -m ppc_jax.train`, checkpoints, exact resume, periodic evaluation.
# ------------------------------------------------------------------------------------------------


def _train_cli(tmp_path_factory, name, config_arg, extra=()):
  """Runs `python -m ppc_jax.train --config=configs/pretrain_demo.py:<arg>` with TINY."""
  cache = e2e.compile_cache_dir(tmp_path_factory)
  workdir = str(tmp_path_factory.mktemp(name))
  argv = [f"--config={os.path.join(ROOT, 'configs', 'pretrain_demo.py')}:{config_arg}", *TINY,
          f"--config.compilation_cache_dir={cache}", *extra]
  log = os.path.join(workdir + "_log.txt")
  proc = e2e.start_train(argv[0].split("=", 1)[1], workdir, log, e2e.subprocess_env(cache, 8),
                         extra_flags=argv[1:])
  (code,) = e2e.wait_all([proc], [log])
  assert code == 0, e2e.tail(log)
  return dict(workdir=workdir, config=e2e.parse_train_flags(argv), log=e2e.read_text(log),
              argv=argv, env=e2e.subprocess_env(cache, 8))


def _initial_state(config):
  """A later stage's step-0 state (its `config.init` applied), as host arrays."""
  recipe = train_state.build_recipe(config, 10)
  mesh = shd.make_mesh()
  return jax.device_get(trainer.initial_state(config, recipe.model, recipe.tx, mesh,
                                              jax.random.PRNGKey(7)))


def _check_logs_checkpoints_and_evaluations(run):
  workdir = run["workdir"]
  assert e2e.checkpoint_steps(workdir) == [2, 4]
  rows = e2e.metric_rows(workdir)
  train_rows = [r for r in rows if "loss" in r]
  eval_rows = [r for r in rows if "eval_top1" in r]
  assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
  assert [r["step"] for r in eval_rows] == [2, 4]
  for row in train_rows:
    assert np.isfinite(row["loss"]) and 0.0 <= row["top1"] <= 1.0 and row["lr"] > 0
  assert all(r["eval_images"] == 12 for r in eval_rows)
  with open(os.path.join(workdir, "eval_val.json"), encoding="utf-8") as f:
    final = json.load(f)
  assert final["step"] == 4 and final["eval_top1"] == eval_rows[-1]["eval_top1"]
  # The stage's inference, `python -m ppc_jax.pretrain.evaluate` as docs/pretrain.md prints it,
  # evaluates the same checkpoint to the same numbers (same programs on the same 8 devices: the
  # loss may differ only by its fp32 summation order, ~1e-7 relative).
  out_dir = os.path.join(workdir, "again")
  proc = subprocess.run(
      [sys.executable, "-m", "ppc_jax.pretrain.evaluate", *run["argv"], f"--workdir={workdir}",
       "--split=val", f"--out_dir={out_dir}"], cwd=ROOT, capture_output=True, text=True,
      env=run["env"], timeout=e2e.PROCESS_TIMEOUT_S, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "on 12 images of val (step 4)" in proc.stdout, proc.stdout
  with open(os.path.join(out_dir, "eval_val.json"), encoding="utf-8") as f:
    again = json.load(f)
  assert again["eval_top1"] == final["eval_top1"]
  np.testing.assert_allclose(again["eval_loss"], final["eval_loss"], rtol=1e-6)


def _check_exact_resume(run, workdir):
  """Stopped after step 2 (its checkpoint kept), restarted in this process: the losses of
  steps 3 and 4, the final parameters and the final evaluation equal the uninterrupted run's."""
  config = run["config"]
  shutil.copytree(run["workdir"], workdir)
  shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))
  os.remove(os.path.join(workdir, "eval_val.json"))
  metrics = stages.of(config).train(config, workdir)
  rows = {(r["step"], "eval_top1" in r): r for r in e2e.metric_rows(workdir)}
  ref = {(r["step"], "eval_top1" in r): r for r in e2e.metric_rows(run["workdir"])}
  for step in (3, 4):
    assert rows[(step, False)]["loss"] == ref[(step, False)]["loss"], step
    assert rows[(step, False)]["top1"] == ref[(step, False)]["top1"], step
  assert rows[(4, True)]["eval_top1"] == ref[(4, True)]["eval_top1"] == metrics["eval_top1"]
  resumed = e2e.load_state(config, workdir)
  uninterrupted = e2e.load_state(config, run["workdir"])
  assert e2e.max_abs_diff(resumed["params"], uninterrupted["params"]) == 0.0
  assert e2e.max_abs_diff(resumed["batch_stats"], uninterrupted["batch_stats"]) == 0.0
  # A finished run: nothing is trained or evaluated again.
  assert stages.of(config).train(config, workdir)["eval_top1"] == metrics["eval_top1"]
  return uninterrupted


def test_cli_run_evaluates_resumes_exactly_and_hands_its_resnet38_to_stage1(
    pretext, tmp_path_factory, tmp_path):
  """One test for the one training run (the suite's xdist groups do not keep a module on one
  worker, so a fixture shared by several tests could be trained twice)."""
  run = _train_cli(tmp_path_factory, "pretrain_r38", f"steps=4,data_dir={pretext}")
  _check_logs_checkpoints_and_evaluations(run)
  pretrained_state = _check_exact_resume(run, str(tmp_path / "resumed"))
  # Stage 1 (configs/demo.py at the test width) with init.backbone_workdir = this run: its
  # step-0 backbone is exactly the pretrained one, BN statistics included; its heads keep their
  # initialisation.
  config = e2e.tiny_config(str(tmp_path))  # no data is read
  assert config.model.width_divisor == 32 and tuple(config.model.stage_blocks) == (1, 1, 1, 1)
  config.init.calibrate_bn_images = 0
  config.init.backbone_workdir = run["workdir"]
  state = _initial_state(config)
  for col in ("params", "batch_stats"):
    assert e2e.max_abs_diff(state[col]["backbone"], pretrained_state[col]["backbone"]) == 0.0
  assert "fc8" in state["params"] and "fc" not in state["params"]


def test_a_backbone_of_another_structure_is_named_by_its_first_differing_parameter():
  ours = {"b2": {"kernel": np.zeros((3, 3, 2, 4), np.float32)}, "bn7": {"scale": np.ones(4)}}
  assert pretrained._first_difference(ours, ours) == ""  # pylint: disable=protected-access
  wider = {"b2": {"kernel": np.zeros((3, 3, 2, 8), np.float32)}, "bn7": {"scale": np.ones(4)}}
  assert pretrained._first_difference(ours, wider) == (  # pylint: disable=protected-access
      "backbone/b2/kernel: (3, 3, 2, 4) float32 here, (3, 3, 2, 8) float32 there")
  deeper = dict(ours, b2_1={"kernel": np.zeros((1,), np.float32)})
  assert pretrained._first_difference(ours, deeper).startswith(  # pylint: disable=protected-access
      "backbone/b2_1/kernel: absent here")


def test_deeplab_resnet101_starts_from_the_pretrained_resnet101(pretext, tmp_path_factory):
  """One step of the deep-stem ResNet-101 classifier, trained in this process by the stage's
  trainer (as `python -m ppc_jax.train` calls it), then a ResNet-101 DeepLab from it."""
  e2e.compile_cache_dir(tmp_path_factory)
  run_config = e2e.parse_train_flags([
      f"--config={os.path.join(ROOT, 'configs', 'pretrain_demo.py')}:steps=1,data_dir={pretext}",
      *TINY, "--config.model.backbone=resnet101", "--config.model.layers=(1, 1, 1, 1)",
      "--config.pretrain.eval_every_steps=0", "--config.infer.max_images=8"])
  r101_run = dict(workdir=str(tmp_path_factory.mktemp("pretrain_r101")), config=run_config)
  metrics = stages.of(run_config).train(run_config, r101_run["workdir"])
  assert e2e.checkpoint_steps(r101_run["workdir"]) == [1]
  assert metrics["eval_images"] == 8 and np.isfinite(metrics["loss"])
  arg = config_lib.parse_arg("runlocal", **config_lib.VARIANT_DEFAULTS)
  config = config_lib.segmentation_config(arg, backbone="resnet101", head="v1")
  config.model.width_divisor = 32
  config.model.layers = (1, 1, 1, 1)
  config.input.crop_size = 32
  config.init.backbone_workdir = r101_run["workdir"]
  state = _initial_state(config)
  pretrained_state = e2e.load_state(r101_run["config"], r101_run["workdir"])
  for col in ("params", "batch_stats"):
    assert e2e.max_abs_diff(state[col]["backbone"], pretrained_state[col]["backbone"]) == 0.0
  assert "conv_fov" in state["params"]
  # The saved run config says which stage made it: the classifier resolves from its package.
  saved = pretrained.load_run_config(r101_run["workdir"])
  assert saved.stage == "pretrain" and saved.model.name == "classifier"
