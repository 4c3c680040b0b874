#!/usr/bin/env bash
# One lent GPU session's work for issues 21 and 22, as one command that ends by DEADLINE seconds:
#   1. retrain RETRAIN (runs of --profile PROFILE whose published folders have no weights), training only;
#   2. their own, critic and reconstruction figures on every test image (+ SIVI for noise-injected ones)
#      for the runs in $EVALUATE (default: RETRAIN; the others are left for `reproduce` to evaluate);
#   3. the noise-usage measure on the noise-injected ones (scripts/noise_usage.py, if present);
#   4. AIS convergence on real test images for AIS_RUNS (scripts/ais_convergence.py);
#   5. FRESH runs of the profile with its whole evaluation, while time is left.
# Everything but checkpoints comes back as OUT/runs.tgz; weights of the retrained runs as
# OUT/w-<run>.safetensors for the runs in $BACK (default: RETRAIN; 8 files at most come back from a
# device session). TRAIN_CAP caps step 1 (default 2/5 of DEADLINE); AIS_STEPS sets step 4's steps;
# JOBS sets step 5's --jobs (default 1), and PACK=1 trains its runs as packs (--pack).
#
#   scripts/gpu_session.sh OUT PROFILE DEVICE "RETRAIN..." "AIS_RUNS..." "FRESH..." [DEADLINE] [DATA_DIR]
#
# Run names are run directory names as `avae reproduce --dry-run` lists them. The script is tested on a
# CPU with the smoke profile before it goes to a GPU (see the closing note of the session that used it).
set -uo pipefail
out=$1 profile=$2 device=$3 retrain=$4 ais_runs=$5 fresh=$6 deadline=${7:-500} data=${8:-}
work=${WORK:-/tmp/avae-gpu-session}
py=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
[[ -n "$data" ]] && export AVAE_DATA_DIR="$data"
mkdir -p "$out" "$work/runs"
[[ -d gpu-carry/classifiers ]] && mkdir -p "$work/runs/classifiers" && cp gpu-carry/classifiers/* "$work/runs/classifiers/"
log="$out/session.log"
left() { echo $((deadline - SECONDS)); }
say() { echo "[$(date -u +%T) t=${SECONDS}s] $*" | tee -a "$log"; }
capped() {  # capped SECONDS CMD...: run CMD for at most SECONDS (and never past the deadline)
    local cap=$1; shift
    local l; l=$(left); ((cap > l)) && cap=$l
    ((cap < 5)) && { say "skipped (no time left): $*"; return 1; }
    say "run (cap ${cap}s): $*"
    timeout --signal=INT --kill-after=10 "$cap" "$@" >>"$log" 2>&1
    local rc=$?; say "exit $rc"; return $rc
}
trained() {  # trained RUN: whether RUN finished all its epochs
    "$py" -c "import sys; from pathlib import Path; from avae.training.runs import trained_epoch, read_config
d = Path(sys.argv[1]); sys.exit(0 if d.is_dir() and trained_epoch(d) >= read_config(d).epochs else 1)" "$work/runs/$1" 2>/dev/null
}
say "device: $("$py" -c 'import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")')"
[[ -n "$retrain" ]] && capped "${TRAIN_CAP:-$((deadline * 2 / 5))}" "$py" -m avae reproduce --profile "$profile" --out "$work/runs" \
    --runs "${retrain// /,}" --train-only --device "$device" --jobs 1 --no-progress
for run in ${EVALUATE-$retrain}; do
    trained "$run" || { say "$run: not finished, not evaluated"; continue; }
    metrics=elbo,critic,recon
    [[ "$run" == vae-noise* ]] && metrics=$metrics,sivi
    capped 90 "$py" -m avae evaluate "$work/runs/$run" --metrics "$metrics" --device "$device"
    if [[ "$run" == vae-noise* && -f scripts/noise_usage.py ]]; then
        capped 60 "$py" scripts/noise_usage.py "$work/runs/$run" --points 1000 --draws 64 --device "$device" \
            --out "$out/noise_usage.json"
    fi
done
ais_dirs=()
for run in $ais_runs; do trained "$run" && ais_dirs+=("$work/runs/$run"); done
if ((${#ais_dirs[@]})); then
    budget=$(($(left) * 3 / 4))
    capped "$budget" "$py" scripts/ais_convergence.py "${ais_dirs[@]}" --points 50 --steps "${AIS_STEPS:-1000,3000,10000}" \
        --chains 16 --subchains 4 --device "$device" --deadline "$((budget - 40))" --out "$out/ais_convergence.json"
fi
[[ -n "$fresh" ]] && capped "$(left)" "$py" -m avae reproduce --profile "$profile" --out "$work/runs" \
    --runs "${fresh// /,}" --device "$device" --jobs "${JOBS:-1}" $([[ ${PACK:-0} == 1 ]] && echo --pack) --no-progress
say "packing"
(cd "$work/runs" && tar --exclude=checkpoint.safetensors --exclude=model.safetensors --exclude='*.lock' \
    -czf "$out/runs.tgz" .)
for run in ${BACK-$retrain}; do
    [[ -f "$work/runs/$run/model.safetensors" ]] && cp "$work/runs/$run/model.safetensors" "$out/w-$run.safetensors"
done
ls -la "$out" | tee -a "$log"
say "done"
