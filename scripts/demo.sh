#!/usr/bin/env bash
# The main job: start the local mesh, register an ONNX detector, promote it to champion,
# and detect cars in an image through the gateway, writing the annotated JPEG.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-}
IMAGE=${2:-}
PY=${VENV:-.venv}/bin/python
SHARED=../shared

if [ -z "$MODEL" ]; then
  cat >&2 <<'TXT'
demo: no MODEL given. carmesh ships no third-party weights; bring any ONNX detector in the
YOLOv8 layout or YOLOX raw outputs, e.g.:
  pip install ultralytics && yolo export model=yolov8n.pt format=onnx   # writes yolov8n.onnx
  make demo MODEL=yolov8n.onnx IMAGE=street.jpg
TXT
  exit 2
fi
[ -f "$MODEL" ] || { echo "demo: MODEL $MODEL does not exist" >&2; exit 2; }
if [ -z "$IMAGE" ]; then
  IMAGE=$(ls "$SHARED"/data/apollo-cars/val/images/*.jpg 2>/dev/null | head -1 || true)
  [ -n "$IMAGE" ] || { echo "demo: give an image: make demo MODEL=$MODEL IMAGE=photo.jpg" >&2; exit 2; }
fi

"$PY" -m devstack up
export CARMESH_API_KEY
CARMESH_API_KEY=$(cat "${CARMESH_STACK_RUN_DIR:-.run}/api-key")
export CARMESH_GATEWAY=127.0.0.1:$((50051 + ${CARMESH_STACK_PORT_OFFSET:-0}))

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
echo "demo: waiting for the detector to load the champion"
"$PY" -m devstack wait-serving "127.0.0.1:$((50061 + ${CARMESH_STACK_PORT_OFFSET:-0}))" 120
mkdir -p out/demo
"$PY" -m carmesh_cli detect "$IMAGE" --classes car --out out/demo
echo "demo: annotated image in out/demo/ (stop the mesh with: make down)"
