#!/usr/bin/env bash
# Reproduce docs/beam.md's beam-search results (Bency et al.), next to CAM / Grad-CAM.
#
# PART=imagenet (or all, the default): imagenet-dev (boxes, target = GT class, embedded ImageNet
#   model): MaxBoxAcc, V2, top-1 loc of cam, and of beam at each search preset of PRESETS
#   (default "default paper": M = 4 and the paper's M = 8, H = 10, deeper levels cropped from
#   the source image). On the first SUBSET images (default 50; 0: skipped), the default search
#   with crops of the 224x224 input tensor (crop_from=tensor), with bfloat16 crop passes
#   (precision=bfloat16) and its float32 twin. BEAM_WIDTHS="2 ..." adds other beam widths M.
# PART=coco (or all): coco-mini (multi-object) with a model of COCO's 80 classes: the
#   fine-tuning demo's model (scripts/finetune_demo.sh, run first when
#   out/finetune-demo/model.pt is missing), trained on 60 images. Its 20 held-out images are
#   split in two disjoint halves (seeded): beam's per-class thresholds and the co-occurrence
#   alpha are tuned on the first ("tune", `wsolkit tune-beam`, once per preset), with
#   co-occurrence counts from the 60 training images' labels; beam (default preset: both box
#   scores; paper preset: the paper's box score) and Grad-CAM are scored on the second
#   ("test"), and co-occurrence rescoring is measured there (classification mAP per alpha, and
#   at the tuned alpha). No image that trained the head or built the counts tunes anything,
#   and no tuning image is scored. Detections (and beam's searches) are made for the classes
#   of an image with probability >= COCO_MIN_P (default 0.1, beam_boxes' own score_threshold;
#   at evaluate's default 0.001 this weak head passes most of the 80 classes for every image:
#   hundreds of searches).
# Reports go to out/beam/; each metrics.json is copied to benchmarks/results/beam_*.json.
# Extra args go to every `wsolkit evaluate` (e.g. --limit 20). One torch thread per process.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
data=$(cd "${WSOLKIT_DATA:-../shared/data}" && pwd)
out=out/beam
results=benchmarks/results
part=${PART:-all}
mkdir -p "$out" "$results"

keep() {  # keep REPORT_DIR NAME: copy the report's metrics.json into benchmarks/results
    cp "$1/metrics.json" "$results/beam_$2.json"
}

if [ "$part" = all ] || [ "$part" = imagenet ]; then
    wsolkit evaluate "$data/imagenet-dev" --method cam --out "$out/imagenet-dev-cam" --quiet "$@"
    keep "$out/imagenet-dev-cam" imagenet_dev_cam
    for preset in ${PRESETS-default paper}; do
        wsolkit evaluate "$data/imagenet-dev" --method beam --option "preset=$preset" \
            --out "$out/imagenet-dev-$preset" --quiet "$@"
        keep "$out/imagenet-dev-$preset" "imagenet_dev_beam_$preset"
    done
    for width in ${BEAM_WIDTHS:-}; do
        wsolkit evaluate "$data/imagenet-dev" --method beam --option "beam_width=$width" \
            --out "$out/imagenet-dev-m$width" --quiet "$@"
        keep "$out/imagenet-dev-m$width" "imagenet_dev_beam_m$width"
    done
    subset=${SUBSET:-50}
    if [ "$subset" -gt 0 ]; then
        for option in crop_from=tensor precision=float32 precision=bfloat16; do
            name=${option#*=}
            wsolkit evaluate "$data/imagenet-dev" --method beam --option "$option" \
                --limit "$subset" --out "$out/imagenet-dev-$name-$subset" --quiet "$@"
            keep "$out/imagenet-dev-$name-$subset" "imagenet_dev_beam_${name}_$subset"
        done
    fi
fi

if [ "$part" = all ] || [ "$part" = coco ]; then
    model=out/finetune-demo/model.pt
    [ -f "$model" ] || bash scripts/finetune_demo.sh
    # COCO files of the demo's training images and of the two halves of its held-out images
    # (images linked, not copied)
    python - "$data/coco-mini" out/finetune-demo/metrics.json "$out" <<'PY'
import json
import os
import sys
from pathlib import Path

import numpy as np

coco, metrics, out = Path(sys.argv[1]), json.load(open(sys.argv[2])), Path(sys.argv[3])
data = json.loads((coco / "instances.json").read_text())
held_out = sorted(metrics["val_ids"])
order = np.random.default_rng(0).permutation(len(held_out))
half = len(held_out) // 2
splits = {"train": set(metrics["train_ids"]),
          "tune": {held_out[i] for i in order[:half]},
          "test": {held_out[i] for i in order[half:]}}
assert not (splits["tune"] & splits["test"]) and not (splits["train"] & splits["tune"])
for split, names in splits.items():
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
    for preset in default paper; do
        wsolkit tune-beam "$out/coco-mini-tune/instances.json" --preset "$preset" \
            --train "$out/coco-mini-train/instances.json" --model "$model" \
            --out "$out/thresholds-$preset.json" --quiet
        cp "$out/thresholds-$preset.json" "$results/beam_coco_thresholds_$preset.json"
    done
    min_p=${COCO_MIN_P:-0.1}
    wsolkit evaluate "$out/coco-mini-test/instances.json" --model "$model" --method gradcam \
        --min-class-probability "$min_p" --out "$out/coco-mini-test-gradcam" --quiet "$@"
    keep "$out/coco-mini-test-gradcam" coco_test_gradcam
    # default search with both box scores; the paper's search with the paper's box score
    for run in default:blob default:box paper:box; do
        preset=${run%:*} score=${run#*:}
        wsolkit evaluate "$out/coco-mini-test/instances.json" --model "$model" --method beam \
            --option "preset=$preset" --class-thresholds "$out/thresholds-$preset.json" \
            --box-score "$score" --min-class-probability "$min_p" \
            --out "$out/coco-mini-test-beam-$preset-$score" --quiet "$@"
        keep "$out/coco-mini-test-beam-$preset-$score" "coco_test_beam_${preset}_$score"
    done
    # Co-occurrence rescoring (eq. 2-4) on the test half: counts from the 60 training images'
    # labels, classification mAP of the rescored class probabilities for each alpha, and at
    # the alpha tune-beam chose on the tune half.
    python - "$model" "$out" "$results/beam_coco_cooccurrence.json" <<'PY'
import json
import sys

import numpy as np

import wsolkit
from wsolkit.apps.beam_boxes import class_scores
from wsolkit.apps.cooccurrence import cooccurrence_counts, pair_probabilities, rescore
from wsolkit.data import load_image, open_dataset
from wsolkit.data.atomic import write_json_atomic
from wsolkit.eval import multilabel_map

model, out, target = wsolkit.load_model(sys.argv[1]), sys.argv[2], sys.argv[3]
train = open_dataset(f"{out}/coco-mini-train/instances.json")
test = list(open_dataset(f"{out}/coco-mini-test/instances.json"))
tuned = json.load(open(f"{out}/thresholds-default.json"))
classes = len(model.class_names)
pairs = pair_probabilities(cooccurrence_counts((s.labels for s in train), classes))
unary = np.concatenate([class_scores(model, model.preprocess_batch([load_image(s.path)]))
                        .numpy() for s in test])
truth = np.array([np.isin(np.arange(classes), list(s.labels)) for s in test])
by_alpha = {alpha: multilabel_map(rescore(unary, pairs, alpha), truth)[0]
            for alpha in (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)}
report = {"test_images": len(test), "tuned_alpha": tuned["alpha"],
          "tune_map_by_alpha": tuned["alpha_map"],
          "test_map_by_alpha": {str(a): m for a, m in by_alpha.items()},
          "test_map_at_tuned_alpha": multilabel_map(rescore(unary, pairs, tuned["alpha"]),
                                                    truth)[0]}
write_json_atomic(target, report)
print(f"alpha tuned on the tune half: {tuned['alpha']:g}; test-half classification mAP by "
      "alpha: " + ", ".join(f"{a:g}: {100 * m:.1f}%" for a, m in by_alpha.items()))
PY
fi
