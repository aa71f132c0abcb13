#!/usr/bin/env bash
# One entry point for a fresh machine:  ./dev.sh demo   |   ./dev.sh test   |   ./dev.sh setup
# Creates .venv (torch + TransEdit + test tools + a headless ComfyUI for the end-to-end tests), then runs.
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3}
VENV=.venv

setup() {
    if [ ! -x "$VENV/bin/python" ]; then
        "$PY" -m venv "$VENV"
    fi
    # torch is installed on its own: TransEdit's package metadata leaves it out on purpose, so that pip
    # never replaces the CUDA build a ComfyUI user already has. torchvision is needed by ComfyUI and timm.
    if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
        "$VENV/bin/pip" install -q "torch==${TORCH_VERSION:-2.14.1}" "torchvision==${TORCHVISION_VERSION:-0.29.1}"
    fi
    "$VENV/bin/pip" install -q -e '.[tests]'
}

case "${1:-}" in
    setup) setup ;;
    demo)  setup; shift; exec "$VENV/bin/python" demo.py "$@" ;;
    test)  setup; shift; exec "$VENV/bin/python" -m pytest -q "$@" ;;
    *) echo "usage: ./dev.sh {demo|test|setup} [args...]" >&2; exit 2 ;;
esac
