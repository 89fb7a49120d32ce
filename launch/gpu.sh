#!/usr/bin/env bash
# Train on the GPUs of one host, or of several hosts (run this once per host).
#
# One host, all its GPUs:
#   launch/gpu.sh configs/ppc_voc12.py runs/ppc [--config.x=y ...]
# Several hosts: set the coordinator (process 0's host:port), the process count and this host's index:
#   COORDINATOR=host0:12355 NUM_PROCESSES=2 PROCESS_ID=0 launch/gpu.sh configs/ppc_voc12.py runs/ppc
# DRY_RUN=1 prints the commands instead of running them; MODULE=ppc_jax.pipeline runs the whole
# pipeline (default ppc_jax.train). The venv gets the jax build launch/jax_build.py picks for a GPU:
# on Python >= 3.12 jax 0.11.2 with CUDA 13 (requirements-cuda13.txt, the build of the GPU tables
# in docs/benchmarks.md), on 3.11 the pinned 0.10.2 with CUDA 12 (requirements-cuda12.txt);
# JAX_BUILD=cuda12 or cuda13 chooses by hand. PYTHON=interpreter for a new .venv (default python3).
set -euo pipefail
if [ $# -lt 2 ]; then echo "usage: $0 CONFIG WORKDIR [extra flags]" >&2; exit 2; fi
CONFIG=$1; WORKDIR=$2; shift 2
cd "$(dirname "$0")/.."
MODULE=${MODULE:-ppc_jax.train}

run() {  # prints the command (always) and runs it unless DRY_RUN is set
  printf '+'; printf ' %q' "$@"; printf '\n'
  if [ -z "${DRY_RUN:-}" ]; then "$@"; fi
}

# The build's pip commands, one line of arguments each, from the venv's interpreter (or, before the
# venv exists, the one that will make it): its Python version decides the default build.
VENV_PY=.venv/bin/python
test -x "$VENV_PY" || VENV_PY=${PYTHON:-python3}
BUILD_ARGS=$("$VENV_PY" launch/jax_build.py gpu --build="${JAX_BUILD:-auto}")
BUILD=$("$VENV_PY" launch/jax_build.py gpu --build="${JAX_BUILD:-auto}" --name)
if [ ! -f ".venv/.gpu-installed-$BUILD" ] || [ -n "${DRY_RUN:-}" ]; then
  test -x .venv/bin/python || run "${PYTHON:-python3}" -m venv .venv
  while read -r -a PIP_ARGS; do
    run .venv/bin/pip install -q "${PIP_ARGS[@]}"
  done <<< "$BUILD_ARGS"
  run .venv/bin/pip install -q --no-deps -e .
  run rm -f .venv/.gpu-installed-cuda12 .venv/.gpu-installed-cuda13
  run touch ".venv/.gpu-installed-$BUILD"
fi
DIST=()
if [ -n "${COORDINATOR:-}" ]; then
  DIST=(--distributed --coordinator_address="$COORDINATOR" --num_processes="${NUM_PROCESSES:?}"
        --process_id="${PROCESS_ID:?}")
fi
# XLA may take most GPU memory by default; PCM affinities at scale 2 need headroom, not preallocation.
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
run .venv/bin/python -m "$MODULE" --config="$CONFIG" --workdir="$WORKDIR" "${DIST[@]}" "$@"
