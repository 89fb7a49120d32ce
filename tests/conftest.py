"""Test setup: 8 fake CPU devices, set before JAX initialises its backends."""
import os

# Collectives across the 8 fake devices: with one XLA:CPU intra-op pool thread per device, a
# lagging device can deadlock in a collective. runtime.size_cpu_thread_pool explains it and sizes
# the pool for every entry point; it runs here before JAX starts (PJRT_NPROC), and
# test_runtime.py checks the pool's size. The rendezvous termination timeout (XLA's default: 40 s
# after a 20 s warning) is raised: under load a device thread can be starved for long, and a
# deadlock still ends, with XLA's message (`make test` uses `--capture=sys` so it reaches the
# log). Subprocesses inherit both.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    " --xla_cpu_collective_call_terminate_timeout_seconds=600"
).strip()
from ppc_jax import runtime  # noqa: E402  (imports no JAX)

runtime.size_cpu_thread_pool()
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# JAX's own XLA:CPU settings, here and in every training subprocess the tests start (the entry
# points read this): the multi-process and resume tolerances were calibrated with them, and
# Eigen's convolutions (runtime.CPU_XLA_FLAGS) amplify the all-reduce order differences in the
# small PCM heads beyond them. tests/test_runtime.py covers the flag logic itself.
os.environ["PPC_JAX_CPU_FLAGS"] = "0"

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)


# The end-to-end fixtures of test_end_to_end.py and test_multihost.py (module scope: each of those
# modules trains its own uninterrupted reference run, as its xdist group expects).
@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The uninterrupted single-process training run that resumed runs are compared with."""
  import e2e_fixtures  # pylint: disable=import-outside-toplevel
  return e2e_fixtures.reference_run(tmp_path_factory)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
  """The process's persistent compilation cache, shared by its training subprocesses."""
  import e2e_fixtures  # pylint: disable=import-outside-toplevel
  return e2e_fixtures.compile_cache_dir(tmp_path_factory)


@pytest.fixture(scope="session")
def pipeline_reference(tmp_path_factory):
  """The tiny pipeline's uninterrupted run (e2e_fixtures.pipeline_reference), made once."""
  import e2e_fixtures  # pylint: disable=import-outside-toplevel
  return e2e_fixtures.pipeline_reference(tmp_path_factory)


# Test tiers, by file (`make test-fast` runs unit + parity; `make test` everything):
#   unit         one module against a numpy re-derivation, seconds per file;
#   parity       against an oracle (torch re-implementations of the reference, float64 numpy),
#                often at several shapes;
#   e2e          a stage or the pipeline end to end on the tiny synthetic set (train, resume,
#                infer, evaluate);
#   integration  other processes and systems: the wheel, the notebook, the bucket emulator,
#                several jax.distributed processes, clean exits, launchers, signals, the
#                command-line converter, the compilation cache across processes.
# A test that runs another process in a faster tier's file carries its own marker
# (`@pytest.mark.integration`), which wins over its file's tier.
TIERS = {
    "parity": ("test_models.py", "test_aff_weights.py", "test_weights.py",
               "test_mxnet_params.py", "test_losses_seam.py", "test_losses_ppc.py",
               "test_losses_eps.py", "test_refine_random_walk.py", "test_segment_models.py",
               "test_resize.py", "test_winograd.py", "test_refine_affinity.py",
               "test_refine_crf.py", "test_optim.py"),
    "e2e": ("test_end_to_end.py", "test_eps_end_to_end.py", "test_pipeline.py",
            "test_classes_end_to_end.py", "test_warmup.py", "test_refine_stage.py",
            "test_segment_stage.py", "test_tfds_voc.py", "test_infer.py",
            "test_bad_files_verify_none.py", "test_pipeline_data.py", "test_tfds_stages.py",
            # the inference engine on each stage's split against the per-image programs
            "test_inference.py",
            # stage 0: the readers, the pretext set, training + resume, backbone hand-over
            "test_pretrain.py",
            # whole full train steps: sharded vs one device, bf16 vs fp32, remat
            "test_train_step.py", "test_precision.py"),
    "integration": ("test_packaging.py", "test_notebook.py", "test_gcs.py", "test_multihost.py",
                    "test_clean_exit.py", "test_launchers.py", "test_device_check.py",
                    "test_pipeline_signals.py", "test_bench_train_e2e.py", "test_convert.py",
                    "test_runtime.py", "test_multihost_pretrain.py"),
}
TIER_NAMES = ("unit", "parity", "e2e", "integration")
_TIER_OF = {name: tier for tier, names in TIERS.items() for name in names}


def pytest_configure(config):
  config.pluginmanager.register(XdistGroupIds(), "ppc_jax_xdist_group_ids")
  for tier in TIER_NAMES:
    config.addinivalue_line("markers", f"{tier}: the {tier} tier (tests/conftest.py TIERS)")


# tryfirst: the tier markers must exist before `-m` deselects by them.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    if not any(item.get_closest_marker(tier) for tier in TIER_NAMES):
      item.add_marker(_TIER_OF.get(os.path.basename(str(item.fspath)), "unit"))


def tier_of(item):
  """The one tier marker of a collected test."""
  (tier,) = [m.name for m in item.iter_markers() if m.name in TIER_NAMES]
  return tier


class XdistGroupIds:
  """Makes `--dist loadgroup` keep an xdist_group on one worker under pytest 9.

  pytest-xdist 3.8 marks a test's group by rewriting `item._nodeid` to `<nodeid>@<group>`, but
  pytest 9 reads a test's id from `item._id`, so the suffix was lost and every group's tests
  were spread over the workers: module fixtures (a device-check run, a training run) were built
  once per worker. This copies the suffixed id to where pytest 9 reads it, after xdist's hook.
  """

  @pytest.hookimpl(trylast=True)
  def pytest_collection_modifyitems(self, items):
    from _pytest.nodeid import coerce_node_id  # pylint: disable=import-outside-toplevel
    for item in items:
      suffixed = getattr(item, "_nodeid", None)
      if isinstance(suffixed, str) and suffixed != item.nodeid:
        item._id = coerce_node_id(suffixed)  # pylint: disable=protected-access
