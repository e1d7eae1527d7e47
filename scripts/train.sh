#!/usr/bin/env bash
# `make train`: start the mesh, bring a labelled data set into it (ingestor -> Kafka ->
# feature_service), snapshot it, and train through the gateway with progress.
#   DATA      a KITTI-layout folder (train/ and val/ with images/ and labels/); default: the shared
#             apollo-cars data when present, else a synthetic set drawn by trainer.synthetic
#   NAME      dataset/snapshot name (default: the folder's name)
#   ARGS      extra `carmesh train` options (default: car only, van/truck/bus as don't-care)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${VENV:-.venv}/bin/python
RUN_DIR=${CARMESH_STACK_RUN_DIR:-.run}
DATA=${DATA:-}
if [ -z "$DATA" ]; then
  if [ -d ../shared/data/apollo-cars/train ]; then
    DATA=../shared/data/apollo-cars
  else
    # Under the run dir's data/, which `make up` lets the ingestor read (never the run dir itself: keys).
    DATA=$RUN_DIR/data/synthetic-cars
    [ -d "$DATA/train" ] || "$PY" -m trainer.synthetic "$DATA" >&2
    echo "train: no data set given; using synthetic scenes in $DATA (real data: DATA=/path/to/kitti-folder make train)" >&2
  fi
fi
NAME=${NAME:-$(basename "$DATA" | tr -c 'A-Za-z0-9._\n-' '-')}
ARGS=${ARGS:---classes car --ignore-classes van,truck,bus}

# The daemons read only request paths under their allowed roots: let them read DATA wherever it is
# (a stack already running keeps its roots; `make down` first if the import is refused).
export CARMESH_STACK_DATA_ROOTS
CARMESH_STACK_DATA_ROOTS=$(cd "$(dirname "$DATA")" && pwd)/$(basename "$DATA")${CARMESH_STACK_DATA_ROOTS:+:$CARMESH_STACK_DATA_ROOTS}
"$PY" -m devstack up  # status on stderr; nothing on stdout
export CARMESH_API_KEY
CARMESH_API_KEY=$(cat "$RUN_DIR/api-key")
export CARMESH_GATEWAY=127.0.0.1:$((50051 + ${CARMESH_STACK_PORT_OFFSET:-0}))

if ! "$PY" -m carmesh_cli datasets show "$NAME" >/dev/null 2>&1; then
  echo "train: importing $DATA as data set $NAME" >&2
  "$PY" -m carmesh_cli ingest dataset "$DATA" --format kitti --dataset "$NAME" --camera "$NAME" --json \
    --output "$RUN_DIR/import-$NAME.json"
  total=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['frames_published'])" "$RUN_DIR/import-$NAME.json")
  echo "train: waiting for feature_service to store $total frames" >&2
  "$PY" -m devstack wait-frames "$NAME" "$total" 300
  "$PY" -m carmesh_cli datasets create "$NAME" --dataset "$NAME" --keep-source-split >&2
fi
# shellcheck disable=SC2086
exec "$PY" -m carmesh_cli train "$NAME" $ARGS "$@"
