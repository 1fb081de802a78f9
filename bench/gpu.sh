#!/usr/bin/env bash
# GPU measurements in one time-boxed run, each part cut off at its share of the time:
#   1. the fast recipe's 10-epoch run in fp32 (amp=off), bf16 and fp16, seed 0 (time to accuracy);
#   2. the wide recipe at 10 epochs in fp32, seeds 0 and 1 (the 90.5%-with-TTA target);
#   3. a study with the gpu preset (a 10-epoch target, 4 trials sharing the GPU), stopped by its
#      --timeout: its trials per minute and fixed overhead per trial (the report's runs cost what
#      part 1's runs cost, one at a time);
#   4. with what time is left: seed 1 of part 1, then the rest of the plan in fp32.
# Everything it measures lands in OUT_DIR as it goes: gpu.log, the bench's results files
# (tta-cuda-<amp>.json), and at the end studies.tar.gz and runs.tar.gz (small files only).
#
# Usage: bench/gpu.sh OUT_DIR [SECONDS]      (default 540)
# Environment: CIFAR10_DIR, or DATA_ARCHIVE (a .tar.xz of the ImageFolder tree, unpacked under
# /tmp); WHEELS (a folder of wheels pip installs first, on a machine without the requirements).
set -u
out=$(realpath -m "${1:?usage: bench/gpu.sh OUT_DIR [SECONDS]}")
budget=${2:-540}
work=${GPU_WORK:-/tmp/cifar-gpu}
py=${PYTHON:-python3}
mkdir -p "$out" "$work"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
start=$SECONDS

log() { echo "[$(date -u +%T) +$((SECONDS - start))s] $*" | tee -a "$out/gpu.log"; }
# run UNTIL_SECOND CMD...: CMD, killed at UNTIL_SECOND of the budget (skipped when that has passed)
run() {
    local until=$1; shift
    local left=$((until - (SECONDS - start)))
    if ((left < 5)); then log "skipped (no time left): $*"; return 0; fi
    log "run (${left}s at most): $*"
    timeout --signal=INT --kill-after=10 "$left" "$@" >>"$out/gpu.log" 2>&1
    log "exit $? after $((SECONDS - start))s"
}
pack() {
    tar -C "$work" -czf "$out/studies.tar.gz" --exclude='*.pt' --exclude='events.*' studies runs/studies \
        2>/dev/null
    tar -C "$work" -czf "$out/runs.tar.gz" --exclude='*.pt' --exclude='events.*' tta 2>/dev/null
    cp "$work"/study.db "$out/" 2>/dev/null
    true
}
trap pack EXIT

log "machine: $(nproc) cores; $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1)"
if [[ -n ${WHEELS:-} ]]; then
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$work/site" "$WHEELS"/*.whl \
        >>"$out/gpu.log" 2>&1 || { log "pip install failed"; exit 1; }
    export PYTHONPATH=$work/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [[ -n ${DATA_ARCHIVE:-} ]]; then
    # Python's tarfile: no xz binary needed; prints the archive's top folder
    top=$($py -c 'import sys, tarfile
with tarfile.open(sys.argv[1]) as t:
    t.extractall(sys.argv[2], filter="data"); print(t.getnames()[0].split("/")[0])' "$DATA_ARCHIVE" "$work") \
        || { log "cannot unpack $DATA_ARCHIVE"; exit 1; }
    export CIFAR10_DIR=$work/$top
fi
log "$($py -c 'import torch, optuna; print("torch", torch.__version__, "cuda", torch.version.cuda, "optuna", optuna.__version__)' 2>&1)"
log "data: $CIFAR10_DIR"

tta() {  # tta UNTIL AMP ONLY SEEDS
    run "$1" $py bench/time_to_accuracy.py --set "amp=$2" --only "$3" --seeds "$4" \
        --runs-dir "$work/tta" --out "$out/tta-cuda-$2.json"
}
# the end of each part, in seconds of the budget
p1=$((budget * 35 / 100)) p2=$((budget * 55 / 100)) p3=$((budget * 85 / 100))
for amp in off bf16 fp16; do tta $p1 $amp fast-10ep 0; done
tta $p2 off fast-wide-10ep 0,1
# --timeout stops the study starting trials; those running then finish (a trial takes under a minute)
study_seconds=$(((p3 - (SECONDS - start)) * 65 / 100))
if ((study_seconds > 30)); then
    # a fresh study each run: a machine kept between runs keeps $work, and a study's failed trials
    # count towards its total, so an earlier run's failures would leave this one nothing to run
    run $p3 $py -m study run --storage "sqlite:///$work/study.db" --study-name "cifar-gpu-$(date -u +%H%M%S)" \
        --preset gpu \
        --timeout "$study_seconds" --runs-dir "$work/runs/studies" --out "$work/studies"
fi
for amp in off bf16 fp16; do tta $budget $amp fast-10ep 1; done
tta $budget off baseline,ablation 0,1
log "done"
