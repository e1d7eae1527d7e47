#!/usr/bin/env bash
# The main job: start the local mesh, register an ONNX detector (MODEL, or one trained here
# when none is given), promote it to champion, and detect cars in an image through the gateway,
# writing the annotated JPEG.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-}
IMAGE=${2:-}
PY=${VENV:-.venv}/bin/python
SHARED=../shared

RUN_DIR=${CARMESH_STACK_RUN_DIR:-.run}
DEMO_TRAIN=${DEMO_TRAIN:-8m}
OUT=${DEMO_OUT:-out/demo}
[ -z "$MODEL" ] || [ -f "$MODEL" ] || { echo "demo: MODEL $MODEL does not exist" >&2; exit 2; }
if [ -z "$IMAGE" ]; then
  IMAGE=$(ls "$SHARED"/data/apollo-cars/val/images/*.jpg 2>/dev/null | head -1 || true)
fi

"$PY" -m devstack up
export CARMESH_API_KEY
CARMESH_API_KEY=$(cat "$RUN_DIR/api-key")
export CARMESH_GATEWAY=127.0.0.1:$((50051 + ${CARMESH_STACK_PORT_OFFSET:-0}))

if [ -z "$MODEL" ]; then
  cat >&2 <<TXT
demo: no MODEL given, so the demo trains one here first ($DEMO_TRAIN of training; \`make train\`
trains longer). Real data goes in with DATA=/path/to/kitti-folder make train, or
\`carmesh ingest dataset\`; a detector you already have: make demo MODEL=model.onnx.
TXT
  # The job's result goes to a file the CLI writes; stdout and stderr stay for people.
  bash scripts/train.sh --max-duration "$DEMO_TRAIN" --json --output "$RUN_DIR/demo-train.json"
  version=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['registered']['version'])" "$RUN_DIR/demo-train.json")
  # The gate keeps a better champion from an earlier run; the demo then detects with that one.
  "$PY" -m carmesh_cli models promote car-detector "$version" || echo "demo: keeping the current champion"
  [ -n "$IMAGE" ] || IMAGE=$(ls "$RUN_DIR"/data/synthetic-cars/val/images/*.jpg | head -1)
else
  echo "demo: importing $MODEL as car-detector@champion"
  # Class names come from the file's `names` metadata; YOLOX exports have none, so fall back to COCO's 80.
  if ! out=$("$PY" -m carmesh_cli models import "$MODEL" --name car-detector --alias champion 2>&1); then
    if grep -q "class names are required" <<<"$out"; then
      echo "demo: $MODEL carries no class names; importing it with the COCO-80 names"
      "$PY" -m carmesh_cli models import "$MODEL" --name car-detector --alias champion --names coco
    else
      echo "$out" >&2; exit 1
    fi
  else
    echo "$out"
  fi
fi
[ -n "$IMAGE" ] || { echo "demo: give an image: make demo IMAGE=photo.jpg" >&2; exit 2; }
echo "demo: waiting for the detector to load the champion"
"$PY" -m devstack wait-serving "127.0.0.1:$((50061 + ${CARMESH_STACK_PORT_OFFSET:-0}))" 120
mkdir -p "$OUT"
"$PY" -m carmesh_cli detect "$IMAGE" --classes car --out "$OUT"
annotated="$OUT/$(basename "${IMAGE%.*}").jpg"
gateway=$CARMESH_GATEWAY
cat <<TXT

demo: done. The cars found are boxed in $annotated
What next (the mesh keeps running):
  export CARMESH_API_KEY=\$(cat $RUN_DIR/api-key) CARMESH_GATEWAY=$gateway
  .venv/bin/carmesh detect photo.jpg --classes car --out out/   # your own images, annotated into out/
  .venv/bin/carmesh models versions car-detector                # what is registered, and which is champion
  make train                                                     # the full 28-minute recipe, a better model
  make down                                                      # stop the mesh
TXT
