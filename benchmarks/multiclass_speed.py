"""Fast multi-class evaluation on ImageNet mosaics: speed, and the detection rule's AP effect.

Run (from the repository root; builds ``out/mosaics/dev`` first when it is missing):

    python benchmarks/multiclass_speed.py [--threads 2] [--speed-images 20] [--methods cam,gradcam]
                                          [--json benchmarks/results/multiclass_speed.json]

Speed: ``wsolkit evaluate``'s work per image on the first ``--speed-images`` dev mosaics
(``evaluate()`` with the embedded model on one mosaic at a time: loading, every one of the
1000 classes mapped and scored, metrics), median seconds per image (wall clock and CPU
seconds of the process, ``--threads`` torch threads), each image interleaved with a plain
``torch.inference_mode()`` forward pass of it (the median ratio cancels the load of a shared
machine). The old path (one forward pass per class, in chunks of 32 repeated images, as
before this change) is timed on ``--old-images`` images and ``--old-chunks`` chunks, scaled
to 1000 classes, for the ratio old / new. With
``--json``, the sections of methods not run are kept from the file. Target: <= 0.2 s per
image for cam and gradcam on 2 threads.

AP effect of the detection rule (``--min-class-probability``): on every dev mosaic, the
metrics with detections of every class (``min_class_probability=0``, the full computation)
against the rule at several thresholds; pointing mAP and classification mAP do not depend on
the rule (checked), detection AP@0.5 does. Also the mean number of classes per mosaic the
rule keeps (what a box method such as beam searches). The exit code is always 0: a report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

import wsolkit
from wsolkit.apps.class_scoring import ClassScorer, classes_to_detect, every_class, maps_of_result
from wsolkit.apps.evaluate import EvaluateSettings, evaluate
from wsolkit.apps.mosaics import build_mosaics
from wsolkit.data import load_image, open_dataset
from wsolkit.eval.protocol import protocol_map, protocol_source
from wsolkit.maps import get_method

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "imagenet-dev"
MOSAICS = ROOT / "out" / "mosaics" / "dev"
THRESHOLDS = (0.001, 0.003, 0.01, 0.03, 0.1)
TARGET_SECONDS = 0.2


def mosaics() -> wsolkit.data.SampleDataset:
    """The dev mosaics (scripts/build_mosaics.sh's command), built when missing."""
    if not (MOSAICS / "instances.json").is_file():
        build_mosaics(open_dataset(DATA), MOSAICS, grid=2, seed=0, repeats=1)
    return open_dataset(MOSAICS / "instances.json")


class Subset:
    """The first images of a dataset, with the attributes evaluate() reads."""

    def __init__(self, dataset, samples) -> None:
        self.samples = list(samples)
        self.kind, self.class_names, self.root = dataset.kind, dataset.class_names, dataset.root

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self):
        return iter(self.samples)

    def __getitem__(self, index):
        return self.samples[index]


def timed(function) -> tuple[float, float]:
    """(wall, CPU) seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def new_speed(dataset, model, method: str, count: int) -> dict:
    """evaluate() (default settings) on one mosaic at a time, each next to a plain forward pass.

    Interleaved per image, so the ratio is measured under the same load.
    """
    settings = EvaluateSettings(method=method, batch_size=1)
    evaluate(Subset(dataset, [dataset[0]]), settings, model)  # warm-up
    walls, cpus, forward_walls, forward_cpus, ratios = [], [], [], [], []
    for sample in list(dataset)[:count]:
        image = model.preprocess_batch([load_image(sample.path)])
        with torch.inference_mode():
            forward = timed(lambda image=image: model.module(image))
        one = Subset(dataset, [sample])
        wall, cpu = timed(lambda one=one: evaluate(one, settings, model))
        walls.append(wall)
        cpus.append(cpu)
        forward_walls.append(forward[0])
        forward_cpus.append(forward[1])
        ratios.append(wall / forward[0])
    return {"images": count, "seconds_per_image": median(walls),
            "cpu_seconds_per_image": median(cpus), "forward_seconds": median(forward_walls),
            "forward_cpu_seconds": median(forward_cpus), "ratio_to_forward": median(ratios)}


def old_seconds(dataset, model, method_name: str, count: int, chunks: int,
                chunk: int = 32) -> float:
    """Seconds per image of the previous path: the 1000 classes in chunks of ``chunk``
    repeated images (one forward pass per class), timed on the first ``chunks`` chunks and
    scaled to all 1000 classes."""
    method = get_method(method_name)(model)
    classes_timed = min(chunks * chunk, 1000)
    start = time.perf_counter()
    for sample in list(dataset)[:count]:
        image = model.preprocess_batch([load_image(sample.path)])
        for first in range(0, classes_timed, chunk):
            classes = list(range(first, min(first + chunk, classes_timed)))
            result = method(image.repeat(len(classes), 1, 1, 1), target=classes)
            for raw in result.raw:
                protocol_map(protocol_source(method, raw))
    return (time.perf_counter() - start) / count * 1000 / classes_timed


def rule_effect(dataset, model, method_name: str) -> dict:
    """Metrics with every class detected vs the rule at each threshold, one map pass."""
    method = get_method(method_name)(model)
    num_classes = len(dataset.class_names)
    scorers = {low: ClassScorer(num_classes, 0.5) for low in (0.0, *THRESHOLDS)}
    kept = {low: 0 for low in THRESHOLDS}
    for sample in dataset:
        image = load_image(sample.path)
        result = every_class(method, model.preprocess_batch([image]), num_classes)
        full = maps_of_result(method, result, num_classes, 0.0, tuple(sample.labels))
        for low, scorer in scorers.items():
            maps = full
            if low > 0:
                detect = classes_to_detect(full.probabilities, low)
                kept[low] += len(detect)
                maps = type(full)(full.peak_values, full.probabilities, full.grids, detect)
            scorer.add(sample, maps, image.size)
    results = {str(low): scorer.compute() for low, scorer in scorers.items()}
    full = results["0.0"]
    rows = {}
    for low in THRESHOLDS:
        metrics = results[str(low)]
        assert metrics["pointing_ap"] == full["pointing_ap"]  # the rule only touches detection
        rows[str(low)] = {
            "detection_AP50": metrics["detection_ap"]["mAP"],
            "detection_AP50_change": metrics["detection_ap"]["mAP"] - full["detection_ap"]["mAP"],
            "classes_per_image": kept[low] / len(dataset),
        }
    return {"full": {"detection_AP50": full["detection_ap"]["mAP"],
                     "pointing_mAP": full["pointing_ap"]["mAP"],
                     "classification_mAP": full["classification_map"]["mAP"],
                     "classes_per_image": num_classes},
            "rule": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default="cam,gradcam")
    parser.add_argument("--speed-images", type=int, default=20)
    parser.add_argument("--old-images", type=int, default=2)
    parser.add_argument("--old-chunks", type=int, default=4,
                        help="chunks of 32 classes timed on the old path (scaled to 1000)")
    parser.add_argument("--skip-rule", action="store_true", help="speed only")
    parser.add_argument("--skip-speed", action="store_true", help="detection rule only")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = wsolkit.load_model()
    dataset = mosaics()
    report = {"machine": platform.platform(), "threads": args.threads,
              "load_average_start": os.getloadavg(), "images": len(dataset),
              "target_seconds_per_image": TARGET_SECONDS, "methods": {}}
    for name in args.methods.split(","):
        row = report["methods"].setdefault(name, {})
        if not args.skip_speed:
            speed = new_speed(dataset, model, name, args.speed_images)
            speed["old_seconds_per_image"] = old_seconds(dataset, model, name, args.old_images,
                                                         args.old_chunks)
            speed["speedup"] = speed["old_seconds_per_image"] / speed["seconds_per_image"]
            speed["target_met"] = speed["seconds_per_image"] <= TARGET_SECONDS
            speed["load_average"] = os.getloadavg()
            row["speed"] = speed
            print(name, json.dumps(speed), flush=True)
        if not args.skip_rule:
            row["detection_rule"] = rule_effect(dataset, model, name)
            print(json.dumps(row["detection_rule"], indent=1), flush=True)
    report["load_average_end"] = os.getloadavg()
    if args.json and args.json.is_file():  # keep the sections of earlier runs not redone
        earlier = json.loads(args.json.read_text()).get("methods", {})
        for name, row in earlier.items():
            kept = report["methods"].setdefault(name, {})
            for key in ("speed", "detection_rule"):
                if key in row and key not in kept:
                    kept[key] = row[key]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
