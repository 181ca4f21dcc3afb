#!/usr/bin/env bash
# Reproduce the README's results tables: every heatmap method on imagenet-dev and davis.
# Reports go to out/results/<dataset>/ (comparison.md plus one folder per method).
# Score-CAM keeps the 64 most active channels of 1280 (all channels would take hours on a CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
set +u
# shellcheck disable=SC1091
. .venv/bin/activate
set -u
data=${WSOLKIT_DATA:-../shared/data}
for dataset in imagenet-dev davis; do
    wsolkit evaluate "$data/$dataset" --method all --option max_channels=64 \
        --out "out/results/$dataset" "$@"
done
