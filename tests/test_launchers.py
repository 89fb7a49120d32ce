"""Every launcher's dry run prints the exact commands it would run (DRY_RUN=1), checked here; the
real multi-process path runs in tests/test_multihost.py."""

import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import tarfile

import pytest

import e2e_fixtures as e2e

ROOT = e2e.ROOT


def _dry_run(script, *args, **env):
  proc = subprocess.run(
      [os.path.join(ROOT, "launch", script), *args], cwd=ROOT, capture_output=True, text=True,
      timeout=e2e.PROCESS_TIMEOUT_S, env=dict(os.environ, DRY_RUN="1", **env))
  assert proc.returncode == 0, proc.stderr
  return [shlex.split(line[2:]) for line in proc.stdout.splitlines() if line.startswith("+ ")]


def _venv_python_version():
  """The Python version gpu.sh goes by: the checkout's .venv, or python3 before there is one."""
  python = os.path.join(ROOT, ".venv", "bin", "python")
  out = subprocess.run([python if os.access(python, os.X_OK) else "python3", "-c",
                        "import sys; print(*sys.version_info[:2])"], capture_output=True, text=True,
                       check=True, timeout=e2e.PROCESS_TIMEOUT_S).stdout
  return tuple(int(v) for v in out.split())


def _pinned_jax():
  with open(os.path.join(ROOT, "requirements.txt"), encoding="utf-8") as f:
    return next(line.split("==")[1].strip() for line in f if line.startswith("jax=="))


def _jax_build():
  spec = importlib.util.spec_from_file_location("jax_build", os.path.join(ROOT, "launch",
                                                                         "jax_build.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_jax_build_choice():
  """GPU: jax 0.11.2 / CUDA 13 (the README's GPU tables' build) on Python >= 3.12, installed by a
  second pip command over the pinned set; the pinned 0.10.2 / CUDA 12 below 3.12."""
  jb = _jax_build()
  assert jb.choose_build("gpu", (3, 12, 1)) == "cuda13" == jb.choose_build("gpu", (3, 13, 0))
  assert jb.choose_build("gpu", (3, 11, 7)) == "cuda12"
  assert jb.choose_build("gpu", (3, 12), build="cuda12") == "cuda12"
  assert jb.choose_build("tpu", (3, 11)) == "tpu" and jb.choose_build("cpu", (3, 12)) == "cpu"
  with pytest.raises(ValueError, match="needs Python >= 3.12; this is Python 3.11"):
    jb.choose_build("gpu", (3, 11), build="cuda13")
  with pytest.raises(ValueError, match="build='cuda11'"):
    jb.choose_build("gpu", (3, 12), build="cuda11")
  assert jb.pip_install_args("cuda13") == [["-r", "requirements.txt"],
                                           ["-r", "requirements-cuda13.txt"]]
  assert jb.pip_install_args("cuda12") == [["-r", "requirements.txt", "-r",
                                            "requirements-cuda12.txt"]]
  for build in jb.BUILDS:
    for args in jb.pip_install_args(build):
      for name in args[1::2]:
        assert os.path.isfile(os.path.join(ROOT, name)), name
  with open(os.path.join(ROOT, "requirements-cuda12.txt"), encoding="utf-8") as f:
    assert f"jax[cuda12]=={_pinned_jax()}" in f.read()
  with open(os.path.join(ROOT, "requirements-cuda13.txt"), encoding="utf-8") as f:
    assert "jax[cuda13]==0.11.2" in f.read()
  with open(os.path.join(ROOT, "docs", "benchmarks.md"), encoding="utf-8") as f:
    assert "### GPU: one NVIDIA H200 (jax 0.11.2 / CUDA 13" in f.read()


def test_gpu_launcher_commands(tmp_path):
  # This checkout's .venv decides the build (Python 3.11 here: CUDA 12, one pip command).
  cmds = _dry_run("gpu.sh", "configs/ppc_voc12.py", "runs/x", "--config.optim.lr=0.1")
  build = _jax_build().choose_build("gpu", _venv_python_version())
  installs = [c for c in cmds if c[:3] == [".venv/bin/pip", "install", "-q"] and "-r" in c]
  assert installs == [[".venv/bin/pip", "install", "-q", *a]
                      for a in _jax_build().pip_install_args(build)]
  assert ["touch", f".venv/.gpu-installed-{build}"] in cmds
  # A host without a venv: one is made with PYTHON, and JAX_BUILD=cuda13 on a Python below 3.12 is
  # refused with the reason (jax 0.11 needs 3.12).
  for name in ("launch", "requirements.txt", "requirements-cuda12.txt", "requirements-cuda13.txt"):
    (shutil.copytree if os.path.isdir(os.path.join(ROOT, name)) else shutil.copy)(
        os.path.join(ROOT, name), str(tmp_path / name))
  env = dict(os.environ, DRY_RUN="1", PYTHON=sys.executable)
  fresh = subprocess.run([str(tmp_path / "launch" / "gpu.sh"), "c.py", "runs/x"], cwd=str(tmp_path),
                         capture_output=True, text=True, timeout=e2e.PROCESS_TIMEOUT_S, env=env)
  assert fresh.returncode == 0, fresh.stderr
  assert fresh.stdout.splitlines()[0] == f"+ {shlex.quote(sys.executable)} -m venv .venv"
  if sys.version_info < (3, 12):
    refused = subprocess.run([str(tmp_path / "launch" / "gpu.sh"), "c.py", "runs/x"],
                             cwd=str(tmp_path), capture_output=True, text=True,
                             timeout=e2e.PROCESS_TIMEOUT_S, env=dict(env, JAX_BUILD="cuda13"))
    assert refused.returncode == 2 and "needs Python >= 3.12" in refused.stderr
    assert not refused.stdout
  assert cmds[-1] == [".venv/bin/python", "-m", "ppc_jax.train", "--config=configs/ppc_voc12.py",
                      "--workdir=runs/x", "--config.optim.lr=0.1"]
  multi = _dry_run("gpu.sh", "configs/ppc_voc12.py", "runs/x", COORDINATOR="h0:1234",
                   NUM_PROCESSES="2", PROCESS_ID="1", MODULE="ppc_jax.pipeline")
  assert multi[-1] == [".venv/bin/python", "-m", "ppc_jax.pipeline",
                       "--config=configs/ppc_voc12.py", "--workdir=runs/x", "--distributed",
                       "--coordinator_address=h0:1234", "--num_processes=2", "--process_id=1"]


def test_tpu_launcher_ships_only_tracked_files(tmp_path):
  archive = str(tmp_path / "src.tar.gz")
  cmds = _dry_run("tpu_pod.sh", "tpu1", "zone-a", "configs/ppc_voc12.py", "gs://b/runs/x",
                  "--config.input.data_dir=gs://b/VOC2012", ARCHIVE=archive)
  scp, ssh = cmds
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and archive in scp
  assert "--worker=all" in scp and "--zone=zone-a" in ssh
  remote = ssh[ssh.index("--command") + 1]
  assert "/bin/pip install -q -r requirements.txt -r requirements-tpu.txt &&" in remote
  with open(os.path.join(ROOT, "requirements-tpu.txt"), encoding="utf-8") as f:
    assert f"jax[tpu]=={_pinned_jax()}" in f.read()
  assert remote.endswith("-m ppc_jax.train --config=configs/ppc_voc12.py --workdir=gs://b/runs/x "
                         "--distributed --config.input.data_dir=gs://b/VOC2012")
  tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
  with tarfile.open(archive) as tar:
    shipped = tar.getnames()
  assert sorted(shipped) == sorted(tracked)
  assert not any(name.startswith((".venv", "runs/")) for name in shipped)
  # A local work directory on a pod is refused: the workers share no disk.
  proc = subprocess.run([os.path.join(ROOT, "launch", "tpu_pod.sh"), "tpu1", "zone-a",
                         "configs/ppc_voc12.py", "runs/x"], cwd=ROOT, capture_output=True,
                        text=True, timeout=e2e.PROCESS_TIMEOUT_S, env=dict(os.environ, DRY_RUN="1"))
  assert proc.returncode == 2 and "WORKDIR=runs/x: expected a bucket path" in proc.stderr
  assert not proc.stdout


def test_local_multiprocess_launcher_commands():
  cmds = _dry_run("local_multiprocess.sh", "2", "configs/demo.py", "runs/mp",
                  "--config.total_steps=3", PORT="23456", PY="python3")
  assert len(cmds) == 2
  for i, cmd in enumerate(cmds):
    assert cmd[:4] == ["JAX_PLATFORMS=cpu", "python3", "-m", "ppc_jax.train"]
    assert "--coordinator_address=127.0.0.1:23456" in cmd and f"--process_id={i}" in cmd
    assert "--num_processes=2" in cmd and "--config.total_steps=3" in cmd
  assert not os.path.exists(os.path.join(ROOT, "runs", "mp.process0.log"))
