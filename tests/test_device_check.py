"""bench/device_check.py as an accelerator host without TensorFlow runs it: `--tiny` (every case,
tiny sizes, CPU) with `tensorflow` / `tensorflow_datasets` made unimportable by a sitecustomize.py
on PYTHONPATH, which every case's subprocess inherits. Checks the JSON (every case with numbers
or a reason), the printed table, and the e2e case's checkpoints and metrics.jsonl; then the
deadline, a failing case, and the host input path's view 2 against the project's resize."""

import json
import os
import re
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "device_check.py")
sys.path.insert(0, os.path.join(ROOT, "bench"))
import device_check  # pylint: disable=wrong-import-position

# One worker runs the module: its fixture (a whole --tiny run) is made once.
pytestmark = pytest.mark.xdist_group("device_check")

PEAK = 0.5  # --peak_tflops: makes the MFU column computable on the CPU

# Imported by site.py in every Python process with its directory on PYTHONPATH: every meta-path
# finder then finds no tensorflow / tensorflow_datasets, so `import tensorflow` raises
# ModuleNotFoundError and importlib.util.find_spec('tensorflow') is None, as on a host without
# them (etils' epath asks find_spec; a finder that raised ImportError instead would break it).
SITECUSTOMIZE = '''\
import sys

_BLOCKED = ("tensorflow", "tensorflow_datasets")


class _Hide:
  def __init__(self, finder):
    self._finder = finder

  def find_spec(self, name, path=None, target=None):
    if name.partition(".")[0] in _BLOCKED:
      return None
    find = getattr(self._finder, "find_spec", None)
    return find(name, path, target) if find else None

  def __getattr__(self, attr):  # invalidate_caches and the like
    return getattr(self._finder, attr)


sys.meta_path[:] = [_Hide(f) for f in sys.meta_path]
'''


def _env(tmp_path):
  """This environment with TensorFlow blocked and one CPU device per process (as one GPU)."""
  block_dir = tmp_path / "no_tensorflow"
  block_dir.mkdir(exist_ok=True)
  (block_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join(flags)
  for name in ("JAX_NUM_CPU_DEVICES", "PJRT_NPROC"):  # conftest's 8 devices and their pool
    env.pop(name, None)
  env.update(PYTHONPATH=os.pathsep.join([str(block_dir), ROOT]), JAX_PLATFORMS="cpu",
             CUDA_VISIBLE_DEVICES="")
  return env


def _run(args, env, timeout=600):
  proc = subprocess.run([sys.executable, SCRIPT, *args], env=env, capture_output=True, text=True,
                        timeout=timeout, check=False, cwd=ROOT)
  return proc.returncode, proc.stdout, proc.stderr


# Session scope: the group's worker may run other modules' tests between this module's, which
# would tear a module-scoped run down and redo it (it takes minutes).
@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("device_check")
  env = _env(tmp_path)
  out, workdir = tmp_path / "result.json", tmp_path / "work"
  code, stdout, stderr = _run(["--tiny", "--jobs", "2", "--out", str(out), "--workdir",
                               str(workdir), "--peak_tflops", str(PEAK)], env)
  assert code == 0, stdout[-4000:] + stderr[-4000:]
  with open(out, encoding="utf-8") as f:
    result = json.load(f)
  return dict(result=result, stdout=stdout, workdir=workdir, env=env, tmp_path=tmp_path)


def test_the_blocker_hides_tensorflow_and_the_tf_data_pipeline_needs_it(tiny_run):
  code = ("import importlib.util, sys\n"
          "assert importlib.util.find_spec('tensorflow') is None\n"
          "assert importlib.util.find_spec('tensorflow_datasets') is None\n"
          "try:\n  import ppc_jax.data.pipeline\nexcept ModuleNotFoundError as e:\n"
          "  print('missing', e.name)\n")
  proc = subprocess.run([sys.executable, "-c", code], env=tiny_run["env"], capture_output=True,
                        text=True, check=False, cwd=ROOT)
  assert proc.returncode == 0 and proc.stdout.strip() == "missing tensorflow", proc.stderr


def test_every_case_has_numbers_or_a_reason(tiny_run):
  result = tiny_run["result"]
  cases = result["cases"]
  assert list(cases) == list(device_check.CASES)
  for name, row in cases.items():
    if name == "reference":  # the official network has no tiny size
      assert row["status"] == "skipped" and "--tiny" in row["reason"]
      continue
    assert row["status"] == "ok", (name, row.get("reason"), row.get("log_tail"))
    assert row["tensorflow_loaded"] is False, name
    assert row["device"]["platform"] == "cpu", name
    for key in ("step_s", "images_per_s", "peak_gb"):
      assert row[key] > 0, (name, key)
    assert row["compile_s"] >= 0, name
    assert row["what"], name
    kind = device_check.CASES[name][0]
    if kind in ("seam", "aff", "deeplab", "pretrain"):
      assert row["flops_per_step"] > 0 and row["xla_gb"] > 0, name
      assert row["images_per_s"] == pytest.approx(row["batch"] / row["step_s"])
      assert row["mfu"] == pytest.approx(row["flops_per_step"] / row["step_s"] / 1e12 / PEAK)
      assert np.isfinite(row["loss"]), name
    if kind in ("infer", "rw"):
      assert row["images"] == 8 and row["distinct_sizes"] == 3, name
      assert row["split_s"] >= row["compute_s"] > 0, name
  assert {cases[n]["dtype"] for n in ("seam_fp32", "seam_fp32_remat")} == {"float32"}
  assert {cases[n]["dtype"] for n in ("seam_bf16", "seam_bf16_remat")} == {"bfloat16"}
  assert [cases[n]["remat"] for n in ("seam_bf16", "seam_bf16_remat")] == [False, True]
  # The warm cases load what the cold ones compiled.
  for warm, cold in device_check.WARM_OF.items():
    assert cases[warm]["cache_hits"] > cases[cold]["cache_hits"], (warm, cold)


def test_the_json_names_the_commit_device_and_versions(tiny_run):
  result = tiny_run["result"]
  assert re.fullmatch(r"[0-9a-f]{40}", result["commit"])
  assert result["device"]["platform"] == "cpu" and result["tiny"] is True
  assert result["host"]["cpu_model"] and result["host"]["cores"] >= 1
  for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"):
    assert result["versions"][name], name
  assert "torch" in result["versions"]
  assert result["peak_bf16_tflops"] == PEAK


def test_the_table_is_printed(tiny_run):
  stdout, result = tiny_run["stdout"], tiny_run["result"]
  final = stdout[stdout.rindex(device_check.HEADER):]
  lines = final.splitlines()
  for name in device_check.CASES:
    assert any(line.startswith(name + " ") for line in lines), name
  assert result["table"][0] == device_check.HEADER
  assert "\n".join(result["table"]) in stdout
  # ... and as the cases finished: each case's line also appears before the final table.
  first = stdout[:stdout.rindex(device_check.HEADER)]
  assert all(re.search(rf"^{n} ", first, re.M) for n in device_check.CASES)


def test_e2e_trained_through_the_trainer_with_checkpoints_and_metrics(tiny_run):
  row = tiny_run["result"]["cases"]["e2e"]
  run_dir = tiny_run["workdir"] / "e2e"
  steps = sorted(int(d) for d in os.listdir(run_dir / "checkpoints") if d.isdigit())
  assert steps == row["checkpoints"] == [4, 8]
  with open(run_dir / "metrics.jsonl", encoding="utf-8") as f:
    metrics = [json.loads(line) for line in f]
  assert [m["step"] for m in metrics] == [2, 4, 6, 8] and row["metrics_rows"] == 4
  assert all(np.isfinite(m["loss"]) and "input_wait_fraction" in m for m in metrics)
  assert 0 <= row["input_wait_fraction"] <= 1
  assert row["images_per_s"] > 0 and row["loader_images_per_s_per_thread"] > 0
  # Its step is seam_fp32's program, loaded from the run's compilation cache.
  assert row["cache_hits"] >= 1
  assert row["flops_per_step"] == tiny_run["result"]["cases"]["seam_fp32"]["flops_per_step"]


def test_the_deadline_skips_and_stops_cases(tmp_path):
  env = _env(tmp_path)
  out = tmp_path / "skipped.json"
  code, stdout, _ = _run(["--tiny", "--cases=aff,rw_cold", "--budget_s", "0", "--out", str(out)],
                         env)
  rows = json.loads(out.read_text())["cases"]
  assert code == 0 and [r["status"] for r in rows.values()] == ["skipped (budget)"] * 2
  assert "skipped" in stdout
  out = tmp_path / "stopped.json"
  code, _, _ = _run(["--tiny", "--cases=seam_fp32", "--budget_s", "3", "--out", str(out)], env)
  row = json.loads(out.read_text())["cases"]["seam_fp32"]
  assert code == 1 and row["status"] == "timed out (budget)" and row["wall_s"] < 30


def test_failing_cases_are_reported_and_the_run_goes_on(tmp_path):
  env = _env(tmp_path)
  out = tmp_path / "failed.json"
  (tmp_path / "a_file").write_text("")
  # Every case's process fails at start-up (its compilation cache cannot be made): both report.
  code, stdout, _ = _run(["--tiny", "--cases=aff,rw_cold", "--cache_dir",
                          str(tmp_path / "a_file" / "cache"), "--out", str(out)], env)
  rows = json.loads(out.read_text())["cases"]
  assert code == 1 and stdout.count("FAILED") >= 2
  for row in rows.values():
    assert row["status"] == "failed" and "cannot create" in row["reason"], row
  # The official code's step with a directory that holds no checkout fails at once.
  code, _, _ = _run(["--cases=reference", "--reference_dir", str(tmp_path), "--out", str(out)],
                    env)
  row = json.loads(out.read_text())["cases"]["reference"]
  assert code == 1 and row["status"] == "failed" and "contrast_train.py" in row["reason"]


def test_jobs_are_for_tiny_only(tmp_path):
  code, _, stderr = _run(["--jobs", "2", "--cases=aff"], _env(tmp_path))
  assert code == 2 and "--tiny only" in stderr


def test_host_batches_are_deterministic_and_view2_is_the_align_corners_resize():
  kwargs = dict(batch_size=3, crop=40, view2=12, resize_long=(40, 56), seed=5)
  sizes = device_check.image_sizes(tiny=True)
  one = device_check.SyntheticBatches(sizes, threads=1, start_step=2, **kwargs)
  two = device_check.SyntheticBatches(sizes, threads=2, prefetch=3, **kwargs)
  try:
    first, again = next(one), [next(two) for _ in range(3)][2]  # both are step 2
  finally:
    one.close()
    two.close()
  assert first["image1"].shape == (3, 40, 40, 3) and first["image2"].shape == (3, 12, 12, 3)
  assert first["labels"].shape == (3, 20) and (first["labels"].sum(1) >= 1).all()
  for key in first:
    np.testing.assert_array_equal(first[key], again[key])
  from ppc_jax.ops.resize import resize_bilinear  # pylint: disable=import-outside-toplevel
  want = resize_bilinear(jnp.asarray(first["image1"]), (12, 12), align_corners=True)
  np.testing.assert_allclose(first["image2"], np.asarray(want), rtol=0, atol=1e-5)
