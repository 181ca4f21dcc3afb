"""What the ``wsolkit`` commands share: exit codes, common arguments, parsing and reporting.

Each command is a module with ``add_parser(commands)``, which registers it with
:func:`add_command` (its run function set by ``set_defaults``); the arguments several commands
take (``--model``, ``--weights``, ``--layer``, ``--method``, ``--option``, ``--quiet``,
``--device``) are added here, once.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from wsolkit.errors import InputError, TargetError

if TYPE_CHECKING:
    import torch

EXIT_OK, EXIT_BAD_ITEMS, EXIT_USAGE = 0, 1, 2
"""Exit codes: done; done but some items failed (listed); bad command line or input."""

MODEL_HELP = "efficientnet_lite0 (embedded), torchvision:ARCH, timm:NAME or .pt file"
OPTION_HELP = "method option, e.g. max_channels=128 for scorecam (repeatable)"


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

    return resolve_device(args.device)


def add_job_options(parser: argparse.ArgumentParser, save_maps: bool = True) -> None:
    """Options of jobs over many files: workers, shards, overlays, engine (docs/scale.md).

    ``save_maps=False`` leaves ``--save-maps`` to the command (``segment``'s takes a folder).
    """
    job = parser.add_argument_group("large jobs (docs/scale.md)")
    add_workers_option(job)
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
    add_engine_options(job, "local (this machine) or ray (Ray Data; pip install "
                            "'wsolkit[ray]')")


def add_workers_option(group: argparse._ActionsContainer) -> None:
    """``--workers``: the decoding worker processes of a job (docs/scale.md)."""
    group.add_argument("--workers", type=int, default=None,
                       help="decoding worker processes (default: CPU cores - 1, at least 1; "
                            "0 decodes in the main process)")


def add_engine_options(group: argparse._ActionsContainer, engine_help: str) -> None:
    """``--engine``, ``--address``, ``--actors``, ``--actor-cpus`` (docs/scale.md)."""
    group.add_argument("--engine", choices=["local", "ray"], default="local", help=engine_help)
    group.add_argument("--address", default=None,
                       help="with --engine ray: cluster address (auto: the running cluster; "
                            "default: start Ray locally)")
    group.add_argument("--actors", type=int, default=1,
                       help="with --engine ray: model actors (default 1)")
    group.add_argument("--actor-cpus", type=float, default=None,
                       help="with --engine ray: CPUs reserved per actor (default: 1 on "
                            "machines with more than 4 cores, else 0.5)")


def check_minimums(*checks: tuple[str, int | None, int]) -> None:
    """Raise a one-line :class:`InputError` at the first given value under its least.

    Each check is ``(flag, value, least)``; a value of None (not given) passes.
    """
    for flag, value, least in checks:
        if value is not None and value < least:
            raise InputError(f"{flag} {value}: must be at least {least}")


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


def add_command(commands: argparse._SubParsersAction, name: str,
                run: Callable[[argparse.Namespace], int],
                renamed: dict[str, str] | None = None, **kwargs: object) -> argparse.ArgumentParser:
    """Register subcommand ``name``; ``main`` calls ``run(args)`` for its exit code.

    Args:
        commands: the ``wsolkit`` parser's subparsers.
        name: the command.
        run: the function running it.
        renamed: library parameter names whose flag is not ``--`` + the name with dashes
            (e.g. ``{"fraction": "--tighten-fraction"}``), for :func:`flag_message`.
        **kwargs: ``help``, ``description`` of the subparser.
    """
    parser = commands.add_parser(name, **kwargs)
    parser.set_defaults(run=run, flags=renamed or {}, command_parser=parser)
    return parser


def add_common(parser: argparse.ArgumentParser, *, method: str | None = None,
               method_help: str | None = None, model_help: str = MODEL_HELP,
               layer: bool = False, option: str | None = None, device: bool = True,
               quiet: bool = True) -> None:
    """Add the arguments several commands share.

    Args:
        parser: the command's parser.
        method: default of ``--method`` (None: no ``--method``).
        method_help: its help (default: "heatmap method (default METHOD; see 'wsolkit
            methods')").
        model_help: help of ``--model`` (``--weights`` always comes with it).
        layer: add ``--layer``.
        option: help of ``--option KEY=VALUE`` (None: no ``--option``).
        device: add ``--device``.
        quiet: add ``--quiet``.
    """
    if device:
        add_device_option(parser)
    if method is not None:
        parser.add_argument("--method", default=method, help=method_help or
                            f"heatmap method (default {method}; see 'wsolkit methods')")
    parser.add_argument("--model", default="efficientnet_lite0", help=model_help)
    parser.add_argument("--weights", default=None,
                        help="state dict for torchvision:/timm: models")
    if layer:
        parser.add_argument("--layer", default=None, help="layer to hook, by module name")
    if option is not None:
        parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                            help=option)
    if quiet:
        parser.add_argument("--quiet", action="store_true", help="no progress bar")


def add_training(parser: argparse.ArgumentParser, *, seed: int | None, seed_help: str,
                 resume_help: str) -> None:
    """``--seed``, ``--limit``, ``--resume`` and ``--threads`` of the training commands."""
    parser.add_argument("--seed", type=int, default=seed, help=seed_help)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images")
    parser.add_argument("--resume", action="store_true", help=resume_help)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")


def image_files(paths: Sequence[str], recursive: bool,
                extra: Sequence[Path] = ()) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files of PATHS (files, folders, globs), then those of ``extra`` not among them.

    Returns:
        The files and the ``(item, reason)`` of each item of PATHS that gave none.

    Raises:
        InputError: no image file at all (the problems are printed first).
    """
    from wsolkit.data.images import expand_paths

    files, problems = expand_paths(paths, recursive=recursive) if paths else ([], [])
    seen = {str(p) for p in files}
    files += [p for p in extra if str(p) not in seen]
    if not files:
        for item, reason in problems:
            print(f"wsolkit: {item}: {reason}", file=sys.stderr)
        raise InputError("no image files found in " + " ".join(paths))
    return files, problems


def report_failures(messages: Sequence[str], what: str = "item(s) failed") -> int:
    """Print ``N <what>:`` and the messages; the exit code (1 if there are any, else 0)."""
    if not messages:
        return EXIT_OK
    print(f"wsolkit: {len(messages)} {what}:", file=sys.stderr)
    for message in messages:
        print(f"  {message}", file=sys.stderr)
    return EXIT_BAD_ITEMS


# ``name=value`` of a library message; not ``option key=value`` (a method's own option).
_PARAMETER = re.compile(r"(?<![\w.\-='])(?<!option )([a-z][a-z0-9_]*)="
                        r"('[^'\s]*'|\S*?)(?=[\s,;:)]|$)")
# a message that starts with a parameter's name: ``epochs must be >= 1``, ``val: ...``
_LEADING = re.compile(r"^([a-z][a-z0-9_]*)(?=[\s:])")


def flag_message(message: str, parser: argparse.ArgumentParser | None,
                 renamed: dict[str, str] | None = None) -> str:
    """A library message in the command line's words: ``name=value`` becomes ``--flag value``.

    The library names its parameters (``batch_size=0: must be at least 1``, ``epochs must be
    >= 1``); a parameter that is an argument of the command's parser (``--batch-size``, a
    positional ``OUT``, or what ``renamed`` maps it to) is written as the command line writes
    it, with its value unquoted (``True`` of an on/off flag is just the flag). Anything else (a
    method's ``option key=value``, a parameter the command has no flag for) is left as it is.

    >>> parser = argparse.ArgumentParser()
    >>> _ = parser.add_argument("--batch-size", type=int)
    >>> _ = parser.add_argument("--resume", action="store_true")
    >>> flag_message("batch_size=0: must be at least 1", parser)
    '--batch-size 0: must be at least 1'
    >>> flag_message("resume=True: ckpt.pt not found", parser)
    '--resume: ckpt.pt not found'
    >>> flag_message("batch_size must be >= 1; option samples='x' of scorecam", parser)
    "--batch-size must be >= 1; option samples='x' of scorecam"
    """
    if parser is None:
        return message
    flags: dict[str, tuple[str, bool]] = {}  # dest -> (flag, on/off switch)
    negated: dict[str, str] = {}  # dest -> --no-X of a switch that has one
    for action in parser._actions:
        long = [s for s in action.option_strings if s.startswith("--")]
        if long:
            flags[action.dest] = (long[0], action.nargs == 0)
            negated.update((action.dest, s) for s in long[1:] if s.startswith("--no-"))
        elif not action.option_strings and action.dest != "help":
            flags[action.dest] = (action.dest.upper(), False)
    for name, flag in (renamed or {}).items():
        flags[name] = (flag, flag.startswith("--no-"))

    def swap(match: re.Match) -> str:
        name, value = match.group(1), match.group(2)
        if name not in flags:
            return match.group(0)
        flag, switch = flags[name]
        if switch and value in ("True", ""):
            return flag
        if switch and value == "False" and name in negated:
            return negated[name]
        if len(value) > 1 and value[0] == value[-1] == "'":
            value = value[1:-1]
        return f"{flag} {value}" if value else flag

    message = _PARAMETER.sub(swap, message)
    leading = _LEADING.match(message)
    flag = flags.get(leading.group(1), ("", False))[0] if leading else ""
    if flag.startswith("--"):  # positionals only as ``name=value``: "images must be ..." stays
        message = flag + message[leading.end():]
    return message
