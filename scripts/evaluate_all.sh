#!/usr/bin/env bash
# Reproduce docs/evaluation.md's tables: every CAM-family heatmap method on imagenet-dev
# (boxes) and davis (masks), with the embedded model and the default layers.
# Reports go to out/results/<dataset>/ (comparison.md plus one folder per method); each
# comparison.json is copied to benchmarks/results/evaluate_<dataset>.json (docs/evaluation.md).
# Score-CAM keeps the 64 most active channels of 1280 (all channels would take hours on a CPU).
# rCAM has its own table (scripts/evaluate_rcam.sh); `--method all` runs everything.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
data=${WSOLKIT_DATA:-../shared/data}
methods=cam,gradcam,gradcampp,xgradcam,layercam,objectness,smoothgradcampp,scorecam
for dataset in davis imagenet-dev; do
    wsolkit evaluate "$data/$dataset" --method "$methods" --option max_channels=64 \
        --out "out/results/$dataset" "$@"
    mkdir -p benchmarks/results
    cp "out/results/$dataset/comparison.json" "benchmarks/results/evaluate_$dataset.json"
done
