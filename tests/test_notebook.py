"""launch/colab.ipynb, executed headless (nbclient + ipykernel) with a CPU-sized setting injected
after its parameters cell, as papermill would; and its accelerator choice on faked runtimes."""

import json
import os
import stat
import sys

import nbclient
import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "launch", "colab.ipynb")
KERNEL_TIMEOUT_S = 900  # per cell; the training cell compiles the step (about a minute here)

# The tiny model and crops of tests/e2e_fixtures.py, 2 steps, one inference scale.
TINY = {
    "total_steps": 2, "cam_warmup_steps": 0, "log_every_steps": 1, "ckpt_every_steps": 2,
    "model.width_divisor": 32, "model.stage_blocks": (1, 1, 1, 1),
    "input.batch_size": 4, "input.crop_size": 48, "input.view2_size": 24,
    "input.resize_long": (48, 64), "input.num_parallel_calls": 2,
    "loss.ppc.topk_divisor": 2, "init.calibrate_bn_images": 4,
    "infer.scales": (1.0,), "infer.num_overlays": 2,
}
TINY_SYNTH = {"num_train_aug": 8, "num_train": 4, "min_size": 64, "max_size": 64}


def _load():
  return nbformat.read(NOTEBOOK, as_version=4)


def _parameters_index(nb):
  (index,) = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
  return index


def _outputs_text(cell):
  parts = []
  for out in cell.get("outputs", []):
    if out.get("output_type") == "stream":
      parts.append(out["text"])
    for mime in ("text/plain", "text/markdown"):
      if mime in out.get("data", {}):
        parts.append(out["data"][mime])
  return "".join(parts)


def test_notebook_runs_headless_on_cpu(tmp_path, monkeypatch):
  nb = _load()
  workdir = str(tmp_path / "nb")
  injected = nbformat.v4.new_code_cell(
      "# Injected by tests/test_notebook.py\n"
      f"INSTALL = False\nWORKDIR = {workdir!r}\n"
      f"CONFIG_OVERRIDES = {TINY!r}\nSYNTH_OVERRIDES = {TINY_SYNTH!r}\n",
      metadata={"tags": ["injected-parameters"]})
  nb.cells.insert(_parameters_index(nb) + 1, injected)
  # The kernel inherits this environment: one CPU device (not the suite's 8), no GPU, and a
  # compilation cache in the test's directory instead of the user's home.
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  monkeypatch.setenv("XLA_FLAGS", " ".join(flags))
  monkeypatch.delenv("JAX_NUM_CPU_DEVICES", raising=False)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "xla"))
  monkeypatch.delenv("COLAB_TPU_ADDR", raising=False)
  monkeypatch.delenv("TPU_NAME", raising=False)
  monkeypatch.setenv("PATH", os.pathsep.join(
      p for p in os.environ["PATH"].split(os.pathsep) if not os.path.isfile(
          os.path.join(p, "nvidia-smi"))))

  client = nbclient.NotebookClient(nb, timeout=KERNEL_TIMEOUT_S, kernel_name="python3",
                                   resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}})
  client.execute()  # raises CellExecutionError naming the cell on any error

  texts = [_outputs_text(c) for c in nb.cells if c.cell_type == "code"]
  setup = next(t for t in texts if "accelerator:" in t)
  assert f"checkout: {ROOT}" in setup and "accelerator: cpu" in setup
  assert "-m pip install -q -r requirements.txt\n" in setup  # no accelerator build on a CPU
  assert "-m pip install -q --no-deps -e ." in setup
  assert any("seed mIoU" in t for t in texts)
  images = [c for c in nb.cells if c.cell_type == "code" and any(
      "image/png" in o.get("data", {}) or "image/jpeg" in o.get("data", {})
      for o in c.get("outputs", []))]
  assert len(images) == 2  # the threshold curve; the CAM overlays
  assert "2 overlays shown" in texts[-1]
  with open(os.path.join(workdir, "train", "eval", "report.json"), encoding="utf-8") as f:
    report = json.load(f)
  assert len(report["miou_curve"]) == 60
  assert sorted(os.listdir(os.path.join(workdir, "train", "checkpoints"))) == ["2"]


def _fake_nvidia_smi(directory):
  path = os.path.join(directory, "nvidia-smi")
  with open(path, "w", encoding="utf-8") as f:
    f.write("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)'\n")
  os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)


@pytest.mark.parametrize("runtime", ["gpu", "tpu"])
def test_notebook_installs_the_jax_build_of_the_runtime(runtime, tmp_path, monkeypatch):
  """The setup cell's choice on a faked GPU (an nvidia-smi that lists one) or TPU runtime."""
  nb = _load()
  setup = next(c.source for c in nb.cells if "detect_accelerator()" in c.source)
  monkeypatch.delenv("COLAB_TPU_ADDR", raising=False)
  monkeypatch.delenv("TPU_NAME", raising=False)
  if runtime == "gpu":
    _fake_nvidia_smi(str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path) + os.pathsep + os.environ["PATH"])
  else:
    monkeypatch.setenv("COLAB_TPU_ADDR", "10.0.0.2:8470")
  monkeypatch.chdir(os.path.join(ROOT, "launch"))
  namespace = {"REPO_URL": "", "INSTALL": False}
  exec(compile(setup, "colab.ipynb setup cell", "exec"), namespace)  # pylint: disable=exec-used
  assert namespace["ACCELERATOR"] == runtime
  # The launchers' rule (tests/test_launchers.py checks it): on this Python 3.11, CUDA 12 at the
  # pinned jax for a GPU; jax[tpu] for a TPU; each file installed over requirements.txt.
  build = namespace["JAX_BUILD"]
  gpu_build = "cuda12" if sys.version_info < (3, 12) else "cuda13"
  assert build == {"gpu": gpu_build, "tpu": "tpu"}[runtime]
  requirement = f"requirements-{build}.txt"
  pip = [sys.executable, "-m", "pip", "install", "-q"]
  assert namespace["COMMANDS"][-1] == pip + ["--no-deps", "-e", "."]
  installs = namespace["COMMANDS"][:-1]
  assert installs[0][:len(pip) + 2] == pip + ["-r", "requirements.txt"]
  assert installs[-1][-2:] == ["-r", requirement]
  assert os.path.isfile(os.path.join(ROOT, requirement))

  # Outside a checkout and without REPO_URL: a clear error, not a clone of a placeholder.
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ValueError, match="REPO_URL is empty"):
    exec(compile(setup, "colab.ipynb setup cell", "exec"),  # pylint: disable=exec-used
         {"REPO_URL": "", "INSTALL": False})
