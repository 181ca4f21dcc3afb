#!/usr/bin/env bash
# The ImageNet mosaics table (docs/mosaics.md). Each entry of $METHODS is METHOD or
# METHOD@P; P (default $MIN_P = 0.001) is --min-class-probability: detections only for the
# classes of a mosaic with probability >= P plus its top class (beam searches only those).
#  1. dev mosaics (out/mosaics/dev: 2x2 mosaics of imagenet-dev, built when missing), every
#     one of the embedded model's 1000 classes per mosaic: pointing mAP, detection AP@0.5,
#     classification mAP;
#  2. single-object imagenet-dev (GT class): MaxBoxAccV2.
# Reports go to out/mosaics-eval/dev/<method>-p<P>/ and out/mosaics-eval/imagenet-dev/<method>/;
# the table to benchmarks/results/mosaics.md and .json. Methods not registered (wildcat, excam
# before they exist) are skipped with a note. REUSE=1 keeps reports already written.
# SKIP_SINGLE="beam ..." leaves out those methods' imagenet-dev run (n/a in the table; beam's,
# 394 searches, is in docs/beam.md's table from scripts/evaluate_beam.sh).
# Extra args go to every `wsolkit evaluate`.
#   METHODS="cam gradcam beam@0.03 wildcat excam" bash scripts/evaluate_mosaics.sh
# beam searches every kept class (about 1 s per mosaic-class on 2 cores): at P = 0.001 that is
# about 100 classes per mosaic, so it runs at P = 0.03 (3.6 classes per mosaic), next to CAM and
# Grad-CAM at the same P. WSOLKIT_PYTHON=/path/to/python runs that interpreter instead of
# setting up .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${WSOLKIT_PYTHON:-}" ]; then
    . scripts/venv.sh
    WSOLKIT_PYTHON=python
fi
wsolkit() { "$WSOLKIT_PYTHON" -m wsolkit.cli.main "$@"; }
data=${WSOLKIT_DATA:-../shared/data}
METHODS=${METHODS:-cam gradcam cam@0.03 gradcam@0.03 beam@0.03}
MIN_P=${MIN_P:-0.001}
REUSE=${REUSE:-0}
SKIP_SINGLE=${SKIP_SINGLE:-}
out=out/mosaics-eval
results=benchmarks/results
mkdir -p "$out" "$results"

[ -f out/mosaics/dev/instances.json ] || \
    wsolkit mosaics "$data/imagenet-dev" out/mosaics/dev --grid 2 --seed 0 --repeats 1 --quiet

run() {  # run DIR ARGS...: one evaluation unless REUSE=1 finds its report
    local dir=$1
    shift
    if [ "$REUSE" = 1 ] && [ -f "$dir/metrics.json" ]; then
        echo "evaluate_mosaics: reusing $dir" >&2
        return
    fi
    wsolkit evaluate "$@" --out "$dir" --quiet
}

registered=$(wsolkit methods | awk '{print $1}')
rows=()
for entry in $METHODS; do
    method=${entry%@*}
    p=$MIN_P
    [[ $entry == *@* ]] && p=${entry#*@}
    if ! grep -qx "$method" <<<"$registered"; then
        echo "evaluate_mosaics: $method is not registered; skipped" >&2
        continue
    fi
    run "$out/dev/$method-p$p" out/mosaics/dev/instances.json --method "$method" \
        --min-class-probability "$p" "$@"
    if ! grep -qw "$method" <<<"$SKIP_SINGLE"; then
        run "$out/imagenet-dev/$method" "$data/imagenet-dev" --method "$method" "$@"
    fi
    rows+=("$method" "$p")
done

"$WSOLKIT_PYTHON" - "$out" "$results" "${rows[@]}" <<'PY'
import json
import sys
from pathlib import Path

out, results, pairs = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
rows = []
for method, p in zip(pairs[::2], pairs[1::2]):
    dev = json.loads((out / "dev" / f"{method}-p{p}" / "metrics.json").read_text())["metrics"]
    path = out / "imagenet-dev" / method / "metrics.json"
    single = json.loads(path.read_text())["metrics"] if path.is_file() else None
    rows.append({
        "method": method,
        "min_class_probability": float(p),
        "pointing_mAP": dev["pointing_ap"]["mAP"],
        "detection_AP50": dev["detection_ap"]["mAP"],
        "classification_mAP": dev["classification_map"]["mAP"],
        "MaxBoxAccV2_imagenet_dev": single["boxes"]["MaxBoxAccV2"] if single else None,
        "mosaics": dev["detection_ap"]["count"],
        "imagenet_dev_images": single["boxes"]["count"] if single else None,
    })
columns = [("pointing mAP", "pointing_mAP"), ("detection AP@0.5", "detection_AP50"),
           ("classification mAP", "classification_mAP"),
           ("MaxBoxAccV2 (imagenet-dev)", "MaxBoxAccV2_imagenet_dev")]
lines = ["| method | detections: p >= | " + " | ".join(t for t, _ in columns) + " |",
         "|---|---:|" + "---:|" * len(columns)]
for row in rows:
    lines.append(f"| {row['method']} | {row['min_class_probability']:g} | "
                 + " | ".join("n/a" if row[key] is None else f"{row[key]:.1f}"
                              for _, key in columns) + " |")
count = rows[0]["mosaics"] if rows else 0
header = (f"# ImageNet mosaics: {count} dev mosaics (2x2, imagenet-dev), embedded "
          "EfficientNet-Lite0, every one of the 1000 classes scored per mosaic; detections "
          "(and beam's searches) for the classes with probability >= p plus the top class. "
          "MaxBoxAccV2: single-object imagenet-dev, GT class.\n\n")
table = header + "\n".join(lines) + "\n"
(results / "mosaics.md").write_text(table)
(results / "mosaics.json").write_text(json.dumps({"rows": rows}, indent=2) + "\n")
print(table)
PY
