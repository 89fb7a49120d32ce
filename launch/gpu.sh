#!/usr/bin/env bash
# Train on the GPUs of one host, or of several hosts (run this once per host).
#
# One host, all its GPUs:
#   launch/gpu.sh configs/ppc_voc12.py runs/ppc [--config.x=y ...]
# Several hosts: set the coordinator (process 0's host:port), the process count and this host's index:
#   COORDINATOR=host0:12355 NUM_PROCESSES=2 PROCESS_ID=0 launch/gpu.sh configs/ppc_voc12.py runs/ppc
# DRY_RUN=1 prints the commands instead of running them; MODULE=ppc_jax.pipeline runs the whole
# pipeline (default ppc_jax.train). The venv gets the pinned jax with its CUDA 12 plugin
# (requirements-cuda12.txt, the `cuda12` extra); the README's GPU tables say which jax measured them.
set -euo pipefail
if [ $# -lt 2 ]; then echo "usage: $0 CONFIG WORKDIR [extra flags]" >&2; exit 2; fi
CONFIG=$1; WORKDIR=$2; shift 2
cd "$(dirname "$0")/.."
MODULE=${MODULE:-ppc_jax.train}

run() {  # prints the command (always) and runs it unless DRY_RUN is set
  printf '+'; printf ' %q' "$@"; printf '\n'
  if [ -z "${DRY_RUN:-}" ]; then "$@"; fi
}

if [ ! -f .venv/.gpu-installed ] || [ -n "${DRY_RUN:-}" ]; then
  test -x .venv/bin/python || run python3 -m venv .venv
  run .venv/bin/pip install -q -r requirements.txt -r requirements-cuda12.txt
  run .venv/bin/pip install -q --no-deps -e .
  run touch .venv/.gpu-installed
fi
DIST=()
if [ -n "${COORDINATOR:-}" ]; then
  DIST=(--distributed --coordinator_address="$COORDINATOR" --num_processes="${NUM_PROCESSES:?}"
        --process_id="${PROCESS_ID:?}")
fi
# XLA may take most GPU memory by default; PCM affinities at scale 2 need headroom, not preallocation.
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
run .venv/bin/python -m "$MODULE" --config="$CONFIG" --workdir="$WORKDIR" "${DIST[@]}" "$@"
