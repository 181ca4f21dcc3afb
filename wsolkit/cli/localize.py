"""``wsolkit localize``: heatmaps and boxes for image files (a job over many files)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wsolkit.cli.options import (
    OPTION_HELP,
    add_command,
    add_common,
    add_job_options,
    check_minimums,
    device,
    image_files,
    overlays,
    parse_options,
    parse_target,
    report_failures,
)
from wsolkit.errors import InputError


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``wsolkit localize``."""
    run = add_command(commands, "localize", run_localize,
                      help="heatmaps and boxes for image files")
    run.add_argument("paths", nargs="*", help="image files, folders or glob patterns")
    run.add_argument("--manifest", type=Path, default=None,
                     help="file listing image paths, one per line or JSON lines with "
                          "\"image\" (instead of or beside PATHS)")
    run.add_argument("--out", required=True, type=Path, help="output folder")
    run.add_argument("--target", default="top1",
                     help="top1, topK, a class index or an exact class name (default top1)")
    run.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    run.add_argument("--threshold", default="fraction",
                     choices=["fixed", "fraction", "mean", "otsu"],
                     help="how the heatmap is thresholded into boxes (default fraction)")
    run.add_argument("--threshold-value", type=float, default=0.25,
                     help="threshold parameter (default: 0.25 of the max, best for gradcam and cam "
                          "on imagenet-dev, benchmarks/objectness_layer.py --methods)")
    run.add_argument("--all-components", action="store_true",
                     help="one box per connected component instead of the largest only")
    run.add_argument("--recursive", action="store_true", help="also search subfolders")
    add_common(run, method="gradcam", method_help="heatmap method (see 'wsolkit methods')",
               layer=True, option=OPTION_HELP)
    add_job_options(run)


def run_localize(args: argparse.Namespace) -> int:
    """Run ``wsolkit localize``; returns the exit code (1 when some images failed)."""
    from tqdm import tqdm

    from wsolkit.apps.localize import JobOptions, LocalizeSettings, default_workers
    from wsolkit.data.atomic import check_out_dir
    from wsolkit.maps import get_method
    from wsolkit.models import load_model

    get_method(args.method)  # fail on a typo before loading anything
    check_out_dir(args.out)
    options = parse_options(args.option)
    check_minimums(("--batch-size", args.batch_size, 1), ("--workers", args.workers, 0),
                   ("--shard-size", args.shard_size, 1), ("--actors", args.actors, 1))
    job = JobOptions(
        workers=default_workers() if args.workers is None else args.workers,
        shard_size=args.shard_size,
        overlays=overlays(args),
        save_maps=args.save_maps,
    )
    if not args.paths and args.manifest is None:
        raise InputError("give image PATHS or --manifest FILE")
    listed = []
    if args.manifest is not None:
        from wsolkit.data.manifest import read_manifest

        listed = read_manifest(args.manifest)
    files, problems = image_files(args.paths, args.recursive, listed)
    model = load_model(args.model, weights=args.weights, device=device(args))
    settings = LocalizeSettings(
        method=args.method,
        target=parse_target(args.target, model.class_names),
        layer=args.layer,
        batch_size=args.batch_size,
        threshold=args.threshold,
        threshold_value=None if args.threshold == "otsu" else args.threshold_value,
        components="all" if args.all_components else "largest",
        options=options,
    )
    with tqdm(total=len(files), unit="img", disable=args.quiet, file=sys.stderr) as bar:
        if args.engine == "ray":
            from wsolkit.apps.ray_engine import RayOptions, localize_files_ray

            ray_options = RayOptions(address=args.address, actors=args.actors,
                                     actor_cpus=args.actor_cpus)
            report = localize_files_ray(model, files, args.out, settings, progress=bar.update,
                                        job=job, ray=ray_options)
        else:
            from wsolkit.apps.localize import localize_files

            report = localize_files(model, files, args.out, settings, progress=bar.update,
                                    job=job)
    failures = [(item, f"{item}: {reason}") for item, reason in problems] + report.failures
    resumed = f" ({report.resumed} already done)" if report.resumed else ""
    print(f"wsolkit: {report.written - len(report.failures)} image(s) localized with "
          f"{args.method}{resumed}; rows in {args.out}/rows-*.jsonl, summary in "
          f"{args.out / 'results.json'}", file=sys.stderr)
    return report_failures([message for _item, message in failures])
