"""Scoring overhead: the metrics alone, on maps that are already computed (no model).

Run (from the repository root):

    python benchmarks/scoring.py [--images 200] [--noisy 20] [--repeats 5] [--seed 0]
                                 [--json PATH] [--real --maps DIR [--data DIR]]

What it measures, single-threaded (``cv2.setNumThreads(1)``, one BLAS / OpenMP thread):

* ``BoxAccuracy.update`` per image: the full wsolevaluation box sweep (MaxBoxAcc V1 and
  MaxBoxAccV2, ``cam_curve_interval=0.01``, i.e. 100 score-map thresholds, IoU 30/50/70, every
  contour), the resize to 224x224 and the input checks included. Target: < 10 ms per image.
* ``PixelMetrics.update`` per image (100 WSOL thresholds, 256 F-measure levels) on random
  foreground masks.
* ``compute()`` of both metrics once all images are added (ms per call).

Maps are built without a model: ``--images`` seeded CAM-like maps (a random 7x7 grid with one
to three positive Gaussian blobs plus noise, ReLU, bicubic upsampling to 224x224, min-max
normalization), of which ``--noisy`` come from a noisier 28x28 grid instead (many small
components), each with one to three random GT boxes in a random image size. With ``--real``,
maps saved by ``wsolkit evaluate DATA --save-maps DIR`` (``DIR/<image_id>.npy``) are scored
against the dataset's GT boxes (default dataset: ``$WSOLKIT_DATA/imagenet-dev``, else
``../shared/data/imagenet-dev``); the row is skipped when the dataset or the maps are absent.

Each row is timed over all its images, ``--repeats`` times (after one warm-up pass); the
table gives the median CPU time (``time.process_time``, what the verdict uses, robust to other
jobs on the machine) and wall time (``time.perf_counter``) per image. The exit code is always
0: this is a report, not a test.
"""

from __future__ import annotations

import os

# One thread everywhere, set before numpy / cv2 load their thread pools.
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from wsolkit.eval import BoxAccuracy  # noqa: E402
from wsolkit.eval.pixel import PixelMetrics  # noqa: E402

SIDE = 224
BOX_TARGET_MS = 10.0
REPO = Path(__file__).resolve().parents[1]


@dataclass
class Case:
    """One image to score: a (224, 224) [0, 1] map, GT boxes (edges) and the image size."""

    heatmap: np.ndarray
    boxes: np.ndarray
    size: tuple[int, int]
    mask: np.ndarray | None = None


@dataclass
class Row:
    """One timed step: ms per image (or per call) of CPU and wall time, per repeat."""

    label: str
    count: int
    unit: str = "image"
    target_ms: float | None = None
    cpu_ms: list[float] = field(default_factory=list)
    wall_ms: list[float] = field(default_factory=list)

    @property
    def cpu(self) -> float:
        return statistics.median(self.cpu_ms)

    @property
    def wall(self) -> float:
        return statistics.median(self.wall_ms)

    @property
    def verdict(self) -> str:
        if self.target_ms is None:
            return "-"
        return "pass" if self.cpu < self.target_ms else "fail"


def cam_like_map(rng: np.random.Generator, grid: int, noise: float, blobs: int) -> np.ndarray:
    """A CAM-like (224, 224) float32 map in [0, 1]: blobs plus noise on a grid, upsampled."""
    yy, xx = np.mgrid[:grid, :grid].astype(np.float64)
    raw = rng.normal(0.0, noise, (grid, grid))
    for _ in range(blobs):
        cy, cx = rng.uniform(0, grid - 1, 2)
        sigma = rng.uniform(0.08, 0.3) * grid
        raw += rng.uniform(0.5, 2.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    raw = np.maximum(raw, 0.0).astype(np.float32)  # ReLU, as CAM methods do
    up = cv2.resize(raw, (SIDE, SIDE), interpolation=cv2.INTER_CUBIC)
    up -= up.min()
    peak = up.max()
    return up / peak if peak > 0 else up


def random_boxes(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """One to three random GT boxes, pixel-edge ``x0, y0, x1, y1`` inside ``size`` (w, h)."""
    width, height = size
    out = []
    for _ in range(int(rng.integers(1, 4))):
        w = int(rng.integers(width // 8, width)) + 1
        h = int(rng.integers(height // 8, height)) + 1
        x0 = int(rng.integers(0, width - w + 1))
        y0 = int(rng.integers(0, height - h + 1))
        out.append([x0, y0, x0 + w, y0 + h])
    return np.array(out, dtype=np.float32)


def synthetic_cases(count: int, noisy: int, seed: int) -> tuple[list[Case], list[Case]]:
    """Seeded smooth (7x7-based) and noisy (28x28-based) cases, with random masks."""
    rng = np.random.default_rng(seed)
    smooth, rough = [], []
    for index in range(count):
        is_noisy = index >= count - noisy
        if is_noisy:
            heatmap = cam_like_map(rng, 28, 0.6, int(rng.integers(2, 6)))
        else:
            heatmap = cam_like_map(rng, 7, 0.15, int(rng.integers(1, 4)))
        size = (int(rng.integers(200, 501)), int(rng.integers(200, 501)))
        # Random foreground mask: a jittered threshold of a smoothed copy of the map.
        mask = cv2.GaussianBlur(heatmap, (0, 0), 6) > rng.uniform(0.2, 0.6)
        case = Case(heatmap, random_boxes(rng, size), size, mask)
        (rough if is_noisy else smooth).append(case)
    return smooth, rough


def real_cases(data: Path, maps: Path | None) -> tuple[list[Case], str]:
    """Saved maps of a WSOL dataset with their GT boxes, or ``[]`` and why they were skipped."""
    if not (data / "image_ids.txt").is_file():
        return [], f"skipped: dataset {data} not found"
    if maps is None or not maps.is_dir():
        return [], f"skipped: no maps folder (give --maps DIR; got {maps})"
    from wsolkit.data import open_dataset

    cases = []
    for sample in open_dataset(data):
        path = maps / f"{sample.image_id}.npy"
        if not path.is_file() or not len(sample.boxes) or sample.size is None:
            continue
        heatmap = np.load(path, allow_pickle=False).astype(np.float32)
        if heatmap.ndim != 2 or not np.isfinite(heatmap).all():
            continue
        low, high = float(heatmap.min()), float(heatmap.max())
        if low < 0 or high > 1:  # not a [0, 1] map: min-max normalize it
            heatmap = (heatmap - low) / (high - low) if high > low else heatmap * 0
        cases.append(Case(heatmap, sample.boxes, sample.size))
    if not cases:
        return [], f"skipped: no <image_id>.npy map of {data.name} in {maps}"
    return cases, f"{len(cases)} saved maps of {data.name} from {maps}"


def time_loop(row: Row, work: Callable[[], None], repeats: int) -> None:
    """Time ``work`` (which handles ``row.count`` items) ``repeats`` times after one warm-up."""
    work()
    for _ in range(repeats):
        cpu, wall = time.process_time(), time.perf_counter()
        work()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        row.cpu_ms.append(cpu * 1000 / row.count)
        row.wall_ms.append(wall * 1000 / row.count)


def box_updates(cases: list[Case], metric: BoxAccuracy) -> Callable[[], None]:
    def work() -> None:
        metric.reset()
        for case in cases:
            metric.update(case.heatmap, case.boxes, case.size)

    return work


def pixel_updates(cases: list[Case], metric: PixelMetrics) -> Callable[[], None]:
    def work() -> None:
        metric.reset()
        for case in cases:
            metric.update(case.heatmap, case.mask)

    return work


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="synthetic maps (default 200)")
    parser.add_argument("--noisy", type=int, default=20,
                        help="how many of them come from a noisy 28x28 grid (default 20)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--real", action="store_true",
                        help="also score saved maps of a real dataset (--maps DIR)")
    parser.add_argument("--maps", type=Path, default=None,
                        help="folder of <image_id>.npy maps (wsolkit evaluate --save-maps)")
    default_data = Path(os.environ.get("WSOLKIT_DATA", REPO.parent / "shared" / "data"))
    parser.add_argument("--data", type=Path, default=default_data / "imagenet-dev",
                        help="WSOL dataset the --maps belong to (default: imagenet-dev)")
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    args = parser.parse_args()
    cv2.setNumThreads(1)

    smooth, rough = synthetic_cases(args.images, min(args.noisy, args.images), args.seed)
    every = smooth + rough
    groups = [("smooth 7x7-based", smooth), ("noisy 28x28-based", rough), ("all synthetic", every)]
    notes = [f"{len(smooth)} smooth + {len(rough)} noisy synthetic maps, seed {args.seed}"]
    if args.real:
        real, note = real_cases(args.data, args.maps)
        notes.append(f"--real: {note}")
        if real:
            groups.append((f"real ({args.data.name})", real))

    rows = []
    boxes = BoxAccuracy(cam_curve_interval=0.01)
    for name, cases in groups:
        if not cases:
            continue
        row = Row(f"BoxAccuracy.update, {name}", len(cases),
                  target_ms=BOX_TARGET_MS if name == "all synthetic" else None)
        time_loop(row, box_updates(cases, boxes), args.repeats)
        rows.append(row)
    pixels = PixelMetrics(num_thresholds=100)
    row = Row("PixelMetrics.update, all synthetic", len(every))
    time_loop(row, pixel_updates(every, pixels), args.repeats)
    rows.append(row)

    box_updates(every, boxes)()
    pixel_updates(every, pixels)()
    for label, metric in (("BoxAccuracy.compute", boxes), ("PixelMetrics.compute", pixels)):
        row = Row(f"{label} ({len(every)} images)", 1, unit="call")
        time_loop(row, metric.compute, args.repeats)
        rows.append(row)

    print(f"numpy {np.__version__}, opencv {cv2.__version__}, {platform.machine()}, 1 thread, "
          f"{args.repeats} repeats (+1 warm-up), median; box sweep: 100 thresholds "
          f"(cam_curve_interval 0.01), V1 + V2 (IoU 30/50/70)")
    for note in notes:
        print(f"- {note}")
    print("\n| step | items | CPU ms | wall ms | target (CPU) | pass/fail |")
    print("|---|---:|---:|---:|---:|---|")
    for row in rows:
        target = f"< {row.target_ms:g} ms" if row.target_ms else "-"
        print(f"| {row.label} | {row.count} | {row.cpu:.2f} / {row.unit} | "
              f"{row.wall:.2f} / {row.unit} | {target} | {row.verdict} |")
    verdicts = [row.verdict for row in rows if row.target_ms is not None]
    print(f"\ntargets met: {verdicts.count('pass')}/{len(verdicts)}")

    if args.json:
        config = {key: (str(value) if isinstance(value, Path) else value)
                  for key, value in vars(args).items() if key != "json"}
        results = [{"label": row.label, "items": row.count, "unit": row.unit,
                    "cpu_ms": row.cpu, "wall_ms": row.wall, "cpu_ms_repeats": row.cpu_ms,
                    "wall_ms_repeats": row.wall_ms, "target_ms": row.target_ms,
                    "verdict": row.verdict} for row in rows]
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump({"numpy": np.__version__, "opencv": cv2.__version__, "config": config,
                       "notes": notes, "rows": results}, file, indent=2)


if __name__ == "__main__":
    main()
