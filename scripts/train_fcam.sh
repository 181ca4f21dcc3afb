#!/usr/bin/env bash
# Reproduce the shipped F-CAM decoder wsolkit/models/weights/fcam_efficientnet_lite0.pt:
# train on ../shared/data/imagenet-sample (1000 images) with LayerCAM as the seed, keep the epoch
# with the best MaxBoxAccV2 on imagenet-dev, our default settings (docs/fcam.md), seed 0.
# Caches (about 4 GB of fp16 features) go to $FCAM_WORK/cache (default out/fcam/cache), the
# checkpoint and metrics.json to $FCAM_WORK/shipped. Extra arguments go to train-fcam, e.g.
# `--out /tmp/d.pt` to train elsewhere, `--resume` after an interruption, `--preset paper`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
data=${WSOLKIT_DATA:-../shared/data}
work=${FCAM_WORK:-out/fcam}
wsolkit train-fcam "$data/imagenet-sample" --val "$data/imagenet-dev" --cam layercam --seed 0 \
    --out wsolkit/models/weights/fcam_efficientnet_lite0.pt --work "$work/shipped" \
    --cache "$work/cache" --threads 1 --quiet "$@"
