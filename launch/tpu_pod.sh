#!/usr/bin/env bash
# Train on a Cloud TPU VM or pod slice: copy the repo to every worker, set up a venv with the TPU
# build of the pinned jax, and start one process per worker (jax.distributed auto-detects the pod).
#
#   launch/tpu_pod.sh TPU_NAME ZONE configs/ppc_voc12.py runs/ppc [--config.x=y ...]   (local paths; gs:// not supported yet)
#
# The data directory (config.input.data_dir) must be readable on every worker (a copy on each VM's
# disk, or a mounted bucket). Every worker writes its own input shard; process 0 writes metrics.
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG WORKDIR [extra train flags]" >&2; exit 2
fi
TPU=$1; ZONE=$2; CONFIG=$3; WORKDIR=$4; shift 4
REPO=$(cd "$(dirname "$0")/.." && pwd)
JAX_VERSION=$(sed -n 's/^jax==//p' "$REPO/requirements.txt")

gcloud compute tpus tpu-vm scp --recurse "$REPO" "$TPU": --zone="$ZONE" --worker=all
REMOTE_DIR=$(basename "$REPO")
gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command "
  set -e; cd $REMOTE_DIR
  test -x .venv/bin/python || python3 -m venv .venv
  .venv/bin/pip install -q -r requirements.txt 'jax[tpu]==$JAX_VERSION'
  .venv/bin/pip install -q --no-deps -e .
  .venv/bin/python -m ppc_jax.train --config=$CONFIG --workdir=$WORKDIR --distributed $*
"
