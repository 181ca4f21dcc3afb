#!/usr/bin/env bash
# Build the ImageNet mosaics benchmark (docs/mosaics.md): 2x2 mosaics of distinct classes.
#   out/mosaics/train: from imagenet-sample (1000 images, no boxes: each tile is an image-level
#                      label, an iscrowd region never scored as a box), 4 draws = 1000 mosaics;
#   out/mosaics/dev:   from imagenet-dev (394 images with boxes), 1 draw = 98 mosaics.
# The two sources are never mixed. Extra args go to both `wsolkit mosaics` calls.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
data=${WSOLKIT_DATA:-../shared/data}
wsolkit mosaics "$data/imagenet-sample" out/mosaics/train --grid 2 --seed 0 --repeats 4 "$@"
wsolkit mosaics "$data/imagenet-dev" out/mosaics/dev --grid 2 --seed 0 --repeats 1 "$@"
