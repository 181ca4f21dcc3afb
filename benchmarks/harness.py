"""What the benchmark scripts share: data, common flags, evaluation and rCAM loops, timing.

Also how their result files are written.

Imported by the scripts beside it (they run as ``python benchmarks/<script>.py``, so this
folder is on ``sys.path``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the scripts run from a checkout, installed or not
    sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data"
"""The shared datasets (``../shared/data`` beside the repository)."""

BOX_KEYS = (("MaxBoxAcc", "MaxBoxAcc"), ("MaxBoxAccV2", "MaxBoxAccV2"), ("top-1 loc", "top1_loc"))
"""(column title, key in ``metrics["boxes"]``) of the box metrics the tables show."""

PIXEL_KEYS = (("PxAP", "PxAP"), ("F ODS", "F_ODS"), ("F OIS", "F_OIS"), ("MAE", "MAE"))
"""(column title, key in ``metrics["pixels"]``) of the pixel metrics the tables show."""


def add_common_arguments(parser: argparse.ArgumentParser, threads: int | None = None,
                         data: bool = True, per_dataset: bool = False,
                         repeats: int | None = None) -> None:
    """``--data``, ``--limit``, ``--json``; ``--threads`` and ``--repeats`` when given."""
    if data:
        parser.add_argument("--data", type=Path, default=DATA)
    if threads is not None:
        parser.add_argument("--threads", type=int, default=threads)
    parser.add_argument("--limit", type=int, default=None,
                        help="first N images per dataset" if per_dataset else None)
    if repeats is not None:
        parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--json", type=Path, default=None)


def timed(fn: Callable[[], Any]) -> float:
    """Wall-clock seconds one call of ``fn`` takes."""
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def write_json(path: Path, data: Any, indent: int | None = 2, newline: bool = True,
               default: Callable[[Any], Any] | None = None) -> None:
    """Write a result file (its folder created), formatted as the script always has."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=indent, default=default) + ("\n" if newline else ""))


def evaluate_numbers(dataset, model, method: str, layer: str | None = None,
                     limit: int | None = None, options: dict | None = None):
    """``wsolkit evaluate``'s run (batch 16) and its box / pixel numbers by column title.

    Returns:
        ``(result, numbers)``: the :class:`~wsolkit.apps.evaluate.Evaluation` and a dict with
        ``layer`` and the :data:`BOX_KEYS` / :data:`PIXEL_KEYS` the run measured, as floats.
    """
    from wsolkit.apps.evaluate import EvaluateSettings, evaluate

    settings = EvaluateSettings(method=method, layer=layer, limit=limit, batch_size=16,
                                options=options or {})
    result = evaluate(dataset, settings, model)
    metrics = result.metrics
    numbers: dict[str, Any] = {"layer": result.layer}
    for title, key in BOX_KEYS:
        if "boxes" in metrics:
            numbers[title] = float(metrics["boxes"][key])
    for title, key in PIXEL_KEYS:
        if "pixels" in metrics:
            numbers[title] = float(metrics["pixels"][key])
    return result, numbers


def rcam_samples(name: str, model, limit: int | None) -> tuple[list, str]:
    """The samples of a shared dataset (the first ``limit``) and its ``auto`` target."""
    from wsolkit.apps.evaluate import _resolve_target
    from wsolkit.data import open_dataset

    dataset = open_dataset(DATA / name)
    samples = list(dataset)[:limit] if limit else list(dataset)
    return samples, _resolve_target("auto", dataset, model, None)


def rcam_passes(method, model, samples: list, target: str) -> Iterator[tuple]:
    """Run an rCAM method on each sample: ``(sample, image, tensor, result)`` per image.

    The target is the GT class (``target == "gt"``) or the top-1 class; the method gets the
    decoded image as its source (the second scale is cut from it).
    """
    from wsolkit.data import load_image

    for sample in samples:
        image = load_image(sample.path)
        tensor = model.preprocess_batch([image])
        result = method(tensor, target="gt" if target == "gt" else "top1",
                        labels=[max(sample.label, 0)], sources=[image])
        yield sample, image, tensor, result
