#!/usr/bin/env python3
"""The jax build a launcher installs for an accelerator, as pip commands (stdlib only: it runs
before anything is installed). Used by launch/gpu.sh and launch/colab.ipynb, so both choose alike.

  python3 launch/jax_build.py gpu            # one line of `pip install` arguments per command
  python3 launch/jax_build.py gpu --build=cuda12
  python3 launch/jax_build.py gpu --name      # the chosen build's name (cuda13 on Python 3.12)

Builds:
  cpu     requirements.txt (the pinned jax 0.10.2, CPU).
  tpu     requirements.txt + requirements-tpu.txt (jax[tpu] at the pinned version).
  cuda13  requirements.txt, then requirements-cuda13.txt over it: jax 0.11.2 with its CUDA 13
          plugin, the build the GPU tables of docs/benchmarks.md were measured with. jax 0.11
          needs Python 3.12, and its pin contradicts requirements.txt's jax==0.10.2, so it is a
          second pip command that replaces jax and jaxlib (the rest of the pinned set is
          unchanged).
  cuda12  requirements.txt + requirements-cuda12.txt (jax[cuda12] at the pinned 0.10.2), for
          Python 3.11 hosts; no GPU figure in docs/benchmarks.md comes from this build.
The GPU default ('auto') is cuda13 on Python >= 3.12 and cuda12 below.
"""

import argparse
import shlex
import sys

BUILDS = ("cpu", "tpu", "cuda12", "cuda13")
CUDA13_MIN_PYTHON = (3, 12)


def choose_build(accelerator, python_version, build="auto"):
  """The build for `accelerator` ('cpu', 'gpu' or 'tpu') on Python `python_version` (a tuple)."""
  if accelerator not in ("cpu", "gpu", "tpu"):
    raise ValueError(f"accelerator={accelerator!r}: expected 'cpu', 'gpu' or 'tpu'")
  if build == "auto":
    if accelerator != "gpu":
      return accelerator
    return "cuda13" if tuple(python_version[:2]) >= CUDA13_MIN_PYTHON else "cuda12"
  if build not in BUILDS:
    raise ValueError(f"build={build!r}: expected 'auto' or one of {', '.join(BUILDS)}")
  if build == "cuda13" and tuple(python_version[:2]) < CUDA13_MIN_PYTHON:
    raise ValueError(f"build='cuda13' (jax 0.11.2) needs Python >= 3.12; this is Python "
                     f"{'.'.join(map(str, python_version[:2]))}: use build='cuda12'")
  return build


def pip_install_args(build):
  """The `pip install -q ...` argument lists, run in order from the checkout's root."""
  if build == "cpu":
    return [["-r", "requirements.txt"]]
  if build in ("tpu", "cuda12"):
    return [["-r", "requirements.txt", "-r", f"requirements-{build}.txt"]]
  if build == "cuda13":
    return [["-r", "requirements.txt"], ["-r", "requirements-cuda13.txt"]]
  raise ValueError(f"build={build!r}: expected one of {', '.join(BUILDS)}")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("accelerator", choices=("cpu", "gpu", "tpu"))
  parser.add_argument("--build", default="auto", help="auto or one of " + ", ".join(BUILDS))
  parser.add_argument("--name", action="store_true", help="print the chosen build's name only")
  args = parser.parse_args(argv)
  try:
    build = choose_build(args.accelerator, sys.version_info, args.build)
  except ValueError as e:
    parser.error(str(e))
  if args.name:
    print(build)
    return
  for pip_args in pip_install_args(build):
    print(shlex.join(pip_args))


if __name__ == "__main__":
  main()
