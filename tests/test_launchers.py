"""Every launcher's dry run prints the exact commands it would run (DRY_RUN=1), checked here; the
real multi-process path runs in tests/test_multihost.py."""

import os
import shlex
import subprocess
import tarfile

import e2e_fixtures as e2e

ROOT = e2e.ROOT


def _dry_run(script, *args, **env):
  proc = subprocess.run(
      [os.path.join(ROOT, "launch", script), *args], cwd=ROOT, capture_output=True, text=True,
      timeout=e2e.PROCESS_TIMEOUT_S, env=dict(os.environ, DRY_RUN="1", **env))
  assert proc.returncode == 0, proc.stderr
  return [shlex.split(line[2:]) for line in proc.stdout.splitlines() if line.startswith("+ ")]


def _pinned_jax():
  with open(os.path.join(ROOT, "requirements.txt"), encoding="utf-8") as f:
    return next(line.split("==")[1].strip() for line in f if line.startswith("jax=="))


def test_gpu_launcher_commands():
  cmds = _dry_run("gpu.sh", "configs/ppc_voc12.py", "runs/x", "--config.optim.lr=0.1")
  assert [".venv/bin/pip", "install", "-q", "-r", "requirements.txt", "-r",
          "requirements-cuda12.txt"] in cmds
  with open(os.path.join(ROOT, "requirements-cuda12.txt"), encoding="utf-8") as f:
    assert f"jax[cuda12]=={_pinned_jax()}" in f.read()
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
  assert f"'jax[tpu]=={_pinned_jax()}'" in remote
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
