"""Checks of command-line options that several commands share."""

from __future__ import annotations

from wsolkit.errors import InputError


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
