"""``wsolkit train-head``: train a WILDCAT or ex-CAM head on a dataset's image-level labels."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wsolkit.cli.options import (
    add_command,
    add_common,
    add_training,
    device,
    report_failures,
    set_threads,
)


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``train-head`` subcommand to the ``wsolkit`` parser."""
    run = add_command(
        commands, "train-head", run_train_head,
        help="train a WILDCAT or ex-CAM head on a frozen backbone (for --method wildcat/excam)",
        description="Train a multi-map WILDCAT head (ex-CAM: with intra-class sequential "
                    "dropout) on the frozen backbone's cached features with multi-label BCE. "
                    "Writes the head to --out (use it as --option head=FILE), a checkpoint "
                    "(OUT stem + .ckpt.pt) and metrics (OUT stem + .json) beside it.",
    )
    run.add_argument("dataset", type=Path,
                     help="dataset with image-level labels: COCO JSON (e.g. mosaics' "
                          "instances.json), VOC folder, wsolevaluation folder (format detected)")
    run.add_argument("--head", choices=["wildcat", "excam"], default="wildcat",
                     help="head to train (default wildcat)")
    run.add_argument("--dropout", choices=["intent", "literal"], default="intent",
                     help="ex-CAM dropout: the described intent (default) or the thesis's "
                          "literal formulas")
    run.add_argument("--out", required=True, type=Path, help="head file to write (e.g. head.pt)")
    add_common(run, model_help="backbone: efficientnet_lite0 (embedded), torchvision:ARCH, "
                               "timm:NAME or .pt file")
    run.add_argument("--epochs", type=int, default=6, help="passes over the training images "
                     "(total, also with --resume; default 6)")
    run.add_argument("--batch-size", type=int, default=32, help="images per step (default 32)")
    run.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (default 1e-4)")
    run.add_argument("--maps", type=int, default=8, help="maps per class M (default 8)")
    run.add_argument("--kmax", type=float, default=0.2,
                     help="top positions pooled, a fraction if < 1 (default 0.2)")
    run.add_argument("--kmin", type=float, default=0.2,
                     help="bottom positions pooled, a fraction if < 1 (default 0.2)")
    run.add_argument("--alpha", type=float, default=0.6,
                     help="weight of the bottom mean (default 0.6, ex-CAM)")
    run.add_argument("--halve", action="store_true",
                     help="divide the pooled sum by 2 as WILDCAT's official code does")
    run.add_argument("--init", choices=["linear", "random"], default="linear",
                     help="start from the model's linear layer (default; needs one for the "
                          "dataset's classes) or at random")
    run.add_argument("--val-fraction", type=float, default=0.1,
                     help="fraction of the images held out for validation (default 0.1)")
    run.add_argument("--no-flip", action="store_true",
                     help="cache features of the images only, not of their flips")
    run.add_argument("--cache", type=Path, default=None,
                     help="file to store the backbone features in and reuse them from")
    add_training(run, seed=0, seed_help="seed of split, init and order",
                 resume_help="continue from the checkpoint beside --out (--epochs may grow)")


def run_train_head(args: argparse.Namespace) -> int:
    """Run ``wsolkit train-head``; returns the exit code (1 if some images could not be read)."""
    from wsolkit.data import open_dataset
    from wsolkit.models import load_model
    from wsolkit.train import HeadSettings, train_head

    set_threads(args.threads)
    settings = HeadSettings(
        head=args.head, dropout=args.dropout, maps=args.maps, kmax=args.kmax, kmin=args.kmin,
        alpha=args.alpha, halve=args.halve, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, init=args.init, flip=not args.no_flip, val_fraction=args.val_fraction,
        seed=args.seed, limit=args.limit,
    )
    settings.check()  # fail on a bad value before loading anything
    dataset = open_dataset(args.dataset)
    model = load_model(args.model, weights=args.weights, device=device(args))

    def log(line: str) -> None:
        print(f"wsolkit: {line}", file=sys.stderr)

    metrics = train_head(model, dataset, args.out, settings, resume=args.resume,
                         cache=args.cache, quiet=args.quiet, log=log)
    value = metrics["val_map"]
    summary = "no validation images" if value is None else f"val mAP {100 * value:.1f}%"
    print(f"wsolkit: {args.head} head trained on {metrics['train_images']} images ({summary}); "
          f"head in {args.out}", file=sys.stderr)
    return report_failures(metrics["failures"], "image(s) could not be read")
