"""``wsolkit finetune``: train adaptation layers on a dataset's image-level labels."""

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
    """Add the ``finetune`` subcommand to the ``wsolkit`` parser."""
    run = add_command(
        commands, "finetune", run_finetune,
        help="fine-tune the classifier on a dataset's labels with two adaptation layers",
        description="Replace the classifier's last layer with two adaptation layers and train "
                    "them (multi-label BCE by default, or --preset paper: Bency et al.'s SGD, "
                    "step schedule, batch 50 and softmax output; class-balanced oversampling, "
                    "noise/rotation/flip augmentation). Writes model.pt (for --model), "
                    "checkpoint.pt and metrics.json (validation mAP before and after) to --out.",
    )
    run.add_argument("dataset", type=Path,
                     help="wsolevaluation metadata folder, images+masks folder with labels.csv, "
                          "COCO JSON or VOC folder (format detected)")
    run.add_argument("--out", required=True, type=Path, help="output folder")
    add_common(run, model_help="classifier to start from: efficientnet_lite0 (embedded), "
                               "torchvision:ARCH, timm:NAME or .pt file")
    run.add_argument("--epochs", type=int, default=10, help="passes over the training images "
                     "(total, also with --resume; default 10)")
    run.add_argument("--preset", choices=["default", "paper"], default="default",
                     help="paper: Bency et al.'s settings (SGD, --head-lr 1e-3 divided by 10 "
                          "every 20000 batches, --batch-size 50, softmax output); options "
                          "given explicitly override the preset")
    run.add_argument("--batch-size", type=int, default=None,
                     help="images per step (default 16; paper preset 50)")
    run.add_argument("--lr", type=float, default=1e-4,
                     help="learning rate of the pretrained layers; 0 freezes them "
                          "(default 1e-4)")
    run.add_argument("--head-lr", type=float, default=None,
                     help="learning rate of the new adaptation layers (default 1e-3)")
    run.add_argument("--hidden", type=int, default=512,
                     help="width of the hidden adaptation layer; 0: one linear layer, which "
                          "keeps CAM usable (default 512)")
    run.add_argument("--dropout", type=float, default=0.5,
                     help="dropout after the hidden layer (default 0.5)")
    run.add_argument("--optimizer", choices=["adam", "sgd"], default=None,
                     help="AdamW or SGD with momentum 0.9 (default adam; paper preset sgd)")
    run.add_argument("--lr-step", type=int, default=None,
                     help="divide the learning rates by 10 every N batches; 0: constant "
                          "(default 0; paper preset 20000)")
    run.add_argument("--output", choices=["sigmoid", "softmax"], default=None,
                     help="output layer: sigmoid (multi-label BCE, default) or softmax (the "
                          "paper's; eq. 1 on softmax probabilities)")
    run.add_argument("--train-layers", default=None, metavar="NAMES",
                     help="with --lr > 0, train only these comma-separated backbone modules "
                          "(e.g. features.stage7,features.head); default: all")
    run.add_argument("--val-fraction", type=float, default=0.2,
                     help="fraction of the images held out for validation (default 0.2)")
    run.add_argument("--balance", type=float, default=0.5,
                     help="class-balanced oversampling exponent: 0 off, 1 equal counts "
                          "(default 0.5)")
    run.add_argument("--max-repeat", type=float, default=3.0,
                     help="largest oversampling factor of an image (default 3)")
    add_training(run, seed=0,
                 seed_help="seed of the split, initialization, sampling and augmentation",
                 resume_help="continue from OUT/checkpoint.pt (same settings; --epochs may grow)")


def run_finetune(args: argparse.Namespace) -> int:
    """Run ``wsolkit finetune``; returns the exit code."""
    from wsolkit.data import open_dataset
    from wsolkit.data.atomic import check_out_dir
    from wsolkit.models import load_model
    from wsolkit.train import FinetuneSettings, finetune

    set_threads(args.threads)
    layers = names(args.train_layers)
    given = {key: getattr(args, key)
             for key in ("batch_size", "head_lr", "optimizer", "lr_step", "output")
             if getattr(args, key) is not None}
    make = FinetuneSettings.paper if args.preset == "paper" else FinetuneSettings
    settings = make(
        epochs=args.epochs, lr=args.lr, hidden=args.hidden, dropout=args.dropout,
        val_fraction=args.val_fraction, seed=args.seed, balance=args.balance,
        max_repeat=args.max_repeat, train_layers=layers, limit=args.limit, **given,
    )
    settings.check()  # fail on a bad value before loading anything
    check_out_dir(args.out)
    dataset = open_dataset(args.dataset)
    model = load_model(args.model, weights=args.weights, device=device(args))

    def log(line: str) -> None:
        print(f"wsolkit: {line}", file=sys.stderr)

    metrics = finetune(model, dataset, args.out, settings, resume=args.resume,
                       quiet=args.quiet, log=log)
    before, after = metrics["val_map_before"], metrics["val_map_after"]
    summary = ("no validation images" if after is None else
               f"val mAP {100 * before:.1f}% -> {100 * after:.1f}% over "
               f"{metrics['val_classes_evaluated']} classes")
    print(f"wsolkit: fine-tuned on {metrics['train_images']} images ({summary}); model in "
          f"{args.out / metrics['model_file']}, metrics in {args.out / 'metrics.json'}",
          file=sys.stderr)
    return report_failures(metrics["failures"], "image(s) could not be read and were left out")
