#!/usr/bin/env bash
# The GPU benchmark in one command, from a checkout (no install needed):
#   benchmarks/gpu.sh [OUT_DIR] [--members 1,5,40] [--device cuda:N] [--quick]
# Prints and writes OUT_DIR/GPU_BENCH.md and OUT_DIR/gpu_bench.json (default OUT_DIR: runs/gpu-bench).
# Needs python3 with torch (CUDA), numpy, scipy, safetensors, tqdm, matplotlib; PYTHON overrides python3.
set -euo pipefail
cd "$(dirname "$0")/.."
out="runs/gpu-bench"
if [[ $# -gt 0 && "$1" != --* ]]; then out="$1"; shift; fi
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec "${PYTHON:-python3}" -m avae.bench.gpu --out "$out" "$@"
