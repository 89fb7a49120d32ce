"""Every config file builds, its variants parse, every name in it resolves, and every config
field the code reads or documents exists in every shipped config."""

import ast
import glob
import importlib.util
import os
import re
import typing

import jax
import ml_collections
import pytest

import e2e_fixtures as e2e
from ppc_jax import config_lib
from ppc_jax import models
from ppc_jax import optim
from ppc_jax import pipeline
from ppc_jax import train_state
from ppc_jax.seeds.losses import objective

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))
SEED_KEYS = ("cam", "cam_rv", "cam_down")


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
  if "seeds" in config:  # a pipeline config: its three stage configs
    assert config.refine in pipeline.REFINE_MODES
    for stage in (config.seeds, config.affinity, config.segment):
      _check_experiment_config(stage)
    return
  _check_experiment_config(config)


def _check_experiment_config(config):
  # Model name resolves and the module accepts every model field.
  model = models.build_model(config.model)
  if config.stage == "affinity":
    _check_affinity_config(config, model)
    return
  if config.stage == "segment":
    _check_segment_config(config, model)
    return
  if config.stage == "pretrain":
    _check_pretrain_config(config, model)
    return
  assert config.stage == "seeds"
  # Loss variant and momentum mode resolve.
  assert config.loss.variant in objective.VARIANTS
  assert optim.momentum_value(config.optim) in optim.MOMENTUM.values()
  assert config.optim.momentum_mode in ("reference", "corrected")  # explicit in every config
  # Batch, crop and schedule are coherent; the PPC head exists exactly when PPC is trained.
  assert config.input.batch_size > 0 and config.input.crop_size >= config.input.view2_size
  assert (config.loss.variant in ("seam_ppc", "eps_ppc")) == (config.model.proj_dim is not None)
  assert config.infer.cam_key in SEED_KEYS
  # The full graph traces at the config's own sizes (shapes only, nothing is computed).
  shapes = jax.eval_shape(
      lambda r: train_state.init_variables(model, r, (config.input.crop_size,) * 2 + (3,)),
      jax.random.PRNGKey(0))
  groups = optim.param_groups(shapes["params"], config.optim)
  labels = set(jax.tree.leaves(groups))
  assert {optim.BACKBONE, optim.NEW, optim.FROZEN} <= labels


def _check_segment_config(config, model):
  """A segmentation config: the reference's recipe, and the graph traces at its size."""
  assert config.model.name == "deeplab" and config.model.bn_mode == "batch"
  assert config.optim.momentum_mode == "corrected" and config.optim.poly_max_step == 0
  assert config.optim.poly_max_step_offset == 1  # the reference's (1 - t / (T + 1)) ** 0.9
  assert config.optim.groups.frozen.frozen  # every BN scale / bias, as the reference
  shapes = jax.eval_shape(
      lambda r: train_state.init_variables(model, r, (config.input.crop_size,) * 2 + (3,)),
      jax.random.PRNGKey(0))
  groups = optim.param_groups(shapes["params"], config.optim)
  labels = set(jax.tree.leaves(groups))
  assert {optim.BACKBONE, optim.NEW, optim.NEW_BIAS, optim.FROZEN} <= labels


def _check_pretrain_config(config, model):
  """A classification pretraining config: the backbone of a later stage, weight decay off the BN
  parameters and biases only, and the graph traces at its size."""
  assert config.model.name == "classifier" and config.model.backbone in ("resnet38", "resnet101")
  assert config.pretrain.source in ("tfds", "folders") and config.infer.split != config.input.split
  assert config.pretrain.schedule in ("cosine", "step", "poly")
  assert config.optim.momentum_mode == "corrected"  # torch SGD's momentum, explicit
  shapes = jax.eval_shape(
      lambda r: train_state.init_variables(model, r, (config.input.crop_size,) * 2 + (3,)),
      jax.random.PRNGKey(0))
  assert "backbone" in shapes["params"] and "backbone" in shapes["batch_stats"]
  groups = optim.param_groups(shapes["params"], config.optim)
  assert optim.FROZEN not in set(jax.tree.leaves(groups))  # every parameter trains


def _check_affinity_config(config, model):
  """An AffinityNet config: the reference's stage-2 settings, and the graph traces at its size."""
  assert config.model.name == "affinity_net"
  assert config.input.crop_size % 8 == 0 and config.refine.radius == 5
  assert config.refine.bg_mode in ("constant", "power")
  assert config.optim.momentum_mode in ("reference", "corrected")
  shapes = jax.eval_shape(
      lambda r: train_state.init_variables(model, r, (config.input.crop_size,) * 2 + (3,)),
      jax.random.PRNGKey(0))
  groups = optim.param_groups(shapes["params"], config.optim)
  flat = {optim.path_str(p): g for p, g in jax.tree_util.tree_leaves_with_path(groups)}
  assert {flat[f"{head}/kernel"] for head in ("f8_3", "f8_4", "f8_5", "f9")} == {optim.NEW}
  assert flat["backbone/conv1a/kernel"] == optim.FROZEN
  assert optim.BACKBONE in flat.values()


def _is_pipeline(path):
  return os.path.basename(path).startswith("pipeline_")


@pytest.mark.parametrize("path", [p for p in CONFIG_FILES if "voc12" in p and _is_pipeline(p)],
                         ids=os.path.basename)
def test_pipeline_variants(path):
  module = _load(path)
  local = module.get_config("runlocal,data_dir=somewhere")
  assert local.input.data_dir == "somewhere"
  for stage in (local.seeds, local.affinity, local.segment):
    assert stage.model.width_divisor > 1 and stage.total_steps <= 10
  with pytest.raises(ValueError, match="not one of"):
    module.get_config("runlcoal")


@pytest.mark.parametrize("path", [p for p in CONFIG_FILES if "voc12" in p and not _is_pipeline(p)],
                         ids=os.path.basename)
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


# ------------------------------------------------------------------------------------------------
# Every config field the code reads exists in every shipped config (a static scan of the code).
# ------------------------------------------------------------------------------------------------

# The code scanned: the package, the benchmarks and the studies (they build runs from the shipped
# configs).
SCANNED = sorted(glob.glob(os.path.join(ROOT, "ppc_jax", "**", "*.py"), recursive=True)
                 + glob.glob(os.path.join(ROOT, "bench", "*.py"))
                 + glob.glob(os.path.join(ROOT, "experiments", "*.py")))
# A name or attribute that looks like it holds a config: config, cfg, icfg, input_config,
# loss_cfg, _CONFIG, ... Every attribute chain through such a name must be resolved by the
# bindings below (or an alias of a resolved chain), else the scan fails: it never skips one.
CONFIG_LIKE = re.compile(r"(^|_)(config|cfg)(_|$)|cfg$", re.IGNORECASE)
# The root of a pipeline config's paths (its fields are not an experiment config's).
PIPELINE = ("<pipeline>",)
# Dotted prefixes -> the config path they hold (() = the whole experiment config, ('input',) =
# config.input, ...), or None for things that only look like configs (modules, file paths).
# Keys: (file relative to the repository root, function qualname); '*' matches any; the most
# specific entry wins.
BINDINGS = {
    ("*", "*"): {
        "config": (), "input_config": ("input",), "loss_config": ("loss",),
        "optim_config": ("optim",), "model_config": ("model",),
        "config_lib": None, "config_flags": None, "config_dict": None, "module.get_config": None,
    },
    ("ppc_jax/seeds/losses/objective.py", "objective"): {"config": ("loss",)},
    ("ppc_jax/seeds/losses/objective.py", "_eps_objective"): {"config": ("loss",)},
    ("ppc_jax/seeds/losses/ppc.py", "ppc_losses"): {"config": ("loss", "ppc")},
    ("ppc_jax/config_lib.py", "parse_arg"): {"cfg": None},  # the `:k=v` arguments
    # The section builders: `config` is the section being built.
    ("ppc_jax/config_lib.py", "seeds_input_config"): {"config": ("input",)},
    ("ppc_jax/config_lib.py", "cam_infer_config"): {"config": ("infer",)},
    ("ppc_jax/config_lib.py", "parse_config_flags"): {"values.config": ()},
    # A plain dict copy of config.model: every field becomes a module attribute.
    ("ppc_jax/models/__init__.py", "build_model"): {"cfg": None},
    # The saved config of an earlier run (any stage) whose backbone is handed over.
    ("ppc_jax/pretrained.py", "backbone_from_workdir"): {"run_config": ()},
    ("ppc_jax/train.py", "*"): {"_CONFIG.value": ()},
    ("ppc_jax/demo.py", "*"): {"_CONFIG.value": ()},
    ("ppc_jax/convert.py", "main"): {"f.config": ()},
    ("ppc_jax/seeds/infer.py", "main"): {"f.config": ()},
    ("ppc_jax/refine/rw_infer.py", "main"): {"f.config": ()},
    ("ppc_jax/seeds/infer.py", "cam_task"): {"infer_config": ("infer",)},
    ("ppc_jax/refine/rw_infer.py", "*"): {"refine_config": ("refine",)},
    # The pipeline reads its own kind of config (PIPELINE: configs/pipeline_*.py); its stage
    # configs are experiment configs.
    ("ppc_jax/pipeline.py", "*"): {"config": PIPELINE, "seeds_cfg": (), "aff_cfg": (),
                                   "seg_cfg": ()},
    ("ppc_jax/pipeline.py", "main"): {"flags.FLAGS.config": PIPELINE},
    ("ppc_jax/demo.py", "main"): {"config": PIPELINE},
    ("ppc_jax/config_lib.py", "pipeline_config"): {"config": PIPELINE},
    ("ppc_jax/demo.py", "run_pipeline_demo"): {"config": PIPELINE},
    ("ppc_jax/segment/seg_infer.py", "main"): {"flags.FLAGS.config": ()},
    ("ppc_jax/segment/seg_infer.py", "*"): {"segment_config": ("segment",)},
    ("ppc_jax/pretrain/pretrain_trainer.py", "*"): {"self.config": ()},
    ("ppc_jax/runtime.py", "setup_host"): {"tf.config": None},
    ("ppc_jax/runtime.py", "configure_compilation_cache"): {"jax.config": None},
    ("ppc_jax/program_cache.py", "*"): {"jax.config": None},
    ("ppc_jax/fileio.py", "*"): {"fsspec.config": None},
    # A file path, and extra `k=v` arguments of its get_config.
    ("experiments/compare_methods.py", "*"): {"args.config": None, "args.config_args": None,
                                               "config_args": None},
    ("bench/data_pipeline.py", "worker"): {"cfg": ("input",)},
    ("experiments/refine_demo.py", "*"): {"args.config_args": None, "config_args": None},
    # A finished run's saved config (read for its data_dir, or re-used for inference).
    ("experiments/demo_stage_losses.py", "*"): {"pretrained.load_run_config": None},
    # configs/pipeline_demo.py, for its output layout (pipeline.Paths) and eval split.
    ("bench/method_effects.py", "seed_at_rw_threshold"): {"config": PIPELINE},
    ("experiments/refine_demo.py", "worker"): {"seed_cfg": (), "aff_cfg": ()},
    ("bench/train_e2e.py", "*"): {"args.config": None},
    ("bench/train_e2e.py", "_child_main"): {"args.config": None},
    ("bench/speed.py", "build_train_case"): {
        "cfg": (), "model_cfg": ("model",), "optim_cfg": ("optim",), "loss_cfg": ("loss",)},
}
# Modules that only ever receive the demo config (its `synth` field is the demo's own; refine_demo.py
# also configs/aff_demo.py, which has every field it reads).
DEMO_ONLY = ("ppc_jax/demo.py", "experiments/compare_methods.py", "bench/speed.py",
             "experiments/refine_demo.py")
# The shipped configs and the variants that are checked (cheap: building a config is instant).
VARIANTS = {
    "cam_voc12.py": (None, "runlocal"),
    "seam_voc12.py": (None, "runlocal", "view2_ppc"),
    "ppc_voc12.py": (None, "runlocal,batch=9,momentum_mode=corrected"),
    "eps_voc12.py": (None, "runlocal"),
    "eps_ppc_voc12.py": (None, "runlocal,batch=4,momentum_mode=corrected"),
    "aff_ppc_voc12.py": (None, "runlocal,batch=4"),
    "masks_eps_ppc_voc12.py": (None, "runlocal,batch=4,momentum_mode=corrected"),
    "aff_demo.py": (None,),
    "seg_ppc_voc12.py": (None, "runlocal,batch=4"),
    "seg_eps_ppc_voc12.py": (None, "runlocal", "head=v1"),
    "pipeline_ppc_voc12.py": (None, "runlocal"),
    "pipeline_eps_ppc_voc12.py": (None, "runlocal"),
    "pipeline_demo.py": (None, "classes=compact"),
    "pretrain_demo.py": (None, "steps=10,seed=1"),
    "pretrain_imagenet_resnet38.py": (None, "batch=1024,bf16"),
    "pretrain_imagenet_resnet101.py": (None, "batch=1024,bf16"),
    "demo.py": (None, "variant=cam", "variant=seam", "variant=eps", "variant=eps_ppc",
                "steps=10,warmup=0"),
}
# Functions that only ever receive stage-1 configs (config.stage 'seeds'): the stage-1 trainer and
# CAM inference refuse other stages, apply_method sets stage-1 methods, and layouts.for_model
# reads only model.name of an AffinityNet config. Their reads of SeamNet's model fields are not
# checked against the AffinityNet configs.
STAGE1_ONLY = {("ppc_jax/seeds/seed_trainer.py", "train_and_evaluate"),
               ("ppc_jax/seeds/infer.py", "run_inference"),
               ("ppc_jax/seeds/stage.py", "export_torch"),
               ("ppc_jax/layouts.py", "for_model"), ("ppc_jax/config_lib.py", "apply_method"),
               ("bench/train_e2e.py", "child_flops")}
# Functions that only ever receive segmentation configs (config.stage 'segment'): DeepLab's
# model fields (backbone, head, ...) are not checked against the other stages' configs.
SEGMENT_ONLY = {("ppc_jax/segment/seg_trainer.py", "validate"),
                ("ppc_jax/segment/seg_trainer.py", "train_segmentation"),
                ("ppc_jax/segment/seg_infer.py", "run_segmentation"),
                ("ppc_jax/config_lib.py", "segmentation_config")}
# Fields only some stages' schemas declare (config_lib.seeds_config, affinity_config,
# segmentation_config): a read of one is checked against the configs of those stages only.
STAGE_FIELDS = {
    ("loss",): {"seeds"}, ("cam_warmup_steps",): {"seeds"},
    ("input", "view2_size"): {"seeds"}, ("input", "resize_long"): {"seeds"},
    ("input", "jitter"): {"seeds", "affinity"},
    ("infer", "scales"): {"seeds", "segment"}, ("infer", "flip"): {"seeds", "segment"},
    ("infer", "mode"): {"seeds"}, ("infer", "cam_key"): {"seeds"},
    ("infer", "bg_threshold"): {"seeds"}, ("infer", "cam_format"): {"seeds"},
    ("infer", "num_overlays"): {"seeds"},
    ("refine",): {"affinity"}, ("segment",): {"segment"}, ("pretrain",): {"pretrain"},
}
# The stage packages: their reads are checked against their own stage's configs.
STAGE_PACKAGES = {"ppc_jax/seeds/": "seeds", "ppc_jax/refine/": "affinity",
                  "ppc_jax/segment/": "segment", "ppc_jax/pretrain/": "pretrain"}


def _stages_reading(read):
  """The stages whose configs must declare the field `read` reads."""
  stages = {"seeds", "affinity", "segment", "pretrain"}
  for prefix, stage in STAGE_PACKAGES.items():
    if read.file.startswith(prefix):
      stages = {stage}
  for n in range(len(read.path), 0, -1):
    if read.path[:n] in STAGE_FIELDS:
      return stages & STAGE_FIELDS[read.path[:n]]
  return stages


# Demo-only top-level fields (the synthetic data set's parameters).
DEMO_EXTRA_FIELDS = ("synth",)
_METHODS = frozenset(n for n in dir(ml_collections.ConfigDict) if not n.startswith("_"))


class ConfigRead(typing.NamedTuple):
  file: str     # relative to the repository root
  line: int
  path: tuple   # the config fields, from the root of the experiment config
  function: str = ""  # qualname of the function that reads it ("" = module level)


class ScanError(AssertionError):
  """The scan met a config-like name it cannot resolve, or a fallback read."""


def _chain(node):
  """['a', 'b', 'c'] for the expression a.b.c, or None if it is not a dotted name."""
  names = []
  while isinstance(node, ast.Attribute):
    names.append(node.attr)
    node = node.value
  if not isinstance(node, ast.Name):
    return None
  names.append(node.id)
  return names[::-1]


def _scope_bindings(rel, qualname):
  """Prefix bindings of one function: global, then module-wide, then the function's own."""
  out = {}
  for key in (("*", "*"), (rel, "*"), (rel, qualname)):
    out.update(BINDINGS.get(key, {}))
  return out


class _Scanner:
  """Collects the config reads of one source file (see `scan_source`)."""

  def __init__(self, rel):
    self.rel = rel
    self.reads = []
    self.functions = set()  # qualnames visited
    self.current = ""       # qualname of the function whose reads are being collected

  def resolve(self, names, env):
    """(config path, rest of the chain), (None, None) if not a config, or raises ScanError."""
    for n in range(len(names), 0, -1):
      prefix = ".".join(names[:n])
      if prefix in env:
        base = env[prefix]
        return (None, None) if base is None else (base, names[n:])
    if any(CONFIG_LIKE.search(n) for n in names):
      raise ScanError(f"{self.rel}: cannot tell which config {'.'.join(names)!r} holds; bind it "
                      "in tests/test_configs.py BINDINGS")
    return None, None

  def function(self, node, qualname, outer_env):
    self.functions.add(qualname)
    env = dict(outer_env)
    env.update(_scope_bindings(self.rel, qualname))
    body = [node] if isinstance(node, ast.Module) else node.body
    own = list(self._own_nodes(body))
    # Aliases of config chains (`icfg = config.infer`, `cfg = input_config`, tuple unpacking),
    # to a fixed point; a name bound explicitly keeps its binding.
    explicit = set(env)
    changed = True
    while changed:
      changed = False
      for target, value in self._assignments(own):
        names = _chain(value)
        if target in explicit or names is None:
          continue
        try:
          base, rest = self.resolve(names, env)
        except ScanError:
          continue  # resolved on a later pass, or reported where it is read
        if base is None:
          continue
        path = base + tuple(rest)
        if env.get(target, path) != path:
          raise ScanError(f"{self.rel}:{value.lineno}: {target!r} holds two configs "
                          f"({env[target]} and {path})")
        if target not in env:
          env[target] = path
          changed = True
    self.current = qualname
    for sub in own:
      if isinstance(sub, ast.Attribute) and not isinstance(getattr(sub, "_parent", None),
                                                           ast.Attribute):
        self.read(sub, env)
      elif isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name) and sub.func.id in (
          "getattr", "hasattr") and sub.args:
        self.check_dynamic(sub, env)
    for sub in own:
      for child in ast.iter_child_nodes(sub):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
          self.function(child, f"{qualname}.{child.name}" if qualname else child.name, env)
        elif isinstance(child, ast.ClassDef):
          for item in child.body:
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
              self.function(item, f"{child.name}.{item.name}", env)

  def _own_nodes(self, body):
    """The nodes of a function body, not descending into nested functions or classes."""
    stack = list(body)
    while stack:
      node = stack.pop()
      yield node
      for child in ast.iter_child_nodes(node):
        child._parent = node  # pylint: disable=protected-access
        if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
          stack.append(child)

  @staticmethod
  def _assignments(nodes):
    for node in nodes:
      if isinstance(node, ast.Assign):
        for target in node.targets:
          if isinstance(target, ast.Name):
            yield target.id, node.value
          elif isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
            for t, v in zip(target.elts, node.value.elts):
              if isinstance(t, ast.Name):
                yield t.id, v

  def read(self, node, env):
    names = _chain(node)
    if names is None:
      return
    base, rest = self.resolve(names, env)
    if base is None:
      return
    fields = []
    for name in rest:
      if name in _METHODS:
        if name == "get":
          raise ScanError(f"{self.rel}:{node.lineno}: {'.'.join(names)}(...) reads a config "
                          "with a fallback; declare the field in config_lib and read it")
        break
      fields.append(name)
    self.reads.append(ConfigRead(self.rel, node.lineno, base + tuple(fields), self.current))

  def check_dynamic(self, call, env):
    names = _chain(call.args[0])
    if names is None or self.resolve(names, env)[0] is None:
      return
    attr = call.args[1].value if len(call.args) > 1 and isinstance(
        call.args[1], ast.Constant) else None
    if call.func.id == "hasattr" and attr in _METHODS:
      return  # a type check (ConfigDict or dict), not a field read
    raise ScanError(f"{self.rel}:{call.lineno}: {call.func.id}({'.'.join(names)}, {attr!r}...) "
                    "reads a config field dynamically; declare the field and read it")


def scan_source(text, rel, functions=None):
  """The config reads (and writes) of one source file: a list of ConfigRead.

  `functions`, a set, receives (rel, qualname) of every function scanned.
  """
  scanner = _Scanner(rel)
  scanner.function(ast.parse(text), "", {})
  if functions is not None:
    functions.update((rel, name) for name in scanner.functions)
  return scanner.reads


def _scan_package(functions=None):
  reads = []
  for path in SCANNED:
    with open(path, encoding="utf-8") as f:
      reads += scan_source(f.read(), os.path.relpath(path, ROOT).replace(os.sep, "/"), functions)
  return reads


def _missing(config, path):
  """The first field of `path` that `config` lacks, as a dotted prefix, or None."""
  node = config
  for i, name in enumerate(path):
    if not isinstance(node, ml_collections.ConfigDict):
      return None  # a leaf: the rest is a method of its value
    if name not in node:
      return ".".join(path[:i + 1])
    node = node[name]
  return None


def _all_configs(names=None):
  for path in CONFIG_FILES:
    name = os.path.basename(path)
    if names is None or name in names:
      module = _load(path)
      for arg in VARIANTS[name]:
        yield f"{name}:{arg}" if arg else name, module.get_config(arg)


def _configs(names=None):
  """Every experiment config: the shipped ones and the stage configs of the pipeline configs."""
  for name, config in _all_configs(names):
    if "seeds" in config:
      for stage in ("seeds", "affinity", "segment"):
        yield f"{name}/{stage}", config[stage]
    else:
      yield name, config


def _is_demo_stage1(name):
  """configs/demo.py, alone or as the demo pipeline's stage 1."""
  return name.startswith("demo.py") or (name.startswith("pipeline_demo.py")
                                        and name.endswith("/seeds"))


def _pipeline_configs():
  return [(n, c) for n, c in _all_configs() if "seeds" in c]


def _schema(stage):
  """The stage's schema: every field a config of that stage may have, with its default."""
  arg = config_lib.parse_arg(None, **config_lib.VARIANT_DEFAULTS)
  from ppc_jax.pretrain import defaults  # pylint: disable=import-outside-toplevel
  return {"seeds": config_lib.seeds_config, "affinity": lambda: config_lib.affinity_config(arg),
          "segment": lambda: config_lib.segmentation_config(arg),
          "pretrain": defaults.pretrain_schema}[stage]()


def test_every_shipped_config_has_its_variants_listed():
  assert {os.path.basename(p) for p in CONFIG_FILES} == set(VARIANTS)


def test_scan_finds_the_reads_it_must():
  """Guards the scan itself: reads of every kind that the package is known to make, and no
  binding that names a file or function that no longer exists."""
  functions = set()
  paths = {r.path for r in _scan_package(functions)}
  files = {f for f, _ in functions}
  for file, name in BINDINGS:
    assert file == "*" or file in files, file
    assert name == "*" or (file, name) in functions, (file, name)
  assert set(DEMO_ONLY) <= files
  assert STAGE1_ONLY <= functions, STAGE1_ONLY - functions
  assert SEGMENT_ONLY <= functions, SEGMENT_ONLY - functions
  assert PIPELINE + ("segment", "infer", "split") in paths  # pipeline.py
  for path in [("input", "num_parallel_calls"), ("input", "cls_labels"), ("input", "verify"),
               ("input", "prefetch"), ("input", "threads"), ("input", "max_images"),
               ("input", "labels"),  # pipeline.py, through `cfg = input_config` / the parameter
               ("cam_warmup_steps",), ("num_devices",), ("xla_cpu_flags",),
               ("loss", "ppc", "temperature"),  # ppc.py, bound to config.loss.ppc
               ("loss", "variant"), ("infer", "scales"),  # infer.py, via `icfg = config.infer`
               ("optim", "lr"), ("synth",)]:
    assert path in paths, path


def test_scan_fails_loudly():
  """Unresolvable config-like names, fallbacks and missing fields are reported, not skipped."""
  with pytest.raises(ScanError, match="cannot tell which config 'data_cfg.x'"):
    scan_source("def f(data_cfg):\n  return data_cfg.x\n", "ppc_jax/new.py")
  with pytest.raises(ScanError, match="fallback"):
    scan_source("def f(config):\n  return config.get('x', 1)\n", "ppc_jax/new.py")
  with pytest.raises(ScanError, match="dynamically"):
    scan_source("def f(config):\n  return getattr(config.input, 'x', 1)\n", "ppc_jax/new.py")
  reads = scan_source("def f(config):\n  c = config.input\n  return c.not_a_field\n",
                      "ppc_jax/new.py")
  assert sorted(r.path for r in reads) == [("input",), ("input", "not_a_field")]
  assert _missing(config_lib.seeds_config(), ("input", "not_a_field")) == "input.not_a_field"


def test_every_field_the_code_reads_exists_in_every_shipped_config():
  reads = _scan_package()
  problems = []
  for name, config in _pipeline_configs():
    for read in reads:
      if read.path[:1] == PIPELINE:
        missing = _missing(config, read.path[1:])
        if missing:
          problems.append(f"{read.file}:{read.line} reads pipeline config."
                          f"{'.'.join(read.path[1:])}, but {name} has no {missing}")
  for name, config in _configs():
    for read in reads:
      if read.path[:1] == PIPELINE:
        continue
      if read.file in DEMO_ONLY and not _is_demo_stage1(name):
        continue
      if (read.file, read.function) in STAGE1_ONLY and config.stage != "seeds":
        continue
      if (read.file, read.function) in SEGMENT_ONLY and config.stage != "segment":
        continue
      if config.stage not in _stages_reading(read):
        continue
      missing = _missing(config, read.path)
      if missing:
        problems.append(f"{read.file}:{read.line} reads config.{'.'.join(read.path)}, "
                        f"but {name} has no {missing}")
  assert not problems, "\n".join(problems)


def test_shipped_configs_set_only_declared_fields():
  """A config file assigning a misspelt field would create it (configs are built unlocked)."""
  def leaves(config, prefix=()):
    for key, value in config.items():
      if isinstance(value, ml_collections.ConfigDict):
        yield from leaves(value, prefix + (key,))
      else:
        yield prefix + (key,)

  for name, config in _configs():
    declared = set(leaves(_schema(config.stage)))
    extra = {p for p in set(leaves(config)) - declared
             if not (_is_demo_stage1(name) and p[0] in DEMO_EXTRA_FIELDS)}
    assert not extra, (name, sorted(extra))
  template = config_lib.pipeline_config(
      name="", seeds=ml_collections.ConfigDict(), affinity=ml_collections.ConfigDict(),
      segment=ml_collections.ConfigDict(), refine="affinity", paper={}, paper_source="",
      synth=ml_collections.ConfigDict())
  for name, config in _pipeline_configs():
    top = {k for k in config if k not in ("seeds", "affinity", "segment", "synth", "paper")}
    assert top <= set(template), (name, sorted(top - set(template)))


@pytest.mark.parametrize("path", [p for p in CONFIG_FILES if _is_pipeline(p)],
                         ids=os.path.basename)
def test_documented_pipeline_overrides_parse(path):
  config = e2e.parse_train_flags([f"--config={path}", "--config.input.data_dir=data/VOC2012",
                                  "--config.init_mxnet_params=a1.params",
                                  "--config.seeds.optim.lr=0.02",
                                  "--config.segment.segment.crf=False",
                                  "--config.segment.infer.split=test",
                                  "--config.affinity.input.num_parallel_calls=4"])
  assert config.input.data_dir == "data/VOC2012" and config.init_mxnet_params == "a1.params"
  assert config.seeds.optim.lr == 0.02 and not config.segment.segment.crf
  assert config.segment.infer.split == "test"
  assert config.affinity.input.num_parallel_calls == 4
  with pytest.raises(Exception, match="data_dri"):
    e2e.parse_train_flags([f"--config={path}", "--config.data_dri=x"])


@pytest.mark.parametrize("path", [p for p in CONFIG_FILES if not _is_pipeline(p)],
                         ids=os.path.basename)
def test_documented_overrides_parse(path):
  stage = _load(path).get_config(None).stage
  own = {"seeds": "--config.cam_warmup_steps=3", "affinity": "--config.refine.logt=3",
         "segment": "--config.segment.crf=False",
         "pretrain": "--config.pretrain.label_smoothing=0.1"}[stage]
  config = e2e.parse_train_flags([f"--config={path}", "--config.input.num_parallel_calls=4",
                         "--config.input.cls_labels=labels/cls_labels.npy",
                         "--config.optim.lr=0.02", "--config.input.verify=full",
                         "--config.input.data_dir=data/VOC2012", "--config.infer.max_images=2",
                         own])
  assert config.input.num_parallel_calls == 4
  assert config.input.cls_labels == "labels/cls_labels.npy"
  assert config.optim.lr == 0.02
  assert config.input.verify == "full"
  assert config.input.data_dir == "data/VOC2012"
  assert config.infer.max_images == 2
  assert {"seeds": lambda: config.cam_warmup_steps == 3,
          "affinity": lambda: config.refine.logt == 3,
          "segment": lambda: not config.segment.crf,
          "pretrain": lambda: config.pretrain.label_smoothing == 0.1}[stage]()
  # An undeclared field still fails (so the overrides above are real checks).
  with pytest.raises(Exception, match="num_parallel_call"):
    e2e.parse_train_flags([f"--config={path}", "--config.input.num_parallel_call=4"])


def test_overrides_named_in_the_docs_exist():
  """Every `--config.<field>=` in the docs, configs, code and scripts names a declared field."""
  pattern = re.compile(r"--config\.([A-Za-z_][\w.]*)=")
  files = (glob.glob(os.path.join(ROOT, "*.md")) + glob.glob(os.path.join(ROOT, "docs", "*.md"))
           + CONFIG_FILES + SCANNED + glob.glob(os.path.join(ROOT, "launch", "*"))
           + [os.path.join(ROOT, "Makefile"), os.path.join(ROOT, ".ci", "run")])
  found = []
  for path in files:
    if not os.path.isfile(path):
      continue
    with open(path, encoding="utf-8") as f:
      for name in pattern.findall(f.read()):
        # `--config.x=y` is the launch scripts' usage placeholder.
        if name != "x":
          found.append((os.path.relpath(path, ROOT), tuple(name.rstrip(".").split("."))))
  assert any(p == ("input", "data_dir") for _, p in found)  # the scan sees the docs
  schemas = [_schema(stage) for stage in ("seeds", "affinity", "segment", "pretrain")]
  schemas += [c for _, c in _pipeline_configs()]
  problems = [f"{f}: --config.{'.'.join(p)}" for f, p in found
              if all(_missing(c, p) for c in schemas)]
  assert not problems, problems


def test_every_field_can_be_overridden_on_the_command_line():
  """Each leaf of each config parses back from `--config.<field>=<its value>` (its type is set: a
  None field must be a typed placeholder, else config_flags refuses to override it)."""
  def leaves(config, prefix=()):
    for key, value in config.items():
      if isinstance(value, ml_collections.ConfigDict):
        yield from leaves(value, prefix + (key,))
      else:
        yield prefix + (key,), value, config.get_type(key)

  for path in CONFIG_FILES:
    config = _load(path).get_config(None)
    argv = [f"--config={path}"]
    for keys, value, field_type in leaves(config):
      assert field_type is not type(None), f"{os.path.basename(path)}: {'.'.join(keys)} is untyped"
      if value is not None:
        argv.append(f"--config.{'.'.join(keys)}={value}")
    parsed = e2e.parse_train_flags(argv)
    for keys, value, _ in leaves(config):
      got = parsed
      for key in keys:
        got = got[key]
      assert got == value, (os.path.basename(path), keys, got, value)


# ------------------------------------------------------------------------------------------------
# A config per stage: each stage's schema holds only its own sections; a foreign field is an error
# naming the stage and the field.
# ------------------------------------------------------------------------------------------------

def test_each_stage_schema_holds_only_its_own_sections():
  seeds, affinity, segment, pretrain = (
      _schema(s) for s in ("seeds", "affinity", "segment", "pretrain"))
  assert "pretrain" in pretrain and not {"loss", "refine", "segment"} & set(pretrain)
  assert not {"view2_size", "resize_long", "jitter"} & set(pretrain.input)
  assert {"loss", "cam_warmup_steps"} <= set(seeds) and not {"refine", "segment"} & set(seeds)
  assert "refine" in affinity and not {"loss", "segment", "cam_warmup_steps"} & set(affinity)
  assert "segment" in segment and not {"loss", "refine", "cam_warmup_steps"} & set(segment)
  # One path per setting: the split, scales and image cap of every stage's inference are in its
  # `infer` section (the engine's), nowhere else.
  for config in (seeds, affinity, segment, pretrain):
    assert {"split", "max_images", "images_per_device", "compile_threads"} <= set(config.infer)
  assert not {"split", "test_split", "max_images"} & set(affinity.refine)
  assert not {"test_split", "test_scales", "test_flip", "max_images"} & set(segment.segment)
  assert {"view2_size", "resize_long", "jitter"} <= set(seeds.input)
  assert not {"view2_size", "resize_long", "jitter"} & set(segment.input)


@pytest.mark.parametrize("path,field,stage", [
    ("configs/seg_ppc_voc12.py", "loss.variant", "segment"),
    ("configs/aff_ppc_voc12.py", "segment.crf", "affinity"),
    ("configs/ppc_voc12.py", "refine.logt", "seeds"),
    ("configs/seg_ppc_voc12.py", "segment.test_scales", "segment"),
])
def test_a_field_the_stage_does_not_have_is_an_error_naming_stage_and_field(path, field, stage):
  argv = ["prog", f"--config={os.path.join(ROOT, path)}", f"--config.{field}=1"]
  with pytest.raises(ValueError) as e:
    config_lib.check_overrides(argv)
  message = str(e.value)
  assert f"--config.{field}:" in message and f"the '{stage}' stage's config" in message
  assert os.path.basename(path) in message
  # A field the stage has passes, with the `--config FILE:arg` spelling too.
  config_lib.check_overrides(["prog", "--config", os.path.join(ROOT, path) + ":runlocal",
                              "--config.optim.lr=0.1"])


def test_the_entry_points_reject_a_foreign_field_before_parsing():
  """`python -m ppc_jax.train` with a field of another stage: exit 2, one line naming both."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  proc = subprocess.run(
      [sys.executable, "-m", "ppc_jax.train", "--config=configs/seg_ppc_voc12.py",
       "--config.loss.variant=cam", "--workdir=unused"], cwd=ROOT, capture_output=True,
      text=True, timeout=e2e.PROCESS_TIMEOUT_S, check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert ("error: --config.loss.variant: the 'segment' stage's config (configs/seg_ppc_voc12.py) "
          "has no field 'loss'") in proc.stderr
