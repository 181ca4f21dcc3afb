#!/usr/bin/env bash
# Fine-tune the embedded EfficientNet-Lite0 on the image-level labels of shared/data/coco-mini
# (80 COCO images, 80 classes) with two adaptation layers, backbone frozen (--lr 0), on one CPU
# thread. 60 images train, 20 (chosen by --seed) validate; the validation mAP before and after
# is printed and written to out/finetune-demo/metrics.json, the model to model.pt there
# (use it with --model out/finetune-demo/model.pt). Extra args pass through (e.g. --epochs 3).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
data=${WSOLKIT_DATA:-../shared/data}
out=out/finetune-demo
rm -rf "$out"
start=$(date +%s)
wsolkit finetune "$data/coco-mini" --out "$out" --epochs 6 --lr 0 --head-lr 1e-3 \
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
