"""``wsolkit proposals``: class-agnostic object proposals from heatmap blobs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wsolkit.cli.options import (
    add_command,
    add_common,
    check_limit,
    device,
    image_files,
    report_failures,
)
from wsolkit.data.atomic import check_out_dir
from wsolkit.errors import InputError

SELECTIVE_SEARCH = "selective-search"


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``wsolkit proposals``."""
    run = add_command(
        commands, "proposals", run_proposals,
        help="class-agnostic object proposals from heatmap blobs (recall on GT)",
    )
    run.add_argument("paths", nargs="*", help="image files, folders or glob patterns")
    run.add_argument("--dataset", type=Path, default=None,
                     help="instead of PATHS: a dataset with GT boxes (COCO JSON, VOC, "
                          "wsolevaluation folder); prints recall at IoU 0.5/0.7/0.9")
    run.add_argument("--out", type=Path, required=True, help="output folder (proposals.json)")
    run.add_argument("--top-k", type=int, default=100, help="proposals per image (default 100)")
    add_common(run, method="objectness", layer=True,
               method_help=f"heatmap method (default objectness), or '{SELECTIVE_SEARCH}' "
                           "(OpenCV, fast mode) as the baseline")
    run.add_argument("--limit", type=int, default=None, help="with --dataset: first N images")
    run.add_argument("--recursive", action="store_true", help="also search subfolders")


def run_proposals(args: argparse.Namespace) -> int:
    """Run ``wsolkit proposals``; returns the exit code (1 when some images failed)."""
    from tqdm import tqdm

    from wsolkit.apps.proposals import ProposalSettings, propose_files

    if args.top_k < 1:
        raise InputError(f"--top-k {args.top_k}: must be at least 1")
    check_limit(args.limit)
    if bool(args.paths) == (args.dataset is not None):
        raise InputError("give image PATHS or --dataset DATASET (one of the two)")
    check_out_dir(args.out)
    model = None
    if args.method != SELECTIVE_SEARCH:
        from wsolkit.maps import get_method
        from wsolkit.models import load_model

        get_method(args.method)
    problems: list[tuple[str, str]] = []
    samples = None
    if args.dataset is not None:
        from wsolkit.data import open_dataset

        dataset = open_dataset(args.dataset)
        samples = [dataset[i] for i in range(min(len(dataset), args.limit or len(dataset)))]
        if not samples:
            raise InputError(f"--dataset {args.dataset}: no annotated images")
        files = [sample.path for sample in samples]
    else:
        files, problems = image_files(args.paths, args.recursive)
    if args.method != SELECTIVE_SEARCH:
        model = load_model(args.model, weights=args.weights, device=device(args))
    settings = ProposalSettings(method=args.method, layer=args.layer, top_k=args.top_k) \
        if model is not None else None
    with tqdm(total=len(files), unit="img", disable=args.quiet, file=sys.stderr) as bar:
        report = propose_files(model, files, args.out, settings, top_k=args.top_k,
                               samples=samples, progress=bar.update)
    failures = [f"{item}: {reason}" for item, reason in problems] + report.failures
    print(f"wsolkit: proposals for {len(report.records)} image(s) in "
          f"{args.out / 'proposals.json'}", file=sys.stderr)
    if report.recall_table is not None:
        print(report.recall_table)
    return report_failures(failures)
