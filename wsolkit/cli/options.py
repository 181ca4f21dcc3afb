"""Checks of command-line options that several commands share."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING

from wsolkit.errors import InputError, TargetError

if TYPE_CHECKING:
    import torch


def check_limit(limit: int | None) -> None:
    """Reject ``--limit`` below 1 (None: no limit)."""
    if limit is not None and limit < 1:
        raise InputError(f"--limit {limit}: must be at least 1")


def names(text: str | None) -> tuple[str, ...]:
    """Comma-separated names (layers) of an option, blanks dropped; None gives none."""
    return tuple(name.strip() for name in (text or "").split(",") if name.strip())


def set_threads(threads: int | None) -> None:
    """Give torch ``--threads`` intra-op threads (None: leave torch's default)."""
    if threads is None:
        return
    if threads < 1:
        raise InputError(f"--threads must be >= 1; got {threads}")
    import torch

    torch.set_num_threads(threads)


def add_device_option(parser: argparse.ArgumentParser) -> None:
    """``--device`` (default auto: CUDA when available, else the CPU)."""
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA when available, else CPU), cpu, cuda, cuda:N or mps "
                             "(default auto)")


def device(args: argparse.Namespace) -> torch.device:
    """The checked ``--device`` of parsed arguments."""
    from wsolkit.models.device import resolve_device

    return resolve_device(args.device, "--device")


def add_job_options(parser: argparse.ArgumentParser, save_maps: bool = True) -> None:
    """Options of jobs over many files: workers, shards, overlays, engine (docs/scale.md).

    ``save_maps=False`` leaves ``--save-maps`` to the command (``segment``'s takes a folder).
    """
    job = parser.add_argument_group("large jobs (docs/scale.md)")
    job.add_argument("--workers", type=int, default=None,
                     help="decoding worker processes (default: CPU cores - 1, at least 1; "
                          "0 decodes in the main process)")
    job.add_argument("--shard-size", type=int, default=1000,
                     help="rows per output shard rows-NNNNNN.jsonl (default 1000)")
    shown = job.add_mutually_exclusive_group()
    shown.add_argument("--overlays", action="store_true",
                       help="draw an overlay PNG for every image (off by default)")
    shown.add_argument("--overlay-sample", type=int, default=None, metavar="N",
                       help="draw overlays for N images spread evenly over the inputs")
    if save_maps:
        job.add_argument("--save-maps", action="store_true",
                         help="write each image's heatmap (model input size, float16) as "
                              "<stem>.<method>.npy, named in its row")
    job.add_argument("--engine", choices=["local", "ray"], default="local",
                     help="local (this machine) or ray (Ray Data; pip install 'wsolkit[ray]')")
    job.add_argument("--address", default=None,
                     help="with --engine ray: cluster address (auto: the running cluster; "
                          "default: start Ray locally)")
    job.add_argument("--actors", type=int, default=1,
                     help="with --engine ray: model actors (default 1)")
    job.add_argument("--actor-cpus", type=float, default=None,
                     help="with --engine ray: CPUs reserved per actor (default: 1 on machines "
                          "with more than 4 cores, else 0.5)")


def overlays(args: argparse.Namespace) -> str | int:
    """``--overlays`` / ``--overlay-sample N`` as :class:`wsolkit.apps.JobOptions` wants it."""
    if args.overlays:
        return "all"
    if args.overlay_sample is None:
        return "none"
    if args.overlay_sample < 0:
        raise InputError(f"--overlay-sample {args.overlay_sample}: must be at least 0")
    return args.overlay_sample


def parse_target(text: str, class_names: Sequence[str] | None) -> str | int:
    """``--target``: ``top1``/``topK``, a class index or a class name (``gt`` is refused)."""
    if text.startswith("top") or text == "gt":
        if text == "gt":
            raise TargetError("--target gt needs ground-truth labels; use top1, topK or a class")
        return text
    if text.lstrip("-").isdigit():
        return int(text)
    names = [name.lower() for name in class_names or []]
    if text.lower() in names:
        return names.index(text.lower())
    raise TargetError(f"--target {text!r}: not top1/topK, a class index or a class name")


def parse_options(items: Sequence[str]) -> dict:
    """``--option KEY=VALUE`` items as a dict (numbers, none/true/false converted)."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--option {item!r}: expected KEY=VALUE")
        if key in ("layer", "model"):
            raise InputError(f"--option {item!r}: use --{key} instead")
        options[key] = _literal(value)
    return options


def _literal(value: str) -> object:
    for convert in (int, float):
        try:
            return convert(value)
        except ValueError:
            pass
    return {"none": None, "true": True, "false": False}.get(value.lower(), value)
