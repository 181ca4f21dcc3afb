"""Atomic file writes: a reader never sees a partial output file."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from wsolkit.errors import InputError


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then ``os.replace`` it.

    Raises:
        InputError: naming ``path`` if its folder is missing or the write fails.
    """
    target = Path(path)
    if not target.parent.is_dir():
        raise InputError(f"cannot write {target}: directory {target.parent} does not exist")
    temp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
    try:
        descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except OSError as error:
        temp.unlink(missing_ok=True)
        raise InputError(f"cannot write {target}: {error.strerror or error}") from None


def write_json_atomic(path: str | os.PathLike[str], data: object) -> None:
    """Write ``data`` as indented UTF-8 JSON, atomically (see :func:`write_bytes_atomic`)."""
    write_bytes_atomic(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))
