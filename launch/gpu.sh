#!/usr/bin/env bash
# Train on the GPUs of one host, or of several hosts (run this once per host).
#
# One host, all its GPUs:
#   launch/gpu.sh configs/ppc_voc12.py runs/ppc [--config.x=y ...]
# Several hosts: set the coordinator (process 0's host:port), the process count and this host's index:
#   COORDINATOR=host0:12355 NUM_PROCESSES=2 PROCESS_ID=0 launch/gpu.sh configs/ppc_voc12.py runs/ppc
set -euo pipefail
if [ $# -lt 2 ]; then echo "usage: $0 CONFIG WORKDIR [extra train flags]" >&2; exit 2; fi
CONFIG=$1; WORKDIR=$2; shift 2
cd "$(dirname "$0")/.."
JAX_VERSION=$(sed -n 's/^jax==//p' requirements.txt)
if [ ! -f .venv/.gpu-installed ]; then
  test -x .venv/bin/python || python3 -m venv .venv
  .venv/bin/pip install -q -r requirements.txt "jax[cuda12]==$JAX_VERSION"
  .venv/bin/pip install -q --no-deps -e .
  touch .venv/.gpu-installed
fi
DIST=()
if [ -n "${COORDINATOR:-}" ]; then
  DIST=(--distributed --coordinator_address="$COORDINATOR" --num_processes="${NUM_PROCESSES:?}"
        --process_id="${PROCESS_ID:?}")
fi
# XLA may take most GPU memory by default; PCM affinities at scale 2 need headroom, not preallocation.
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
exec .venv/bin/python -m ppc_jax.train --config="$CONFIG" --workdir="$WORKDIR" "${DIST[@]}" "$@"
