#!/usr/bin/env bash
# Fine-tune the embedded EfficientNet-Lite0 on the image-level labels of shared/data/coco-mini
# (80 COCO images, 80 classes) with two adaptation layers, backbone frozen (--lr 0), on one CPU
# thread. 60 images train, 20 (chosen by --seed) validate; the validation mAP before and after
# is printed and written to out/finetune-demo/metrics.json, the model to model.pt there
# (use it with --model out/finetune-demo/model.pt). Extra args pass through (e.g. --epochs 3).
# PRESET=paper runs Bency et al.'s settings instead (wsolkit finetune --preset paper: SGD, lr
# 1e-3 / 10 every 20000 batches, batch 50, softmax output), same data, split, head and epochs,
# into out/finetune-demo-paper. Each run's metrics.json is copied to
# benchmarks/results/finetune_demo_<preset>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
data=${WSOLKIT_DATA:-../shared/data}
preset=${PRESET:-default}
if [ "$preset" = paper ]; then
    out=out/finetune-demo-paper
    settings=(--preset paper)
else
    out=out/finetune-demo
    settings=(--head-lr 1e-3)
fi
rm -rf "$out"
start=$(date +%s)
wsolkit finetune "$data/coco-mini" --out "$out" --epochs 6 --lr 0 "${settings[@]}" \
    --hidden 512 --val-fraction 0.25 --seed 0 --threads 1 "$@"
echo "finetune_demo: $(( $(date +%s) - start )) s"
python - "$out/metrics.json" <<'PY'
import json
import sys

m = json.load(open(sys.argv[1]))
print(f"val mAP before {100 * m['val_map_before']:.1f}%, after {100 * m['val_map_after']:.1f}% "
      f"(chance {100 * m['val_map_chance']:.1f}%) over {m['val_classes_evaluated']} classes "
      f"with a positive among {m['val_images']} validation images; "
      f"training {m['train_seconds']:.0f} s")
PY
mkdir -p benchmarks/results
cp "$out/metrics.json" "benchmarks/results/finetune_demo_$preset.json"
