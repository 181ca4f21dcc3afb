"""``wsolkit evaluate``: score heatmap methods on a dataset and write reports."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from wsolkit.apps.engine import JobOptions, default_workers
from wsolkit.apps.evaluate import EvaluateSettings, evaluate
from wsolkit.apps.report import markdown_table, write_report
from wsolkit.cli.options import (
    EXIT_BAD_ITEMS,
    EXIT_OK,
    add_command,
    add_common,
    add_engine_options,
    add_workers_option,
    check_limit,
    check_minimums,
    device,
    parse_options,
)
from wsolkit.data import open_dataset
from wsolkit.data.atomic import check_out_dir, make_out_dir, write_bytes_atomic, write_json_atomic
from wsolkit.errors import InputError
from wsolkit.maps import get_method, method_names
from wsolkit.maps.options import option_defaults


def add_evaluate_engine_options(run: argparse.ArgumentParser) -> None:
    """``evaluate``'s engine options: decoding workers, Ray (docs/scale.md)."""
    job = run.add_argument_group("large evaluations (docs/scale.md)")
    add_workers_option(job)
    add_engine_options(job, "local, or ray: the maps made by Ray Data actors, the metrics here "
                            "(pip install 'wsolkit[ray]')")


def run_evaluate(args: argparse.Namespace, options: dict | None = None) -> int:
    """Run ``wsolkit evaluate``; returns the exit code (1 when some images failed)."""
    options = parse_options(args.option) if options is None else options
    methods = method_names() if args.method == "all" else args.method.split(",")
    for name in methods:
        get_method(name)
    if args.maps is not None and len(methods) > 1:
        raise InputError("--maps scores one set of maps; give a single --method")
    check_limit(args.limit)
    check_minimums(("--workers", args.workers, 0), ("--actors", args.actors, 1))
    job = JobOptions(workers=default_workers() if args.workers is None else args.workers)
    ray = None
    if args.engine == "ray" and args.maps is None:
        from wsolkit.apps.ray_engine import RayOptions

        ray = RayOptions(address=args.address, actors=args.actors, actor_cpus=args.actor_cpus)
    check_out_dir(args.out)
    if args.save_maps is not None:
        check_out_dir(args.save_maps, "save_maps")
    dataset = open_dataset(args.dataset)
    model = None
    if args.maps is None:
        from wsolkit.models import load_model

        model = load_model(args.model, weights=args.weights, device=device(args))
    name = args.dataset.name or str(args.dataset)
    rows, failed = [], 0
    for method in methods:
        settings = EvaluateSettings(
            method=method, target=args.target, layer=args.layer, batch_size=args.batch_size,
            limit=args.limit, cam_curve_interval=args.cam_curve_interval,
            options=_options_for(method, options, strict=len(methods) == 1),
            detection_threshold=args.detection_threshold,
            min_class_probability=args.min_class_probability,
            class_thresholds=args.class_thresholds, box_score=args.box_score,
        )
        total = min(len(dataset), args.limit or len(dataset))
        with tqdm(total=total, unit="img", desc=method, disable=args.quiet,
                  file=sys.stderr) as bar:
            evaluation = evaluate(dataset, settings, model, maps_dir=args.maps,
                                  save_maps_dir=_maps_folder(args.save_maps, method, methods),
                                  progress=bar.update, job=job, ray=ray)
        out_dir = args.out / method if len(methods) > 1 else args.out
        numbers = write_report(evaluation, out_dir, name)
        rows.append((evaluation.method, numbers))
        failed = max(failed, len(evaluation.failures))
        _print_failures(evaluation.failures)
    table = markdown_table(rows)
    print(f"\n{name} ({args.target} target)\n\n{table}")
    if len(methods) > 1:
        make_out_dir(args.out)
        write_bytes_atomic(args.out / "comparison.md", f"# {name}\n\n{table}".encode())
        write_json_atomic(args.out / "comparison.json",
                          {"dataset": name, "rows": [{"method": m, **n} for m, n in rows]})
    print(f"wsolkit: reports in {args.out}", file=sys.stderr)
    return EXIT_BAD_ITEMS if failed else EXIT_OK


def _options_for(method: str, options: dict, strict: bool) -> dict:
    from wsolkit.maps import get_method

    if strict:
        return options
    accepted = option_defaults(get_method(method))
    return {key: value for key, value in options.items() if key in accepted}


def _maps_folder(root: Path | None, method: str, methods: list[str]) -> Path | None:
    if root is None:
        return None
    return root / method if len(methods) > 1 else root


def _print_failures(failures: list[tuple[str, str]]) -> None:
    if not failures:
        return
    print(f"wsolkit: {len(failures)} image(s) could not be scored:", file=sys.stderr)
    for _image_id, message in failures:
        print(f"  {message}", file=sys.stderr)


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``wsolkit evaluate``."""
    run = add_command(
        commands, "evaluate", run_evaluate,
        renamed={"maps_dir": "--maps", "save_maps_dir": "--save-maps"},
        help="score a method on a dataset (WSOL protocol: boxes, masks)",
    )
    run.add_argument("dataset", type=Path,
                     help="wsolevaluation metadata folder, images+masks folder, COCO JSON or "
                          "VOC folder (format detected)")
    run.add_argument("--target", default="auto", choices=["auto", "gt", "top1"],
                     help="class explained: gt label, top1 prediction, or auto (gt when the "
                          "dataset's labels are the model's classes)")
    run.add_argument("--limit", type=int, default=None, help="score only the first N images")
    run.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    run.add_argument("--cam-curve-interval", type=float, default=0.01,
                     help="spacing of the map thresholds (default 0.01)")
    run.add_argument("--detection-threshold", type=float, default=0.5,
                     help="COCO/VOC with a model of the dataset's classes: each class map's "
                          "connected components at this fraction of its max are detections "
                          "(default 0.5)")
    run.add_argument("--min-class-probability", type=float, default=0.001,
                     help="COCO/VOC/mosaics with a model of the dataset's classes: detections "
                          "(and beam's searches) only for the classes of an image at least "
                          "this probable, plus its top class; 0: every class (default 0.001)")
    run.add_argument("--class-thresholds", type=Path, default=None, metavar="FILE",
                     help="COCO/VOC with a model of the dataset's classes: per-class map "
                          "thresholds (a `wsolkit tune-beam` file) instead of "
                          "--detection-threshold")
    run.add_argument("--box-score", default="blob", choices=["blob", "box"],
                     help="COCO/VOC detections: score = blob's mean heat x class probability "
                          "(blob, default) or mean heat inside the box (box, Bency et al.)")
    run.add_argument("--maps", type=Path, default=None,
                     help="score precomputed <image_id>.npy maps from this folder")
    run.add_argument("--save-maps", type=Path, default=None,
                     help="save each 224x224 map as <image_id>.npy in this folder")
    run.add_argument("--out", type=Path, default=Path("out/evaluate"),
                     help="report folder (default out/evaluate)")
    add_common(run, method="cam", layer=True,
               method_help="heatmap method, a comma-separated list, or 'all' (default cam)",
               option="method option (repeatable); with --method all, given to the methods "
                      "that take it")
    add_evaluate_engine_options(run)
