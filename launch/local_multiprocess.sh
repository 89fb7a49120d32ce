#!/usr/bin/env bash
# Run N cooperating processes on this machine (CPU devices), exercising the multi-host path
# (jax.distributed, per-process input shards, global arrays, every process saving checkpoints).
#
#   launch/local_multiprocess.sh 2 configs/demo.py runs/mp [--config.x=y ...]
set -euo pipefail
if [ $# -lt 3 ]; then echo "usage: $0 NUM_PROCESSES CONFIG WORKDIR [flags]" >&2; exit 2; fi
N=$1; CONFIG=$2; WORKDIR=$3; shift 3
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mkdir -p "$(dirname "$WORKDIR")"
PORT=${PORT:-$((20000 + RANDOM % 20000))}
pids=()
for ((i = 0; i < N; i++)); do
  JAX_PLATFORMS=cpu "$PY" -m ppc_jax.train --config="$CONFIG" --workdir="$WORKDIR" --distributed \
    --coordinator_address="127.0.0.1:$PORT" --num_processes="$N" --process_id="$i" "$@" \
    > "$WORKDIR.process$i.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
[ $status -eq 0 ] || { echo "a process failed; see $WORKDIR.process*.log" >&2; exit 1; }
