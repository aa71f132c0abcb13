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

# The real-browser tests (tests/e2e/test_browser.py) need Chromium and playwright-core; without them they
# skip with the reason. This installs both (Debian/Ubuntu: apt; Node.js >= 18 from apt when missing).
browser_setup() {
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    if ! command -v chromium >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        $sudo apt-get update -qq
        local pkgs="chromium"
        command -v npm >/dev/null 2>&1 || pkgs="$pkgs nodejs npm"
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
    fi
    (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
}

# The e2e suite on a deliberately loaded CPU (two busy processes beside it), as CI runs it: no test may fail
# because the machine is slow. One server kind by default (TRANSEDIT_E2E_SERVERS overrides).
BUSY_PIDS=()  # global: the EXIT trap runs after test_loaded has returned
test_loaded() {
    setup
    for _ in 1 2; do "$VENV/bin/python" -c 'while True: pass' & BUSY_PIDS+=("$!"); done
    trap 'kill "${BUSY_PIDS[@]}" 2>/dev/null || true' EXIT
    TRANSEDIT_E2E_SERVERS="${TRANSEDIT_E2E_SERVERS:-comfyui-0.3.64-newest-frontend}" \
        "$VENV/bin/python" -m pytest -q tests/e2e/test_workflows.py tests/e2e/test_under_load.py \
        tests/e2e/test_browser.py "$@"
}

case "${1:-}" in
    setup) setup ;;
    browser-setup) browser_setup ;;
    demo)  setup; shift; exec "$VENV/bin/python" demo.py "$@" ;;
    test)  setup; shift; exec "$VENV/bin/python" -m pytest -q "$@" ;;
    test-loaded) shift; test_loaded "$@" ;;
    *) echo "usage: ./dev.sh {demo|test|test-loaded|setup|browser-setup} [args...]" >&2; exit 2 ;;
esac
