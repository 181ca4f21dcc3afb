"""End-to-end throughput of `wsolkit localize` against a plain batched forward pass.

Run (from the repository root, ideally on a quiet machine):

    python benchmarks/localize_throughput.py [--threads 2] [--batch-size 32] [--repeat 2]
        [--repeats 3] [--methods cam,gradcam] [--ray 1,2] [--json PATH]

What it measures, on the embedded model and a folder of real JPEGs (shared/data/imagenet-dev,
every file copied ``--repeat`` times under distinct names into a temporary folder):

- ``forward``: ``model.module(x)`` under ``torch.inference_mode()`` on batches of
  ``--batch-size`` tensors already preprocessed and held in memory (no decoding, no heatmaps,
  no boxes, no writing): the ceiling the issue compares against.
- ``localize <method>``: the whole command, ``wsolkit localize FOLDER --out NEW --method M
  --batch-size B --quiet`` called in-process through ``wsolkit.cli.main.main`` (finding the
  files, loading the model, decoding in DataLoader workers, heatmaps, boxes, JSON Lines
  shards), wall time from the call to its return, into a fresh output folder every time.
- ``ray <method> (N actors)`` with ``--ray``, for the first method: the same command with
  ``--engine ray --actors N``; Ray itself is started once beforehand (``ray.init``), so
  actor start-up and model shipping are inside the time but Ray's own start-up is not.

Every repeat runs every row once, interleaved; a row's ratio is the median over repeats of
(its images/s / forward images/s of the same repeat). Prints a markdown table; the exit code
is always 0 (a report, not a test). The load average is recorded beside the numbers because
on a shared machine they drift.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

import wsolkit
from wsolkit.cli.main import main as wsolkit_main
from wsolkit.data.images import load_image

DEV = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "imagenet-dev" / "images"
TARGET = 0.8


def build_folder(source: Path, repeat: int, folder: Path) -> list[Path]:
    files = sorted(p for p in source.iterdir() if p.suffix.lower() in (".jpeg", ".jpg"))
    made = []
    for copy in range(repeat):
        for path in files:
            target = folder / f"{path.stem}-{copy}{path.suffix}"
            shutil.copyfile(path, target)
            made.append(target)
    return made


def forward_rate(model: wsolkit.Classifier, tensors: list[torch.Tensor], batch: int) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for begin in range(0, len(tensors), batch):
            model.module(torch.stack(tensors[begin:begin + batch]))
    return len(tensors) / (time.perf_counter() - start)


def command_rate(folder: Path, count: int, args: list[str], scratch: Path,
                 command: str = "localize") -> float:
    out = Path(tempfile.mkdtemp(dir=scratch))
    shutil.rmtree(out)
    start = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):
        code = wsolkit_main([command, str(folder), "--out", str(out), "--quiet", *args])
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"wsolkit {command} {' '.join(args)} exited {code}")
    rows = sum(len(p.read_text().splitlines()) for p in out.glob("rows-*.jsonl"))
    if rows != count:
        raise SystemExit(f"expected {count} rows, found {rows}")
    shutil.rmtree(out)
    return count / seconds


def interleaved_rates(model: wsolkit.Classifier, tensors: list[torch.Tensor], batch: int,
                      runners: dict[str, Callable[[], float]], repeats: int,
                      ray_actors: bool, digits: int = 1
                      ) -> tuple[dict[str, list[float]], dict[str, list[float]], list[float]]:
    """Time the forward pass, then each runner, once per repeat (interleaved, so a slow drift
    of a shared machine hits every row alike).

    Returns ``(rates, ratios, load)``: images/s per row and repeat (``forward`` first), each
    rate over that repeat's forward rate, and the 1-min load average before and after each
    repeat. Ray is started first when ``ray_actors``.
    """
    load = [os.getloadavg()[0]]
    if ray_actors:
        import ray

        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    forward_rate(model, tensors[: batch * 2], batch)  # warm-up
    rates: dict[str, list[float]] = {"forward": [], **{name: [] for name in runners}}
    ratios: dict[str, list[float]] = {name: [] for name in rates}
    for repeat in range(repeats):
        base = forward_rate(model, tensors, batch)
        rates["forward"].append(base)
        for name, runner in runners.items():
            rates[name].append(runner())
        for name, values in rates.items():
            ratios[name].append(values[-1] / base)
        load.append(os.getloadavg()[0])
        print(f"repeat {repeat + 1}/{repeats}: " + ", ".join(
            f"{name} {values[-1]:.{digits}f}/s" for name, values in rates.items()),
            file=sys.stderr)
    return rates, ratios, load


def run_facts(script: str, args: argparse.Namespace, images: int, load: list[float]) -> dict:
    """What every throughput output records about its run."""
    return {
        "command": f"python benchmarks/{script} " + " ".join(sys.argv[1:]),
        "torch": torch.__version__, "machine": platform.machine(), "cpus": os.cpu_count(),
        "threads": args.threads, "batch_size": args.batch_size, "images": images,
        "repeats": args.repeats, "load_average_1min": [round(v, 2) for v in load],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=2, help="copies of imagenet-dev")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of every row")
    parser.add_argument("--methods", default="cam,gradcam")
    parser.add_argument("--workers", type=int, default=None,
                        help="--workers of localize (default: the command's default)")
    parser.add_argument("--ray", default="", help="actor counts for --engine ray rows, e.g. 1,2")
    parser.add_argument("--source", type=Path, default=DEV)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    methods = [m for m in args.methods.split(",") if m]
    actors = [int(a) for a in args.ray.split(",") if a]
    scratch = Path(tempfile.mkdtemp(prefix="wsolkit-throughput-"))
    try:
        folder = scratch / "images"
        folder.mkdir()
        files = build_folder(args.source.resolve(), args.repeat, folder)
        model = wsolkit.load_model(device="cpu")
        tensors = [model.preprocess(load_image(p)) for p in files]
        common = ["--batch-size", str(args.batch_size), "--device", "cpu"]
        if args.workers is not None:
            common += ["--workers", str(args.workers)]
        runners = {}
        for method in methods:
            runners[f"localize {method}"] = functools.partial(
                command_rate, folder, len(files), ["--method", method, *common], scratch)
            for n in actors if method == methods[0] else []:
                runners[f"ray {method} ({n} actor{'s' if n > 1 else ''})"] = functools.partial(
                    command_rate, folder, len(files),
                    ["--method", method, *common, "--engine", "ray", "--actors", str(n)],
                    scratch)
        rows, ratios, load = interleaved_rates(model, tensors, args.batch_size, runners,
                                               args.repeats, bool(actors))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    table = []
    for name, rates in rows.items():
        ratio = statistics.median(ratios[name])
        localize_row = name.startswith("localize ")
        table.append({
            "row": name,
            "images_per_s": round(statistics.median(rates), 2),
            "ratio_to_forward": round(ratio, 3),
            "target": TARGET if localize_row else None,
            "met": (ratio >= TARGET) if localize_row else None,
            "runs_images_per_s": [round(r, 2) for r in rates],
        })
    result = {**run_facts("localize_throughput.py", args, len(files), load), "rows": table}
    print(f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} cores, "
          f"{args.threads} threads, batch {args.batch_size}, {len(files)} JPEGs "
          f"(imagenet-dev x{args.repeat}), {args.repeats} repeats, 1-min load average "
          f"{min(load):.1f}-{max(load):.1f}\n")
    print("| row | images/s | ratio to forward | target | met |")
    print("|---|---:|---:|---:|---|")
    for row in table:
        target = f">={row['target']}x" if row["target"] else "-"
        met = "-" if row["met"] is None else ("yes" if row["met"] else "no")
        print(f"| {row['row']} | {row['images_per_s']:.1f} | {row['ratio_to_forward']:.2f}x | "
              f"{target} | {met} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
