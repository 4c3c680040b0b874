#!/usr/bin/env bash
# Every GPU check of one lent GPU session, in one call (no install: PYTHONPATH=.):
#   1. the GPU benchmark (benchmarks/gpu.sh): graphed-vs-eager checks of training, resume and the
#      estimators, ms per step, bf16, estimator points/s, processes against streams;
#   2. a CUDA reproduction of PROFILE (default paper-z10) with --jobs JOBS, stopped after
#      REPRODUCE_S seconds if unfinished, then published (no checkpoints) under $OUT.
# Usage, from the repository root on the GPU machine:
#   OUT=/some/dir AVAE_DATA_DIR=/path/to/data benchmarks/gpu_session.sh [PROFILE] [JOBS] [REPRODUCE_S]
# AVAE_DATA_DIR holds mnist/ and fashion-mnist/ with the original .gz files (`avae data fetch`).
# Everything it prints goes to $OUT/session.log too; the published results are $OUT/PROFILE.tar.gz.
set -u
cd "$(dirname "$0")/.."
profile="${1:-paper-z10}"
jobs="${2:-8}"
budget="${3:-360}"
: "${OUT:?set OUT to the folder that comes back}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
work="${TMPDIR:-/tmp}/avae-gpu-session"
mkdir -p "$work" "$OUT"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  echo "cores: $(nproc)"
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  git log -1 --format='commit %H' 2>/dev/null || echo "commit: not a git checkout"
  start=$(date +%s)
  benchmarks/gpu.sh "$OUT/bench"
  echo "benchmark: $(( $(date +%s) - start )) s"
  start=$(date +%s)
  timeout "$budget" python -m avae reproduce --profile "$profile" --out "$work/$profile" --device cuda \
    --jobs "$jobs" --no-progress
  echo "reproduce --profile $profile: exit $? after $(( $(date +%s) - start )) s"
  rm -rf "$work/published"
  python -m avae publish "$work/$profile" "$work/published" && tar czf "$OUT/$profile.tar.gz" -C "$work" published
} 2>&1 | tee "$OUT/session.log"
