"""``wsolkit segment`` (whole-image foreground) and ``wsolkit instances`` (box-to-mask)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from wsolkit.cli.options import (
    add_command,
    add_common,
    add_job_options,
    check_minimums,
    device,
    overlays,
    parse_options,
    parse_target,
    report_failures,
)
from wsolkit.errors import InputError

if TYPE_CHECKING:
    from wsolkit.apps.instances import InstanceSettings
    from wsolkit.apps.segment import SegmentSettings

_UNSET = "unset"


def _fraction_or_none(text: str) -> float | None | str:
    if text == _UNSET:
        return _UNSET
    if text.lower() in ("none", "off"):
        return None
    if text.lower() == "default":
        return "default"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number, 'none' or 'default'"
        ) from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} must lie in [0, 1]")
    return value


def _sigma(text: str) -> float | None | str:
    if text == _UNSET:
        return _UNSET
    if text.lower() in ("none", "off"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or 'none'") from None


def _max_side(text: str) -> int | None | str:
    if text == _UNSET:
        return _UNSET
    if text.lower() in ("none", "full"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer or 'none'") from None


def _add_common(run: argparse.ArgumentParser, rule_default: str) -> None:
    """Options shared by ``segment`` and ``instances``."""
    add_common(run, method="objectness", layer=True,
               option="heatmap method option (repeatable)")
    run.add_argument("--rule", default=_UNSET, choices=["paper", "quantile", "otsu"],
                     help=f"how the heatmap is stratified into GrabCut seeds (default "
                          f"{rule_default}; 'paper' is MASON's rule)")
    for name, text in (("fg", "sure-foreground level"), ("split", "probable fg/bg level"),
                       ("bg", "sure-background level")):
        run.add_argument(f"--{name}", type=_fraction_or_none, default=_UNSET,
                         help=f"{text} of the rule, in [0, 1], 'none' or 'default' (the rule's "
                              "own); default: the measured default of the command's rule")
    run.add_argument("--iterations", type=int, default=None,
                     help="GrabCut iterations (default 5; with 'segment --preset paper' the most "
                          "run while iterating to convergence, default 20)")
    run.add_argument("--max-side", type=_max_side, default=_UNSET,
                     help="GrabCut working size: longer side in pixels, or 'none' for full size "
                          "(default: the command's measured size)")
    run.add_argument("--save-maps", type=Path, default=None, metavar="DIR",
                     help="also save masks as DIR/<image stem>.npy, to be scored by "
                          "'wsolkit evaluate DATASET --maps DIR'")


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``wsolkit segment`` and ``wsolkit instances`` (they share the GrabCut options)."""
    add_segment_parser(commands)
    add_instances_parser(commands)


def add_segment_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``wsolkit segment``."""
    run = add_command(
        commands, "segment", run_segment,
        help="foreground masks of whole images (heatmap-seeded GrabCut)",
    )
    run.add_argument("paths", nargs="*", help="image files, folders or glob patterns")
    run.add_argument("--manifest", type=Path, default=None,
                     help="file listing image paths, one per line or JSON lines with "
                          "\"image\" (instead of or beside PATHS)")
    run.add_argument("--out", required=True, type=Path,
                     help="output folder: rows-NNNNNN.jsonl (one row per image, masks as COCO "
                          "RLE) and results.json")
    run.add_argument("--target", default="top1",
                     help="class explained by class-specific methods: top1 or a class index")
    run.add_argument("--border", type=float, default=None,
                     help="sure-background frame along the image edges, fraction of the shorter "
                          "side (default: the measured default)")
    run.add_argument("--crf", action=argparse.BooleanOptionalAction, default=None,
                     help="refine the heatmap with the dense CRF before stratifying (default on; "
                          "needs pydensecrf2)")
    run.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    run.add_argument("--recursive", action="store_true", help="also search subfolders")
    run.add_argument("--preset", choices=["ours", "paper"], default="ours",
                     help="ours: the measured defaults; paper: MASON's own pipeline (full-size "
                          "image through the network, bicubic, 0..255, the paper's rule, "
                          "full-size GrabCut to convergence); options given explicitly "
                          "override either (docs/segmentation.md)")
    _add_common(run, "quantile")
    add_job_options(run, save_maps=False)
    run.add_argument("--jobs", type=int, default=None,
                     help="processes for the CRF and GrabCut (default: CPU cores - 1, at least "
                          "1; 1 runs them in the main process)")
    run.add_argument("--mask-files", action="store_true",
                     help="also write each mask as <stem>.mask.png (0/255), named in its row; "
                          "--overlays adds <stem>.segment.png")


def add_instances_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``wsolkit instances``."""
    run = add_command(
        commands, "instances", run_instances,
        help="instance masks from boxes (COCO JSON in, COCO JSON with RLE out)",
    )
    run.add_argument("images", type=Path,
                     help="folder of images, or a COCO annotation file (its 'images' name the "
                          "files; without --boxes its annotations are the boxes)")
    run.add_argument("--boxes", type=Path, default=None,
                     help="COCO detections (list of image_id, category_id, bbox, score) or a "
                          "COCO annotation file")
    run.add_argument("--out", required=True, type=Path, help="output COCO JSON file")
    run.add_argument("--context", type=float, default=None,
                     help="crop context around each box, fraction of its size")
    run.add_argument("--margin", type=float, default=None,
                     help="growth of each box for the region GrabCut may label foreground")
    run.add_argument("--prior-sigma", type=_sigma, default=_UNSET,
                     help="seed map = heatmap x Gaussian centred on the box with this 1/e "
                          "half-width (a fraction of the box size; std = it / sqrt(2)), or "
                          "'none' for the heatmap alone")
    run.add_argument("--heat-power", type=float, default=None,
                     help="exponent of the heatmap in the seed map (0: the box prior alone)")
    run.add_argument("--overlap", default="smaller_on_top", choices=["smaller_on_top", "none"],
                     help="overlapping masks: the smaller on top (default) or left overlapping")
    _add_common(run, "quantile")


def _settings_kwargs(args: argparse.Namespace, options: dict, default_rule: str) -> dict:
    """Keyword arguments of the settings class from the command line.

    Unset rule parameters keep the measured defaults when the rule is the command's default
    rule, and take the rule's own defaults (``STRATIFY_DEFAULTS``) for another rule.
    """
    kwargs = {"method": args.method, "layer": args.layer, "options": options}
    if args.iterations is not None:
        kwargs["iterations"] = args.iterations
    rule = default_rule if args.rule == _UNSET else args.rule
    kwargs["rule"] = rule
    for name in ("fg", "split", "bg"):
        value = getattr(args, name)
        if value != _UNSET:
            kwargs[name] = value
        elif rule != default_rule:
            kwargs[name] = "default"
    if args.max_side != _UNSET:  # None ('none') is full size, not "not given"
        kwargs["max_side"] = args.max_side
    return kwargs


def segment_settings(args: argparse.Namespace, options: dict) -> SegmentSettings:
    """The checked ``SegmentSettings`` of a ``wsolkit segment`` command line."""
    from wsolkit.apps.segment import SegmentSettings

    paper = getattr(args, "preset", "ours") == "paper"
    if paper:  # only what was given on the command line changes the preset
        kwargs = {"method": args.method, "layer": args.layer, "options": options}
        if args.iterations is not None:
            kwargs["iterations"] = args.iterations
        if args.rule != _UNSET:
            kwargs["rule"] = args.rule
        for name in ("fg", "split", "bg"):
            if getattr(args, name) != _UNSET:
                kwargs[name] = getattr(args, name)
        if args.max_side != _UNSET:
            kwargs["max_side"] = args.max_side
    else:
        kwargs = _settings_kwargs(args, options, SegmentSettings.rule)
        kwargs["batch_size"] = args.batch_size
    if args.crf is not None:
        kwargs["crf"] = args.crf
    if args.border is not None:
        kwargs["border"] = args.border
    settings = SegmentSettings.paper(**kwargs) if paper else SegmentSettings(**kwargs)
    settings.check()
    return settings


def instance_settings(args: argparse.Namespace, options: dict) -> InstanceSettings:
    """The checked ``InstanceSettings`` of a ``wsolkit instances`` command line."""
    from wsolkit.apps.instances import InstanceSettings

    kwargs = _settings_kwargs(args, options, InstanceSettings.rule)
    kwargs["overlap"] = args.overlap
    for name in ("context", "margin", "heat_power"):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    if args.prior_sigma != _UNSET:
        kwargs["prior_sigma"] = args.prior_sigma
    settings = InstanceSettings(**kwargs)
    settings.check()
    return settings


def run_segment(args: argparse.Namespace, options: dict | None = None) -> int:
    """Run ``wsolkit segment``; returns the exit code (1 when some images failed)."""
    from tqdm import tqdm

    from wsolkit.apps.engine import JobOptions, default_workers
    from wsolkit.data.atomic import check_out_dir
    from wsolkit.data.manifest import job_inputs
    from wsolkit.maps import get_method
    from wsolkit.models import load_model

    get_method(args.method)
    check_out_dir(args.out)
    options = parse_options(args.option) if options is None else options
    settings = segment_settings(args, options)
    check_minimums(("--workers", args.workers, 0), ("--jobs", args.jobs, 1),
                   ("--shard-size", args.shard_size, 1), ("--actors", args.actors, 1))
    job = JobOptions(workers=default_workers() if args.workers is None else args.workers,
                     shard_size=args.shard_size, overlays=overlays(args),
                     jobs=default_workers() if args.jobs is None else args.jobs,
                     mask_files=args.mask_files)
    files, problems = job_inputs(args.paths, args.manifest, args.recursive)
    if not files:
        for item, reason in problems:
            print(f"wsolkit: {item}: {reason}", file=sys.stderr)
        raise InputError("no image files found in " + " ".join(args.paths))
    model = load_model(args.model, weights=args.weights, device=device(args))
    settings.target = parse_target(args.target, model.class_names)
    with tqdm(total=len(files), unit="img", disable=args.quiet, file=sys.stderr) as bar:
        if args.engine == "ray":
            from wsolkit.apps.ray_engine import RayOptions, segment_files_ray

            if args.save_maps is not None:
                raise InputError("--engine ray saves no maps: use the local engine for "
                                 "--save-maps")
            report = segment_files_ray(model, files, args.out, settings, progress=bar.update,
                                       job=job, ray=RayOptions(address=args.address,
                                                               actors=args.actors,
                                                               actor_cpus=args.actor_cpus))
        else:
            from wsolkit.apps.segment_core import segment_files

            report = segment_files(model, files, args.out, settings, progress=bar.update,
                                   maps_dir=args.save_maps, job=job)
    failures = [f"{item}: {reason}" for item, reason in problems]
    failures += [message for _, message in report.failures]
    resumed = f" ({report.resumed} already done)" if report.resumed else ""
    print(f"wsolkit: {report.written - len(report.failures)} image(s) segmented "
          f"({args.method}, rule {settings.rule}){resumed}; rows in {args.out}/rows-*.jsonl, "
          f"summary in {args.out / 'results.json'}", file=sys.stderr)
    return report_failures(failures)


def run_instances(args: argparse.Namespace, options: dict | None = None) -> int:
    """Run ``wsolkit instances``; returns the exit code (1 when some images failed)."""
    from tqdm import tqdm

    from wsolkit.apps.instances import check_inputs, instances_from_json
    from wsolkit.maps import get_method
    from wsolkit.models import load_model

    get_method(args.method)
    options = parse_options(args.option) if options is None else options
    settings = instance_settings(args, options)
    if not args.images.exists():
        raise InputError(f"{args.images}: no such file or folder")
    if args.images.is_dir() and args.boxes is None:
        raise InputError(f"{args.images}: a folder of images needs --boxes DETECTIONS.json")
    total = check_inputs(args.images, args.boxes, args.out)
    model = load_model(args.model, weights=args.weights, device=device(args))
    with tqdm(total=total or None, unit="img", disable=args.quiet, file=sys.stderr) as bar:
        report = instances_from_json(model, args.images, args.boxes, args.out, settings,
                                     progress=bar.update, maps_dir=args.save_maps)
    print(f"wsolkit: {report.segmented} box(es) in {report.images} image(s) segmented; "
          f"{report.crowd} crowd annotation(s) skipped; wrote {args.out}", file=sys.stderr)
    for entry, reason in report.skipped:
        print(f"wsolkit: skipped {entry}: {reason}", file=sys.stderr)
    return report_failures([message for _, message in report.failures], "image(s) failed")
