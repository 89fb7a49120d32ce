#!/usr/bin/env bash
# Run N cooperating processes on this machine (CPU devices), exercising the multi-host path
# (jax.distributed, per-process input shards, global arrays, every process saving checkpoints).
#
#   launch/local_multiprocess.sh 2 configs/demo.py runs/mp [--config.x=y ...]
#
# Paths are relative to the current directory. Logs go to WORKDIR.process<i>.log. Environment:
#   PY=python to use (default: the repo's .venv), PORT=coordinator port (default: random),
#   XLA_FLAGS=--xla_force_host_platform_device_count=K for K CPU devices per process (default 1),
#   GRACE=seconds a process gets to save and exit after a stop request (default 60),
#   DRY_RUN=1 prints the N commands instead of running them, MODULE=ppc_jax.pipeline runs the
#   whole pipeline (default ppc_jax.train).
# Ctrl-C / SIGTERM are passed on to every process (each saves a checkpoint and stops; exit status
# 75 when a run was interrupted, so rerun to resume); if one process fails, the others are
# stopped too, since they would wait for it in collectives forever.
set -euo pipefail
if [ $# -lt 3 ]; then echo "usage: $0 NUM_PROCESSES CONFIG WORKDIR [flags]" >&2; exit 2; fi
N=$1; CONFIG=$2; WORKDIR=$3; shift 3
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
GRACE=${GRACE:-60}
MODULE=${MODULE:-ppc_jax.train}
# `-m ppc_jax.train` from any directory, installed or not.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
PORT=${PORT:-$((20000 + RANDOM % 20000))}
pids=()

# Sends SIGTERM to the processes still running; SIGKILL to any left after GRACE seconds.
stop_all() {
  local pid alive t
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for ((t = 0; t < GRACE; t++)); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive -eq 1 ] || return 0
    sleep 1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
}
trap 'echo "stop requested: every process saves a checkpoint and stops" >&2; stop_all; exit 130' INT TERM

if [ -n "${DRY_RUN:-}" ]; then
  for ((i = 0; i < N; i++)); do
    printf '+ JAX_PLATFORMS=cpu'
    printf ' %q' "$PY" -m "$MODULE" --config="$CONFIG" --workdir="$WORKDIR" --distributed \
      --coordinator_address="127.0.0.1:$PORT" --num_processes="$N" --process_id="$i" "$@"
    printf ' > %q 2>&1 &\n' "$WORKDIR.process$i.log"
  done
  exit 0
fi
mkdir -p "$(dirname "$WORKDIR")"
for ((i = 0; i < N; i++)); do
  JAX_PLATFORMS=cpu "$PY" -m "$MODULE" --config="$CONFIG" --workdir="$WORKDIR" --distributed \
    --coordinator_address="127.0.0.1:$PORT" --num_processes="$N" --process_id="$i" "$@" \
    > "$WORKDIR.process$i.log" 2>&1 &
  pids+=($!)
  echo "process $i: pid $!, log $WORKDIR.process$i.log"
done
status=0
for ((i = 0; i < N; i++)); do
  # wait -n: the first process to finish, whichever it is, so a failure is seen at once.
  code=0
  wait -n || code=$?
  if [ "$code" -eq 75 ]; then
    # Interrupted at a stop point (SIGTERM / SIGINT): every process stops at the same step.
    echo "a process was interrupted; rerun to resume" >&2
    status=75
  elif [ "$code" -ne 0 ]; then
    echo "a process failed; stopping the others; see $WORKDIR.process*.log" >&2
    status=1
    stop_all
    break
  fi
done
exit $status
