"""`pip install .`: the wheel declares the pinned dependencies and extras, and its console
scripts run the commands.

The wheel is built from this checkout without network or build isolation (setuptools of the test
environment), installed with --no-deps into a target directory, and every console script is
started through the file pip wrote for it, as a user's shell would.
"""

import email.parser
import os
import subprocess
import sys
import zipfile

import pytest

import e2e_fixtures as e2e

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {
    "ppc-train": "ppc_jax.train:cli",
    "ppc-infer": "ppc_jax.seeds.infer:cli",
    "ppc-evaluate": "ppc_jax.evaluate:cli",
    "ppc-demo": "ppc_jax.demo:cli",
    "ppc-convert": "ppc_jax.convert:cli",
    "ppc-crf-labels": "ppc_jax.refine.crf_labels:cli",
    "ppc-random-walk": "ppc_jax.refine.rw_infer:cli",
    "ppc-segment": "ppc_jax.segment.seg_infer:cli",
    "ppc-pipeline": "ppc_jax.pipeline:cli",
    "ppc-build-tfds": "ppc_jax.data.tfds_voc:cli",
    "ppc-pretrain-eval": "ppc_jax.pretrain.evaluate:cli",
}
# Building and installing take a few seconds; each script start imports JAX (seconds on a
# loaded 2-core machine). A hang, not slowness, is what this bounds: the suite's hang guard.
TIMEOUT_S = e2e.PROCESS_TIMEOUT_S


def _pins(path):
  with open(path, encoding="utf-8") as f:
    return sorted(line.split("#")[0].strip() for line in f
                  if line.split("#")[0].strip())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
  out = tmp_path_factory.mktemp("wheel")
  build = tmp_path_factory.mktemp("build")
  # Build from a copy: an in-tree build would leave build/ and *.egg-info in the checkout.
  files = subprocess.run(["git", "-C", ROOT, "ls-files", "-co", "--exclude-standard"],
                         check=True, capture_output=True, text=True).stdout.split("\n")
  for rel in filter(None, files):
    src = os.path.join(ROOT, rel)
    if not os.path.isfile(src):
      continue
    dst = build / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(open(src, "rb").read())
  proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                         "--no-index", "-q", "-w", str(out), str(build)],
                        capture_output=True, text=True, timeout=TIMEOUT_S)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  (path,) = [p for p in out.iterdir() if p.suffix == ".whl"]
  return path


def _metadata(wheel_path, name):
  with zipfile.ZipFile(wheel_path) as z:
    (member,) = [n for n in z.namelist() if n.endswith(".dist-info/" + name)]
    return z.read(member).decode()


def test_wheel_declares_the_pins_and_extras(wheel):
  meta = email.parser.Parser().parsestr(_metadata(wheel, "METADATA"))
  requires = meta.get_all("Requires-Dist")
  base = sorted(r for r in requires if "extra ==" not in r)
  assert base == _pins(os.path.join(ROOT, "requirements.txt"))
  extras = set(meta.get_all("Provides-Extra"))
  assert extras == {"test", "torch", "cuda12", "tpu"}
  by_extra = {}
  for r in requires:
    if "extra ==" in r:
      req, marker = r.split(";")
      by_extra.setdefault(marker.split("==")[1].strip().strip('"'), []).append(req.strip())
  assert sorted(by_extra["test"]) == _pins(os.path.join(ROOT, "requirements-dev.txt"))
  assert by_extra["torch"] == ["torch==2.13.0"]
  # The accelerator extras pin the same jax version as the CPU install.
  (jax_pin,) = [p for p in base if p.startswith("jax==")]
  version = jax_pin.split("==")[1]
  assert by_extra["cuda12"] == [f"jax[cuda12]=={version}"]
  assert by_extra["tpu"] == [f"jax[tpu]=={version}"]


def test_console_scripts_run_the_commands(wheel, tmp_path):
  entry_points = _metadata(wheel, "entry_points.txt")
  for name, target in SCRIPTS.items():
    assert f"{name} = {target}" in entry_points
  target_dir = tmp_path / "site"
  proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                         "--target", str(target_dir), str(wheel)],
                        capture_output=True, text=True, timeout=TIMEOUT_S)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  env = dict(os.environ, PYTHONPATH=str(target_dir), TF_CPP_MIN_LOG_LEVEL="3")
  for name in SCRIPTS:
    script = target_dir / "bin" / name
    # The installed package, not the checkout: run from an empty directory.
    proc = subprocess.run([str(script), "--helpfull"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=TIMEOUT_S)
    out = proc.stdout + proc.stderr
    # absl's --help* exits with status 1 after printing the flags (as `python -m` does); the
    # command's own flag section shows that its module was imported and its flags defined.
    assert proc.returncode == 1 and "Traceback" not in out, f"{name}: {out[-3000:]}"
    module = SCRIPTS[name].split(":")[0]
    assert f"{module}:" in out, f"{name}: its own flags are not listed:\n{out[-3000:]}"
  # A usage error is an error (status 1), not a traceback or a hang.
  proc = subprocess.run([str(target_dir / "bin" / "ppc-evaluate")], capture_output=True,
                        text=True, env=env, cwd=tmp_path, timeout=TIMEOUT_S)
  assert proc.returncode == 1 and "voc_root" in proc.stderr, proc.stderr[-3000:]
