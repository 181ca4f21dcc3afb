"""``wsolkit train-fcam``: train an F-CAM decoder on a frozen classifier."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wsolkit.cli.options import (
    add_command,
    add_common,
    add_training,
    device,
    names,
    report_failures,
    set_threads,
)


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``train-fcam`` subcommand to the ``wsolkit`` parser."""
    from wsolkit.train.fcam import FCAMSettings

    ours, paper = FCAMSettings(), FCAMSettings.paper()
    run = add_command(
        commands, "train-fcam", run_train_fcam,
        help="train an F-CAM decoder (full-resolution CAMs) on a frozen classifier",
        description="Train the F-CAM decoder (Belharbi et al., WACV 2022) over the frozen "
                    "classifier's skip layers from pseudo-pixels of a seed CAM, the dense-CRF "
                    "loss and the ELB size constraint; keep the best epoch on --val. Use the "
                    "result with --method fcam --option decoder=OUT. See docs/fcam.md.",
    )
    run.add_argument("dataset", type=Path,
                     help="training images with image-level labels (model class indices), "
                          "e.g. a wsolevaluation metadata folder")
    run.add_argument("--out", required=True, type=Path, help="decoder file written (.pt)")
    run.add_argument("--cam", default=ours.cam,
                     help="registered method seeding the pseudo-pixels: cam, gradcampp, "
                          f"layercam, ... (default {ours.cam})")
    run.add_argument("--val", type=Path, default=None,
                     help="validation set with boxes (MaxBoxAccV2) or masks (PxAP) for "
                          "choosing the epoch; without it the last epoch is kept")
    run.add_argument("--preset", choices=["ours", "paper"], default="ours",
                     help="starting settings: ours (measured, docs/fcam.md) or the paper's; "
                          "the options below override them")
    add_common(run)
    run.add_argument("--skip-layers", default=None, metavar="NAMES",
                     help="comma-separated skip layers, shallow to deep (known for the "
                          "embedded model)")
    run.add_argument("--epochs", type=int, default=None,
                     help=f"passes over the training images (default {ours.epochs})")
    run.add_argument("--batch-size", type=int, default=None,
                     help=f"images per step (ours {ours.batch_size}, paper {paper.batch_size})")
    run.add_argument("--lr", type=float, default=None,
                     help=f"learning rate (ours {ours.lr}, paper {paper.lr})")
    run.add_argument("--optimizer", choices=["sgd", "adam"], default=None,
                     help=f"SGD with Nesterov momentum 0.9 or AdamW (ours {ours.optimizer}, "
                          f"paper {paper.optimizer})")
    run.add_argument("--n-fg", type=int, default=None, help="foreground pixels per image")
    run.add_argument("--n-bg", type=int, default=None, help="background pixels per image")
    run.add_argument("--k", type=int, default=None, help="side of each pseudo-pixel square")
    run.add_argument("--bg-fraction", type=float, default=None,
                     help="lowest fraction of the CAM that is background")
    run.add_argument("--crf", type=float, default=None,
                     help="dense-CRF loss weight (0: off; paper 2e-9)")
    run.add_argument("--crf-size", type=int, default=None,
                     help="side at which the dense CRF loss is computed exactly")
    run.add_argument("--size", type=float, default=None,
                     help="ELB size-constraint weight (0: off; paper 0.1)")
    run.add_argument("--views", type=int, default=None,
                     help="cached views per training image (random crops, each also flipped)")
    run.add_argument("--widths", default=None, metavar="W1,...",
                     help="decoder block widths, deep to shallow (one per skip layer)")
    run.add_argument("--reduce", type=int, default=None,
                     help="1x1 projection width of the deepest skip (0: none)")
    run.add_argument("--work", type=Path, default=None,
                     help="folder of the checkpoint and metrics.json (default OUT.work)")
    run.add_argument("--cache", type=Path, default=None,
                     help="folder of the feature caches, shareable between runs (default: "
                          "--work)")
    add_training(run, seed=None, seed_help="seed of everything random",
                 resume_help="continue from the checkpoint in --work (same settings; --epochs "
                             "may grow)")


_OVERRIDES = ("cam", "epochs", "batch_size", "lr", "optimizer", "n_fg", "n_bg", "k",
              "bg_fraction", "crf", "crf_size", "size", "views", "reduce", "seed", "limit")


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    from wsolkit.errors import InputError

    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InputError(f"{flag} {text!r}: expected comma-separated integers") from None


def run_train_fcam(args: argparse.Namespace) -> int:
    """Run ``wsolkit train-fcam``; returns the exit code."""
    from dataclasses import replace

    from wsolkit.data import open_dataset
    from wsolkit.maps.registry import get_method
    from wsolkit.models import load_model
    from wsolkit.train.fcam import FCAMSettings, train_fcam

    set_threads(args.threads)
    settings = FCAMSettings.paper() if args.preset == "paper" else FCAMSettings()
    changes = {name: getattr(args, name) for name in _OVERRIDES
               if getattr(args, name) is not None}
    if args.widths is not None:
        changes["widths"] = _int_list(args.widths, "--widths")
    if args.skip_layers is not None:
        changes["skip_layers"] = names(args.skip_layers)
    settings = replace(settings, **changes)
    settings.check()  # fail on a bad value before loading anything
    get_method(settings.cam)
    dataset = open_dataset(args.dataset)
    val = open_dataset(args.val) if args.val is not None else None
    model = load_model(args.model, weights=args.weights, device=device(args))

    def log(line: str) -> None:
        print(f"wsolkit: {line}", file=sys.stderr)

    metrics = train_fcam(model, dataset, args.out, settings, val=val, work=args.work,
                         cache=args.cache, resume=args.resume, quiet=args.quiet, log=log)
    best = ("" if metrics["best_val"] is None else
            f" (val {metrics['val_metric']} {metrics['best_val']:.2f})")
    print(f"wsolkit: decoder of epoch {metrics['best_epoch']}{best} in {args.out}; "
          f"{metrics['seconds_per_epoch']} s per epoch", file=sys.stderr)
    return report_failures(metrics["failures"], "image(s) were left out")
