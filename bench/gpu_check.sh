#!/usr/bin/env bash
# GPU check on a lent H100/H200 (docs/GPU.md): the kit vs Coqui's stock recipe, ~7 minutes.
#
# Here, once:      bash bench/gpu_wheels.sh        (wheels the GPU image lacks -> .whl/, ~7 MB)
# With the device tool: run command "bash bench/gpu_check.sh", carry [".whl"], timeout_s 540.
# Results: $OUT/gpu_check.md and .json, written as each part ends (copy the tables into docs/GPU.md).
# Arguments go to bench/gpu_check.py (--files, --curve-steps, --timed, --warmup, --only-fp16).
set -euo pipefail
cd "$(dirname "$0")/.."
ls .whl/*.whl >/dev/null 2>&1 || { echo "no wheels in .whl/: run bash bench/gpu_wheels.sh here first" >&2; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia-smi.csv" || true
python3 bench/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
