#!/usr/bin/env bash
# GPU measurements in one time-boxed run, each part cut off at its share of the time:
#   1. the main job on a GPU, as `make study` runs it there: a study with the gpu preset (100 trials
#      at a 10-epoch target, 4 workers sharing the GPU, stopped by its timeout), then its report (the
#      race on validation, then the sequential test comparison); each timed;
#   2. with what time is left (none, as sized: the study's timeout leaves the report what it needs):
#      the wide recipe at 10 epochs in fp32, seed 1, then seed 1 of the fast recipe's 10-epoch run in
#      each precision (all on record since: each is skipped or taken from the results file).
# The GPU's fp32/bf16/fp16 timings of the fast recipe and the ablation are bench/time_to_accuracy.py's
# own results (results/bench/time_to_accuracy-cuda-*.json).
# Everything it measures lands in OUT_DIR as it goes: gpu.log (with each part's seconds), the
# bench's results files (tta-cuda-<amp>.json), and at the end study.tar.gz (the study's results,
# its report and its database; small files only) and runs.tar.gz (the bench's runs; no checkpoints, event files or pictures).
#
# Usage: bench/gpu.sh OUT_DIR [SECONDS]      (default 540; 560 leaves the study 100 trials' time on an H200)
# Environment: CIFAR10_DIR, or DATA_ARCHIVE (a .tar.xz of the ImageFolder tree, unpacked under
# /tmp); WHEELS (a folder of wheels pip installs first, on a machine without the requirements);
# STUDY_ARGS, REPORT_ARGS (appended to the study's and the report's command lines: a dry run of
# the script on a CPU uses them to shrink the job, e.g. STUDY_ARGS="--preset smoke --workers 2");
# STUDY_ONLY=1: the study alone, stopped by its timeout, for its pace and per-trial overhead.
# Accuracy against latency with the gpu preset: STUDY_ARGS="--objectives val_acc,latency --space cost
# --pruner pareto" (latency is timed with ONNX Runtime on this machine's CPU, once per architecture;
# the report is then the Pareto report, its pick compared with the baseline on fresh seeds).
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
    local t0=$SECONDS
    log "run (${left}s at most): $*"
    timeout --signal=INT --kill-after=10 "$left" "$@" >>"$out/gpu.log" 2>&1
    log "exit $? after $((SECONDS - t0))s"
}
pack() {
    tar -C "$work" -czf "$out/study.tar.gz" --exclude='*.pt' --exclude='events.*' --exclude='*.png' \
        study.db study-artifacts studies reports runs/studies runs/reports 2>/dev/null
    tar -C "$work" -czf "$out/runs.tar.gz" --exclude='*.pt' --exclude='events.*' tta 2>/dev/null
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
log "$($py -c 'import torch, optuna, plotly; print("torch", torch.__version__, "cuda", torch.version.cuda,
    "optuna", optuna.__version__, "plotly", plotly.__version__)' 2>&1)"
log "data: $CIFAR10_DIR"
# the decoded-data cache, once per machine, timed apart from the job (a user's machine has it after
# the first run)
run $((budget / 10 > 60 ? budget / 10 : 60)) $py -c 'from cifar.sources import load_cifar10; load_cifar10("'"$CIFAR10_DIR"'")'

# 1. the main job: the study stops starting trials at its --timeout (a trial takes seconds), so that
# the report has its share of the time whatever the study's pace. The report's share is 60%: its
# race (3 candidates and the baseline, 3 rounds) and its comparison (up to 12 seeds each, tested)
# train up to 36 runs, against 8 before the verdict's design
p1=$((budget * 40 / 100)) p2=$budget
[[ ${STUDY_ONLY:-0} == 1 ]] && p1=$budget
storage="sqlite:///$work/study.db"
study_seconds=$(((p1 - (SECONDS - start)) * 85 / 100))
# a fresh study name each run: a machine kept between runs keeps $work
name="cifar-gpu-$(date -u +%H%M%S)"
job_start=$SECONDS
run $p1 $py -m study run --storage "$storage" --study-name "$name" --preset gpu --timeout "$study_seconds" \
    --runs-dir "$work/runs/studies" --out "$work/studies" ${STUDY_ARGS:-}
[[ ${STUDY_ONLY:-0} == 1 ]] && { log "done (study only)"; exit 0; }
run $p2 $py -m reports build --storage "$storage" --study-name "$name" --out "$work/reports" \
    --runs-dir "$work/runs/reports" ${REPORT_ARGS:-}
log "main job (study and report): $((SECONDS - job_start))s"

# 2. with what time is left
tta() {  # tta UNTIL AMP ONLY SEEDS   (the results file starts from the committed one: it keeps all runs)
    [[ -f $out/tta-cuda-$2.json ]] || cp "results/bench/time_to_accuracy-cuda-$2.json" "$out/tta-cuda-$2.json"
    run "$1" $py bench/time_to_accuracy.py --set "amp=$2" --only "$3" --seeds "$4" \
        --runs-dir "$work/tta" --out "$out/tta-cuda-$2.json"
}
tta $budget off fast-wide-10ep 1
for amp in off bf16 fp16; do tta $budget $amp fast-10ep 1; done
log "done"
