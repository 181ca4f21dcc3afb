"""rCAM configurations side by side on the dev sets: every stage scored from one pass.

For each configuration (a row of ``CONFIGS``, method options as ``wsolkit evaluate --option``
takes them) and each dataset, rCAM runs once per image with the original image (so scale 2 is
``I_2``, the image resized to 448, unless the row says otherwise), and its stages are scored
with ``wsolkit evaluate``'s own scorer (``wsolkit.eval.protocol.ProtocolScorer``, the same 224x224
protocol): ``cam`` (the scale-1 CAM after a ReLU; the registered ``cam`` method keeps
negative values, which scores slightly differently), ``rcam1``, ``rcam2``, ``rcam3`` (raw
fusion) and ``rcam`` (CRF marginal times the fusion's peak), the raw maps the registered
methods return. imagenet-dev: ground-truth class (MaxBoxAcc, MaxBoxAccV2, top-1 loc); davis: top-1
class (PxAP, F OIS / ODS, MAE, mIoU). One torch thread.

    python benchmarks/rcam_eval.py --json benchmarks/results/rcam_eval.json
    python benchmarks/rcam_eval.py --configs default,paper --datasets davis --limit 20

``--configs`` picks rows by name (default: all). Prints a markdown table per dataset.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from harness import add_common_arguments, rcam_passes, rcam_samples

from wsolkit.data.atomic import write_json_atomic
from wsolkit.eval.protocol import ProtocolScorer
from wsolkit.maps.rcam import RCAM
from wsolkit.models import load_model

DATASETS = ("imagenet-dev", "davis")
STAGES = ("cam", "rcam1", "rcam2", "rcam3", "rcam")

CONFIGS: dict[str, dict] = {
    # our default settings (scale 2 from the original image, as the paper's I_2)
    "default": {},
    # the previous default: scale 2 upsampled from the 224 tensor
    "tensor-i2": {"scale2_input": "tensor"},
    # the paper's C^l: PCA over every response map of the guide's size
    "group": {"shape_group": "size"},
    # everything the paper specifies (RCAM PRESETS["paper"])
    "paper": {"preset": "paper"},
    # the paper preset with one ingredient set back to our default, to attribute the gap
    "paper-radius2": {"preset": "paper", "radius": 2},
    "paper-minmax": {"preset": "paper", "fuse_inputs": "minmax"},
    "paper-crf112": {"preset": "paper", "crf_size": 112},
}


def run(config_name: str, dataset_name: str, model, limit: int | None) -> dict:
    samples, target = rcam_samples(dataset_name, model, limit)
    has_boxes = any(len(s.boxes) for s in samples)
    has_masks = any(s.has_mask for s in samples)
    scorers = {stage: ProtocolScorer(has_boxes, has_masks, 0.01, target == "gt")
               for stage in STAGES}
    method = RCAM(model, **CONFIGS[config_name])
    start = time.perf_counter()
    for sample, image, _, result in rcam_passes(method, model, samples, target):
        stages = method.last_stages
        raw = {"cam": stages.cam1[0].clip(min=0), "rcam1": stages.rcam1[0],
               "rcam2": stages.rcam2[0], "rcam3": stages.fused[0],
               "rcam": result.raw[0].numpy()}
        top5 = result.logits[0].topk(5).indices.tolist()
        for stage in STAGES:
            scorers[stage].add(sample, raw[stage], image.size, top5)
    seconds = time.perf_counter() - start
    out = {"config": CONFIGS[config_name], "images": len(samples), "target": target,
           "seconds_per_image": seconds / len(samples), "stages": {}}
    for stage, scorer in scorers.items():
        metrics = scorer.compute()
        row = {}
        if "boxes" in metrics:
            boxes = metrics["boxes"]
            row.update(MaxBoxAcc=boxes["MaxBoxAcc"], MaxBoxAccV2=boxes["MaxBoxAccV2"],
                       top1_loc=boxes.get("top1_loc"))
        if "pixels" in metrics:
            pixels = metrics["pixels"]
            row.update(PxAP=pixels["PxAP"], F_OIS=pixels["F_OIS"], F_ODS=pixels["F_ODS"],
                       MAE=pixels["MAE"], mIoU=pixels["mIoU"])
        out["stages"][stage] = row
    return out


def table(results: dict, dataset: str) -> str:
    rows = results[dataset]
    if dataset == "davis":
        keys, head = ("PxAP", "F_OIS", "F_ODS", "MAE", "mIoU"), "PxAP | F OIS | F ODS | MAE | mIoU"
    else:
        keys, head = ("MaxBoxAcc", "MaxBoxAccV2", "top1_loc"), "MaxBoxAcc | MaxBoxAccV2 | top-1 loc"
    lines = [f"### {dataset}", "", f"| configuration | stage | {head} |",
             "|---|---|" + "---:|" * len(keys)]
    for name, result in rows.items():
        for stage in STAGES:
            metrics = result["stages"][stage]
            cells = " | ".join(
                f"{metrics[k]:.3f}" if k.startswith(("F_", "MAE")) else f"{metrics[k]:.1f}"
                for k in keys)
            lines.append(f"| {name} | {stage} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--datasets", default=",".join(DATASETS))
    add_common_arguments(parser, data=False)
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = [name.strip() for name in args.configs.split(",") if name.strip()]
    unknown = [name for name in names if name not in CONFIGS]
    if unknown:
        parser.error(f"--configs: unknown {unknown}; known: {list(CONFIGS)}")
    model = load_model()
    results: dict = {}
    for dataset in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        results[dataset] = {}
        for name in names:
            results[dataset][name] = run(name, dataset, model, args.limit)
            print(f"{dataset} {name}: {results[dataset][name]['seconds_per_image']:.2f} s/image",
                  file=sys.stderr, flush=True)
            if args.json is not None:  # partial results survive an interrupted run
                write_json_atomic(args.json, results)
        print(table(results, dataset) + "\n", flush=True)


if __name__ == "__main__":
    main()
