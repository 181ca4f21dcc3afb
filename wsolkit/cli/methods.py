"""``wsolkit methods``: list the registered heatmap methods."""

from __future__ import annotations

import argparse

from wsolkit.cli.options import EXIT_OK, add_command


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``wsolkit methods``."""
    add_command(commands, "methods", run_methods, help="list the heatmap methods")


def run_methods(args: argparse.Namespace) -> int:
    """Print each method's name and summary."""
    from wsolkit.maps import METHODS

    width = max(len(name) for name in METHODS)
    for name, method in METHODS.items():
        print(f"{name:<{width}}  {method.summary}")
    return EXIT_OK
