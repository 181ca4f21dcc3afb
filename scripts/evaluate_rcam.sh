#!/usr/bin/env bash
# Reports (curves, examples) for docs/rcam.md's stage table through `wsolkit evaluate` (the
# table itself and its JSON come from benchmarks/rcam_eval.py, which runs the pipeline once per
# image and scores every stage with the same scorer): CAM and the rCAM stages (rcam1: scale-1 CAM
# upsampled by guided filters on PCA shape maps; rcam2: the same at scale 2 (448); rcam3: both
# fused by their class probabilities; rcam: rcam3 refined by a dense CRF) on imagenet-dev
# (boxes: MaxBoxAcc, MaxBoxAccV2) and davis (masks: PxAP, F-measure OIS / ODS, MAE), with the
# embedded model and the default settings. Reports go to out/rcam/<dataset>/ (comparison.md
# plus one folder per method). Extra arguments go to every `wsolkit evaluate` call, e.g.
# `--limit 50` for a quick check or `--option eps=0.001` to try another setting.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
data=${WSOLKIT_DATA:-../shared/data}
for dataset in imagenet-dev davis; do
    wsolkit evaluate "$data/$dataset" --method cam,rcam1,rcam2,rcam3,rcam \
        --out "out/rcam/$dataset" "$@"
done
