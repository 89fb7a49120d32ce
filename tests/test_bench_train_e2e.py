"""bench/train_e2e.py, run as its README line runs it (tiny sizes, 8 fake CPU devices): the real
synthetic set, `python -m ppc_jax.train`, the FLOP count; its summary re-derived from the run's
own files."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import e2e_fixtures as e2e
from ppc_jax import models
from ppc_jax import optim
from ppc_jax import train_state
from ppc_jax.seeds import step as seed_step

sys.path.insert(0, os.path.join(e2e.ROOT, "bench"))
import train_e2e  # pylint: disable=wrong-import-position

# One worker runs the module: its fixture (a whole benchmark run) is made once, not per worker.
pytestmark = pytest.mark.xdist_group("bench_train_e2e")

SCRIPT = os.path.join(e2e.ROOT, "bench", "train_e2e.py")
STEPS, LOG_EVERY, EPOCHS = 4, 2, 2


def _bench(args, env, tmp_path, name):
  log = tmp_path / f"{name}.log"
  with open(log, "wb") as f:
    proc = subprocess.run([sys.executable, SCRIPT, *args], env=env, stdout=f,
                          stderr=subprocess.STDOUT, timeout=e2e.PROCESS_TIMEOUT_S, check=False)
  return proc.returncode, log.read_text(encoding="utf-8", errors="replace")


# Session scope: kept while the group's worker runs other modules' tests in between (a
# module-scoped run would be redone).
@pytest.fixture(scope="session")
def bench_run(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("bench_e2e")
  # The e2e tests' tiny stage-1 config, with an epoch-based schedule so the projection has a
  # VOC-sized step count to find: floor(10582 / 8) x EPOCHS.
  config = e2e.tiny_config("set-by-the-benchmark")
  config.total_steps = 0
  config.num_epochs = EPOCHS
  config_file = e2e.write_config_file(config, tmp_path / "tiny_config.py")
  env = e2e.subprocess_env(str(tmp_path / "jax_cache"), 8)
  workdir = tmp_path / "work"
  out_json = tmp_path / "result.json"
  args = ["--workdir", str(workdir), "--config", config_file, "--steps", str(STEPS),
          "--log_every", str(LOG_EVERY), "--ckpt_every", str(LOG_EVERY), "--images", "16",
          "--image_size", "64", "--peak_tflops", "0.5", "--json", str(out_json)]
  code, log = _bench(args, env, tmp_path, "bench")
  assert code == 0, log[-3000:]
  with open(out_json, encoding="utf-8") as f:
    result = json.load(f)
  return dict(config=config, result=result, log=log, workdir=workdir, args=args, env=env,
              tmp_path=tmp_path)


def test_the_summary_follows_from_the_runs_own_metrics(bench_run):
  r = bench_run["result"]
  rows = e2e.metric_rows(str(bench_run["workdir"] / "run"))
  assert [row["step"] for row in rows] == [2, 4]
  assert e2e.checkpoint_steps(str(bench_run["workdir"] / "run")) == [2, 4]
  # Each window's seconds from its images/s (steps x batch / rate); the wait from its share.
  steps = np.diff([0] + [row["step"] for row in rows])
  seconds = steps * 8 / np.array([row["images_per_sec"] for row in rows])
  waits = seconds * np.array([row["input_wait_fraction"] for row in rows])
  assert (r["first_steps"], r["steady_steps"]) == (2, 2)
  # rtol 1e-12: the same float operations in another order (sums of two terms).
  np.testing.assert_allclose(r["first_s"], seconds[0], rtol=1e-12)
  np.testing.assert_allclose(r["s_per_step"], seconds[1] / steps[1], rtol=1e-12)
  np.testing.assert_allclose(r["images_per_s"], steps[1] * 8 / seconds[1], rtol=1e-12)
  np.testing.assert_allclose(r["input_wait_fraction"], waits[1] / seconds[1], rtol=1e-12)
  assert 0.0 <= r["input_wait_fraction"] <= 1.0
  # The wall time splits into the time outside the loop and the windows.
  assert r["outside_loop_s"] > 0
  np.testing.assert_allclose(r["outside_loop_s"] + seconds.sum(), r["train_wall_s"], rtol=1e-12)
  # The config's own VOC schedule, not the benchmark's 4 steps.
  assert r["voc_steps"] == (10582 // 8) * EPOCHS
  np.testing.assert_allclose(
      r["projected_voc_s"],
      r["outside_loop_s"] + seconds[0] + (r["voc_steps"] - 2) * seconds[1] / steps[1], rtol=1e-12)
  np.testing.assert_allclose(r["achieved_tflops"], r["flops_per_step"] / r["s_per_step"] / 1e12,
                             rtol=1e-12)
  np.testing.assert_allclose(r["mfu"], r["achieved_tflops"] / (0.5 * 8), rtol=1e-12)
  assert (r["devices"], r["platform"], r["batch_size"], r["crop"], r["view2"]) == (
      8, "cpu", 8, 48, 24)
  for text in ("steady state (steps 3-4", "MFU (0.5 TFLOP/s", "whole run on VOC (2644 steps)"):
    assert text in bench_run["log"], text


def test_the_flop_count_is_the_configs_step_on_its_global_batch(bench_run):
  """The benchmark's count (config rebuilt from the flags, batch from the pipeline) equals the
  step's lowered here from the config and the batch shapes the step's docstring gives."""
  config, r = bench_run["config"], bench_run["result"]
  model = models.build_model(config.model)
  key = jax.random.PRNGKey(0)
  variables = jax.eval_shape(lambda k: train_state.init_variables(model, k, (48, 48, 3)), key)
  tx, schedule, groups = optim.make_optimizer(config.optim, r["voc_steps"], variables["params"])
  state = jax.eval_shape(lambda v: train_state.create_state(v, tx), variables)
  batch = {"image1": jax.ShapeDtypeStruct((8, 48, 48, 3), jnp.float32),
           "image2": jax.ShapeDtypeStruct((8, 24, 24, 3), jnp.float32),
           "labels": jax.ShapeDtypeStruct((8, 20), jnp.float32)}
  step = seed_step.make_train_step(model, tx, schedule, groups, config.loss)
  flops = jax.jit(step).lower(state, batch, key).cost_analysis()["flops"]
  assert flops > 0
  # One program, one cost model: equal up to the float sum's order (none expected).
  np.testing.assert_allclose(r["flops_per_step"], flops, rtol=1e-9)


def test_it_refuses_to_time_a_resumed_run_or_another_data_set(bench_run):
  args, env, tmp_path = bench_run["args"], bench_run["env"], bench_run["tmp_path"]
  code, log = _bench(args, env, tmp_path, "again")
  assert code != 0 and "run exists: a resumed run would time only its tail" in log, log[-2000:]
  other = list(args)
  other[other.index("--workdir") + 1] = str(tmp_path / "work2")
  os.makedirs(tmp_path / "work2" / "data")
  with open(tmp_path / "work2" / "data" / "made.json", "w", encoding="utf-8") as f:
    json.dump({"images": 99, "image_size": 64}, f)
  code, log = _bench(other, env, tmp_path, "other_set")
  assert code != 0 and "made.json: the set there was made with" in log, log[-2000:]


def test_peak_table_takes_the_most_specific_name():
  assert train_e2e.peak_tflops("NVIDIA H100 PCIe") == 756.0
  assert train_e2e.peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
  assert train_e2e.peak_tflops("TPU v5 lite") == 197.0
  assert train_e2e.peak_tflops("TPU v5p") == 459.0
  assert train_e2e.peak_tflops("cpu") is None
