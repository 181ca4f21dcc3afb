"""WILDCAT / ex-CAM heads vs CAM and Grad-CAM: dev mosaics (multi-object) and imagenet-dev.

For every method (CAM, Grad-CAM, beam search, WILDCAT, ex-CAM with the shipped intent-dropout
head, ex-CAM with the literal-dropout head of ``scripts/train_heads.sh``):

- dev mosaics (``out/mosaics/dev``, every class of the model scored on every mosaic by
  ``wsolkit.apps.evaluate``): pointing mAP, detection AP@0.5 (mAP over classes), and
  classification mAP of the method's own class probabilities (softmax for the plain classifier,
  sigmoid of the pooled scores for a head) against the mosaics' labels (all from
  ``wsolkit.apps.evaluate``);
- single-object imagenet-dev (gt class): MaxBoxAccV2, and top-1 accuracy of the method's
  classifier (a multi-label head should not lose single-object quality);
- for each head, fp16 vs fp32 weights (from the training checkpoint, when present): largest
  absolute difference of the class maps and top-1 agreement on imagenet-dev.

    python benchmarks/heads_eval.py --threads 2 --json benchmarks/results/heads.json \
        --md benchmarks/results/heads.md

Rows are independent: on a busy machine run groups of rows in parallel (``--methods
cam,gradcam --json a.json`` ...) and combine them with ``--methods none --merge a.json b.json
--json ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wsolkit.apps.evaluate import EvaluateSettings, evaluate  # noqa: E402
from wsolkit.apps.report import headline  # noqa: E402
from wsolkit.data import load_image, open_dataset  # noqa: E402
from wsolkit.eval.classification import multilabel_map  # noqa: E402
from wsolkit.maps import get_method  # noqa: E402
from wsolkit.models import load_model  # noqa: E402

# (key for --methods, row name, registered method, options); every row detects the classes
# with probability >= 0.001 (evaluate's default) but beam, which searches each detected class
# (about 1 s per mosaic and class on 2 cores: ~100 classes per mosaic at 0.001, 3.6 at 0.03)
METHODS = (
    ("cam", "cam", "cam", {}),
    ("gradcam", "gradcam", "gradcam", {}),
    ("beam", "beam (detections: p >= 0.03)", "beam", {}),
    ("wildcat", "wildcat (shipped head)", "wildcat", {}),
    ("excam", "excam (intent dropout, shipped head)", "excam", {}),
    ("excam_literal", "excam (literal dropout)", "excam",
     {"head": "out/heads/excam_literal.pt"}),
)
MIN_PROBABILITY = {"beam": 0.03}


def classification(method: object, dataset: list, num_classes: int) -> tuple[float, float]:
    """(multi-label mAP over the labels, top-1 accuracy of the first label), as fractions."""
    classifier = method.classifier
    scores, targets = [], np.zeros((len(dataset), num_classes), bool)
    for start in range(0, len(dataset), 32):
        chunk = dataset[start:start + 32]
        batch = classifier.preprocess_batch([load_image(s.path) for s in chunk])
        with torch.inference_mode():
            scores.append(classifier.probabilities(classifier.module(batch)).numpy())
        for row, sample in enumerate(chunk):
            targets[start + row, list(sample.labels)] = True
    scores = np.concatenate(scores)
    top1 = float(np.mean([scores[i].argmax() == s.label for i, s in enumerate(dataset)]))
    return multilabel_map(scores, targets)[0], top1


def fp16_check(name: str, head_file: Path, dataset: list, model: object) -> dict | None:
    """fp16 head file vs the fp32 weights of its training checkpoint on ``dataset``."""
    from wsolkit.maps.heads import head_classifier
    from wsolkit.models.wildcat import read_head

    ckpt = head_file.with_name(head_file.stem + ".ckpt.pt")
    if not ckpt.is_file():
        return None
    half = head_classifier(model, head_file)
    full = head_classifier(model, head_file)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["head"]
    full.module.head.load_state_dict(state)
    assert read_head(head_file)["class_names"] == list(full.class_names)
    diff, agree = 0.0, 0
    for start in range(0, len(dataset), 32):
        chunk = dataset[start:start + 32]
        batch = model.preprocess_batch([load_image(s.path) for s in chunk])
        with torch.inference_mode():
            features = half.module.features(batch)
            maps_half = half.module.head.class_maps(features)
            maps_full = full.module.head.class_maps(features)
            diff = max(diff, float((maps_half - maps_full).abs().max()))
            agree += int((half.module.head(features).argmax(1)
                          == full.module.head(features).argmax(1)).sum())
    return {"head": name, "max_abs_class_map_difference": diff,
            "top1_agreement": agree / len(dataset)}


def merged_rows(path: Path) -> list[dict]:
    """Rows of an earlier run: its ``--json`` file, or its printed output (one JSON per row)."""
    text = path.read_text()
    try:
        return json.loads(text)["rows"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return [json.loads(line) for line in text.splitlines() if line.startswith('{"method"')]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mosaics", type=Path, default=Path("out/mosaics/dev/instances.json"))
    parser.add_argument("--single", type=Path, default=Path("../shared/data/imagenet-dev"))
    parser.add_argument("--methods", default=None,
                        help="comma-separated rows to run (cam, gradcam, wildcat, excam, "
                             "excam_literal, beam; default all; 'none': only merge)")
    parser.add_argument("--merge", type=Path, nargs="*", default=[],
                        help="--json files (or printed output) of earlier runs whose rows to "
                             "include")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="first N images of each set")
    parser.add_argument("--no-fp16-check", action="store_true",
                        help="skip the fp16 vs fp32 comparison of the head files")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--md", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model()
    mosaics, single = open_dataset(args.mosaics), open_dataset(args.single)
    mosaic_list = list(mosaics)[: args.limit]
    single_list = list(single)[: args.limit]
    rows = []
    wanted = None if args.methods is None else set(args.methods.split(","))
    for key, row_name, method_name, options in METHODS:
        if wanted is not None and key not in wanted:
            continue
        began = time.perf_counter()
        method = get_method(method_name)(model, **options)
        low = MIN_PROBABILITY.get(key, EvaluateSettings.min_class_probability)
        multi = evaluate(mosaics, EvaluateSettings(method=method_name, options=options,
                                                   limit=args.limit,
                                                   min_class_probability=low), model)
        one = evaluate(single, EvaluateSettings(method=method_name, options=options,
                                                limit=args.limit), model)
        _, top1 = classification(method, single_list, 1000)
        numbers = {
            "pointing mAP": multi.metrics.get("pointing_ap", {}).get("mAP"),
            "detection AP@0.5": multi.metrics.get("detection_ap", {}).get("mAP"),
            "classification mAP": multi.metrics.get("classification_map", {}).get("mAP"),
            "MaxBoxAccV2 (imagenet-dev)": headline(one.metrics).get("MaxBoxAccV2"),
            "top-1 (imagenet-dev)": top1,
        }
        rows.append({"method": row_name, "options": options, "min_class_probability": low,
                     **numbers,
                     "mosaic_headline": headline(multi.metrics),
                     "seconds": round(time.perf_counter() - began, 1)})
        print(json.dumps(rows[-1]), flush=True)
    if args.merge:
        # Rows measured by earlier (e.g. parallel) runs of this script; the rows run now win.
        kept = {row["method"]: row for path in args.merge for row in merged_rows(path)}
        kept.update({row["method"]: row for row in rows})
        rows = [kept[name] for _, name, _, _ in METHODS if name in kept]
    heads = [] if args.no_fp16_check else [
        n for n in ("wildcat", "excam", "excam_literal") if Path(f"out/heads/{n}.pt").is_file()]
    checks = [c for c in (fp16_check(n, Path(f"out/heads/{n}.pt"), single_list, model)
                          for n in heads) if c]
    if args.no_fp16_check:  # keep the comparison of a merged --json file, if it has one
        checks = [c for path in args.merge if path.suffix == ".json"
                  for c in json.loads(path.read_text()).get("fp16_vs_fp32", [])]
    result = {"mosaics": str(args.mosaics), "mosaic_images": len(mosaic_list),
              "single": str(args.single), "single_images": len(single_list),
              "rows": rows, "fp16_vs_fp32": checks}
    columns = ["pointing mAP", "detection AP@0.5", "classification mAP",
               "MaxBoxAccV2 (imagenet-dev)", "top-1 (imagenet-dev)"]
    lines = ["| method | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for row in rows:
        cells = []
        for column in columns:
            value = row[column]
            # evaluate reports percentages; the classification numbers here are fractions.
            scale = 100 if column == "top-1 (imagenet-dev)" else 1
            cells.append("-" if value is None else f"{value * scale:.1f}")
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    if checks:
        table += "\nfp16 head file vs fp32 training weights (imagenet-dev):\n\n"
        table += "\n".join(f"- {c['head']}: max |class map difference| "
                           f"{c['max_abs_class_map_difference']:.2e}, top-1 agreement "
                           f"{100 * c['top1_agreement']:.1f}%" for c in checks) + "\n"
    print(table)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.md:
        header = (f"# Heads on dev mosaics ({len(mosaic_list)} images) and imagenet-dev "
                  f"({len(single_list)} images)\n\n`python benchmarks/heads_eval.py`\n\n")
        args.md.write_text(header + table)


if __name__ == "__main__":
    main()
