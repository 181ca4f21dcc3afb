"""``wsolkit mosaics``: a multi-object COCO set tiled from a single-object classification set."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wsolkit.cli.options import add_command, report_failures
from wsolkit.errors import InputError


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``mosaics`` subcommand to the ``wsolkit`` parser."""
    run = add_command(
        commands, "mosaics", run_mosaics,
        help="tile images of distinct classes into grid mosaics with a COCO file",
        description="Tile images of distinct classes of a wsolevaluation-format set into "
                    "GRIDxGRID mosaics; writes OUT/images/*.jpg and OUT/instances.json (every "
                    "GT box shifted into the mosaic, all classes as categories ids 1..C; a "
                    "source image without boxes gives an iscrowd region over its tile, an "
                    "image-level label never scored as a box). See docs/mosaics.md.",
    )
    run.add_argument("source", type=Path, help="wsolevaluation metadata folder (one label per "
                     "image, class_names.txt)")
    run.add_argument("out", type=Path, help="output folder")
    run.add_argument("--grid", type=int, default=2, help="tiles per side (default 2)")
    run.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    run.add_argument("--repeats", type=int, default=1,
                     help="draws; each uses every source image at most once (default 1)")
    run.add_argument("--tile", type=int, default=224, help="tile side in pixels (default 224)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")


def run_mosaics(args: argparse.Namespace) -> int:
    """Run ``wsolkit mosaics``; returns the exit code."""
    from tqdm import tqdm

    from wsolkit.apps.mosaics import build_mosaics
    from wsolkit.data import open_dataset
    from wsolkit.data.atomic import check_out_dir

    for flag, value, low in (("--grid", args.grid, 1), ("--tile", args.tile, 8),
                             ("--repeats", args.repeats, 1), ("--seed", args.seed, 0)):
        if value < low:
            raise InputError(f"{flag} {value}: must be at least {low}")
    check_out_dir(args.out, "OUT")
    dataset = open_dataset(args.source)
    with tqdm(unit="mosaic", disable=args.quiet, file=sys.stderr) as bar:
        report = build_mosaics(dataset, args.out, grid=args.grid, seed=args.seed,
                               repeats=args.repeats, tile=args.tile, progress=bar.update)
    print(f"wsolkit: {report.images} mosaic(s), {report.annotations} annotation(s), "
          f"{report.unused} source image(s) unused; written to {report.annotation_file}",
          file=sys.stderr)
    return report_failures([message for _item, message in report.failures],
                           "mosaic(s) skipped")
