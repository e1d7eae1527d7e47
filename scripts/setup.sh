#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks for carmesh: system services (Redis,
# PostgreSQL) and the project's virtual environment. Idempotent; fast when done.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need_apt+=(postgresql)
# The RTSP camera of tests/ingestor/test_camera_drops.py: GStreamer's rtsp-server (and x264enc) for
# Debian's python3.
ls /usr/lib/*/girepository-1.0/GstRtspServer-1.0.typelib /usr/lib/*/gstreamer-1.0/libgstx264.so >/dev/null 2>&1 \
  || need_apt+=(python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good
                gstreamer1.0-plugins-ugly)
# Images (make images, make image-check): buildah builds and runs them without a Docker engine,
# debootstrap makes their local Debian base where no registry is reachable.
for tool in buildah podman debootstrap; do
  command -v "$tool" >/dev/null 2>&1 || need_apt+=("$tool")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # The Debian packages start system-wide instances; carmesh runs its own on 127.0.0.1.
  for svc in redis-server postgresql; do
    $SUDO service "$svc" stop >/dev/null 2>&1 || true
  done
fi

stamp="$VENV/.carmesh-installed"
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing carmesh[dev] into $VENV (first time takes a few minutes)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e ".[dev]"
  touch "$stamp"
fi

# A real Triton server for the Triton-backend tests and `make bench-serve`: pytriton bundles tritonserver
# but needs numpy<2, so it gets its own environment (devstack/pytriton_server.py runs in it).
TRITON_VENV=${TRITON_VENV:-.venv-triton}
triton_stamp="$TRITON_VENV/.carmesh-installed"
if [ ! -f "$triton_stamp" ] || [ scripts/setup.sh -nt "$triton_stamp" ]; then
  echo "setup: creating $TRITON_VENV (nvidia-pytriton 0.7.0, numpy<2, onnxruntime)"
  [ -x "$TRITON_VENV/bin/python" ] || "$PYTHON" -m venv "$TRITON_VENV"
  "$TRITON_VENV/bin/python" -m pip install -q --upgrade pip
  "$TRITON_VENV/bin/python" -m pip install -q "nvidia-pytriton==0.7.0" "numpy<2" "onnxruntime>=1.18"
  touch "$triton_stamp"
fi
echo "setup: ok"
