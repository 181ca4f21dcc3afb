#!/usr/bin/env bash
# Reproduce docs/beam.md's beam-search results (Bency et al.), next to CAM / Grad-CAM:
#  1. imagenet-dev (boxes, target = GT class, embedded ImageNet model): MaxBoxAcc, V2, top-1 loc;
#  2. coco-mini (multi-object) with a model of COCO's 80 classes: the fine-tuning demo's model
#     (scripts/finetune_demo.sh, run first when out/finetune-demo/model.pt is missing). The
#     beam thresholds are tuned by `wsolkit tune-beam` on the demo's 60 training images; beam
#     and Grad-CAM (CAM needs a linear head, the demo's has two layers) are scored on its 20
#     held-out images (pointing mAP, detection AP@0.5), and co-occurrence rescoring is
#     measured there (classification mAP per alpha).
# Reports go to out/beam/. Extra args go to every `wsolkit evaluate` (e.g. --limit 20).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
data=$(cd "${WSOLKIT_DATA:-../shared/data}" && pwd)
out=out/beam
mkdir -p "$out"

wsolkit evaluate "$data/imagenet-dev" --method cam,beam --out "$out/imagenet-dev" "$@"

model=out/finetune-demo/model.pt
[ -f "$model" ] || bash scripts/finetune_demo.sh
# COCO files of the demo's training and validation images (images linked, not copied)
python - "$data/coco-mini" out/finetune-demo/metrics.json "$out" <<'PY'
import json
import os
import sys
from pathlib import Path

coco, metrics, out = Path(sys.argv[1]), json.load(open(sys.argv[2])), Path(sys.argv[3])
data = json.loads((coco / "instances.json").read_text())
for split in ("train", "val"):
    names = set(metrics[f"{split}_ids"])
    images = [image for image in data["images"] if image["file_name"] in names]
    ids = {image["id"] for image in images}
    subset = dict(data, images=images,
                  annotations=[a for a in data["annotations"] if a["image_id"] in ids])
    folder = out / f"coco-mini-{split}"
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "images").exists():
        os.symlink(coco / "images", folder / "images")
    (folder / "instances.json").write_text(json.dumps(subset))
    print(f"{folder}: {len(images)} images, {len(subset['annotations'])} annotations")
PY
wsolkit tune-beam "$out/coco-mini-train/instances.json" --train "$out/coco-mini-train/instances.json" \
    --model "$model" --out "$out/thresholds.json"
wsolkit evaluate "$out/coco-mini-val/instances.json" --model "$model" --method gradcam,beam \
    --option "thresholds=$out/thresholds.json" --out "$out/coco-mini-val" "$@"
# Co-occurrence rescoring (eq. 2-4) on the held-out images: counts from the 60 training images'
# labels, classification mAP of the rescored class probabilities for each alpha.
python - "$model" "$out" <<'PY'
import json
import sys

import numpy as np

import wsolkit
from wsolkit.apps.beam_boxes import class_scores
from wsolkit.apps.cooccurrence import cooccurrence_counts, pair_probabilities, rescore
from wsolkit.data import load_image, open_dataset
from wsolkit.eval import multilabel_map

model, out = wsolkit.load_model(sys.argv[1]), sys.argv[2]
train = open_dataset(f"{out}/coco-mini-train/instances.json")
val = list(open_dataset(f"{out}/coco-mini-val/instances.json"))
classes = len(model.class_names)
pairs = pair_probabilities(cooccurrence_counts((s.labels for s in train), classes))
unary = np.concatenate([class_scores(model, model.preprocess_batch([load_image(s.path)]))
                        .numpy() for s in val])
truth = np.array([np.isin(np.arange(classes), list(s.labels)) for s in val])
by_alpha = {alpha: multilabel_map(rescore(unary, pairs, alpha), truth)[0]
            for alpha in (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)}
with open(f"{out}/cooccurrence_val.json", "w") as file:
    json.dump({str(a): m for a, m in by_alpha.items()}, file, indent=2)
print("held-out classification mAP by co-occurrence alpha: "
      + ", ".join(f"{a:g}: {100 * m:.1f}%" for a, m in by_alpha.items()))
PY
