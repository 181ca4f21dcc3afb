#!/usr/bin/env bash
# Reproduce the shipped WILDCAT and ex-CAM heads of the embedded model (docs/heads.md), and
# train the ex-CAM variant with the thesis's literal dropout formulas for measurement only.
#   1. train mosaics: 2x2 mosaics of imagenet-sample, 8 seeded draws = 2000 multi-label images
#      (never imagenet-dev: that is where the heads are measured);
#   2. three seeded heads on the same cached features (out/heads/features.pt), 10% of the
#      train mosaics held out for validation mAP;
#   3. the wildcat and excam heads are copied into wsolkit/models/weights/ (fp16, ~20.5 MB);
#      training metrics go to benchmarks/results/heads_train_<name>.json.
# Extra args go to every `wsolkit train-head` call (e.g. --threads 2).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
data=${WSOLKIT_DATA:-../shared/data}
mkdir -p out/heads benchmarks/results
if [ ! -f out/mosaics/train8/instances.json ]; then
    wsolkit mosaics "$data/imagenet-sample" out/mosaics/train8 --grid 2 --seed 0 --repeats 8 --quiet
fi
common=(out/mosaics/train8/instances.json --cache out/heads/features.pt --epochs 3 --seed 0 --quiet)
for name in wildcat excam excam_literal; do
    rm -f "out/heads/$name.pt" "out/heads/$name.ckpt.pt" "out/heads/$name.json"
done
wsolkit train-head "${common[@]}" --head wildcat --out out/heads/wildcat.pt "$@"
wsolkit train-head "${common[@]}" --head excam --dropout intent --out out/heads/excam.pt "$@"
wsolkit train-head "${common[@]}" --head excam --dropout literal --out out/heads/excam_literal.pt "$@"
for name in wildcat excam; do
    cp "out/heads/$name.pt" "wsolkit/models/weights/${name}_efficientnet_lite0.pt"
done
for name in wildcat excam excam_literal; do
    cp "out/heads/$name.json" "benchmarks/results/heads_train_$name.json"
done
