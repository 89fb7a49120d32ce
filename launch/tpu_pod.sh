#!/usr/bin/env bash
# Train on a Cloud TPU VM or pod slice: ship the repository's tracked files to every worker, set up
# a venv with the TPU build of the pinned jax (launch/jax_build.py tpu), and start one process per
# worker (jax.distributed auto-detects the pod).
#
#   launch/tpu_pod.sh TPU_NAME ZONE configs/ppc_voc12.py gs://BUCKET/runs/ppc \
#       --config.input.data_dir=gs://BUCKET/VOCdevkit/VOC2012 [--config.x=y ...]
#   DRY_RUN=1 launch/tpu_pod.sh ...     prints the commands instead of running them
#
# MODULE=ppc_jax.pipeline runs the whole pipeline instead of one training stage (default
# ppc_jax.train). The work directory must be a bucket path (gs://...): the workers share no disk,
# and every one of them writes its shards of each checkpoint there (ppc_jax/fileio.py is the path
# layer). The data directory may be a bucket path too, or a copy on every worker's disk. Every
# worker reads its own input shard; process 0 writes metrics.
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG WORKDIR [extra flags]" >&2; exit 2
fi
TPU=$1; ZONE=$2; CONFIG=$3; WORKDIR=$4; shift 4
case "$WORKDIR" in
  gs://*) ;;
  *) echo "$0: WORKDIR=$WORKDIR: expected a bucket path gs://BUCKET/...; the pod's workers share" \
          "no disk, and all of them write each checkpoint" >&2; exit 2 ;;
esac
REPO=$(cd "$(dirname "$0")/.." && pwd)
MODULE=${MODULE:-ppc_jax.train}
REMOTE_DIR=ppc_jax_src
# ARCHIVE=path keeps the shipped archive there (tests read it); by default a temporary file.
if [ -z "${ARCHIVE:-}" ]; then
  ARCHIVE=$(mktemp -t ppc_jax_src.XXXXXX.tar.gz)
  trap 'rm -f "$ARCHIVE"' EXIT
fi

run() {  # prints the command (always) and runs it unless DRY_RUN is set
  printf '+'; printf ' %q' "$@"; printf '\n'
  if [ -z "${DRY_RUN:-}" ]; then "$@"; fi
}

# Only what git tracks (no .venv, runs/ or caches): the committed tree plus uncommitted edits of
# tracked files, exactly the files `git ls-files` lists.
(cd "$REPO" && git ls-files -z | tar --null -T - -czf "$ARCHIVE")
run gcloud compute tpus tpu-vm scp "$ARCHIVE" "$TPU:ppc_jax_src.tar.gz" --zone="$ZONE" --worker=all
EXTRA=""
PIP_ARGS=$(python3 "$REPO/launch/jax_build.py" tpu)  # the pinned set and its jax[tpu]
if [ $# -gt 0 ]; then EXTRA=$(printf ' %q' "$@"); fi
run gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command "set -e; \
mkdir -p $REMOTE_DIR && tar -xzf ppc_jax_src.tar.gz -C $REMOTE_DIR && cd $REMOTE_DIR && \
(test -x .venv/bin/python || python3 -m venv .venv) && \
.venv/bin/pip install -q $PIP_ARGS && \
.venv/bin/pip install -q --no-deps -e . && \
.venv/bin/python -m $MODULE --config=$CONFIG --workdir=$WORKDIR --distributed$EXTRA"
