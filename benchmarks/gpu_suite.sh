#!/usr/bin/env bash
# The GPU benchmarks in one run (< 8 minutes on an H100-class card), JSON into benchmarks/results/gpu_*.json:
# vs_official.py (the official code beside the pack, fp32) and the pack's own benchmarks in fp32 and bf16 at
# batch 1 and 8/32.
#
#   OFFICIAL=/path/to/checkouts benchmarks/gpu_suite.sh
#
# OFFICIAL holds the official checkouts under their repository names: stylegan2-pytorch, style-transformer,
# StylePrompter, Splice, dino, PUT (a missing one skips its stages with a line saying so). Python: $PYTHON or
# python3 with torch (CUDA), timm, safetensors and this package importable (pip install -e .).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
O=${OFFICIAL:-../official}
R=benchmarks/results
mkdir -p "$R"
export PYTHONUNBUFFERED=1
step() {  # step LIMIT_SECONDS NAME COMMAND...: one benchmark with a time limit; a failure does not stop the rest
    local limit=$1 name=$2; shift 2
    echo "== $name (limit ${limit}s)"
    local t0=$SECONDS
    timeout "$limit" "$@"; local rc=$?
    echo "== $name: rc $rc, $((SECONDS - t0)) s"
}
official=()
for pair in stylegan2=stylegan2-pytorch style_transformer=style-transformer styleprompter=StylePrompter \
            splice=Splice dino=dino put=PUT; do
    [ -d "$O/${pair#*=}" ] && official+=(--official "${pair%%=*}=$O/${pair#*=}")
done
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())" || exit 1

step 210 vs_official "$PY" benchmarks/vs_official.py --device cuda "${official[@]}" --batches 1,8 --reps 10 \
    --splice-curve-steps 50 --put-samples 1,4 --put-reps 3 --out "$R/vs_official_cuda.json"
step 45 stylegan "$PY" benchmarks/bench_stylegan.py --device cuda --sizes 1024 --batches 1,8,32 \
    --dtypes fp32,bf16 --out "$R/gpu_stylegan.json"
step 75 inversion "$PY" benchmarks/bench_inversion.py --device cuda --batches 1,8,32 --dtypes fp32,bf16 \
    --official-style --out "$R/gpu_inversion.json"
step 45 splice "$PY" benchmarks/bench_splice.py --device cuda --sizes 256 --dtypes fp32,bf16 \
    --out "$R/gpu_splice.json"
step 75 put "$PY" benchmarks/bench_put.py --device cuda --samples 1,8 --dtypes fp32,bf16 --max-passes 16 \
    --out "$R/gpu_put.json"
step 60 studio "$PY" benchmarks/bench_studio.py --device cuda --dtypes fp32,bf16 --reps 20 \
    --out "$R/gpu_studio.json"
ls -l "$R"/gpu_*.json "$R"/vs_official_cuda.json 2>/dev/null
