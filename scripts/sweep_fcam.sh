#!/usr/bin/env bash
# Reproduce benchmarks/results/fcam_sweep.{json,md} (docs/fcam.md, "Choosing the settings"):
# F-CAM decoders trained as the shipped one (CAM seed, seed 0, 8 epochs, best epoch on
# imagenet-dev) but for the options of each run below (paper: the authors' preset), each scored by `wsolkit evaluate` on
# imagenet-dev (boxes) and davis (masks). Both dev sets as a whole decide the defaults, never
# single images. About 15 min of one core per run (1 torch thread; two runs can go at once on
# 2 cores: FCAM_SWEEP="bg0.1" bash scripts/sweep_fcam.sh & ...). $FCAM_SWEEP names the runs
# to make (default all). Shares the feature cache of scripts/train_fcam.sh ($FCAM_WORK/cache,
# about 4 GB); an interrupted run resumes from its checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
data=${WSOLKIT_DATA:-../shared/data}
work=${FCAM_WORK:-out/fcam}
sweep=$work/sweep
declare -A runs=(
    [bg0.1]="--bg-fraction 0.1"
    [bg0.3]="--bg-fraction 0.3"
    [bg0.5]="--bg-fraction 0.5"
    [bg0.7]="--bg-fraction 0.7"
    [paper]="--preset paper --epochs 4"
)
for name in ${FCAM_SWEEP:-${!runs[@]}}; do
    if [ ! -f "$sweep/$name.done" ]; then
        resume=()
        [ -f "$sweep/$name/checkpoint.pt" ] && resume=(--resume)
        # shellcheck disable=SC2086
        wsolkit train-fcam "$data/imagenet-sample" --val "$data/imagenet-dev" --cam cam \
            --seed 0 --epochs 8 ${runs[$name]} --out "$sweep/$name.pt" \
            --work "$sweep/$name" --cache "$work/cache" --threads 1 --quiet "${resume[@]}"
        touch "$sweep/$name.done"
    fi
    for dataset in imagenet-dev davis; do
        if [ ! -f "$sweep/eval/$dataset/$name/metrics.json" ]; then
            wsolkit evaluate "$data/$dataset" --method fcam --option "decoder=$sweep/$name.pt" \
                --out "$sweep/eval/$dataset/$name" --quiet
        fi
    done
done
python benchmarks/fcam_sweep_report.py --sweep "$sweep" --out benchmarks/results/fcam_sweep
