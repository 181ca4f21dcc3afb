"""Atomic file writes: a reader never sees a partial output file."""

from __future__ import annotations

import io
import json
import os
import secrets
from pathlib import Path

import numpy as np

from wsolkit.errors import InputError


def check_out_dir(path: str | os.PathLike[str], option: str = "out") -> Path:
    """Check that ``path`` is, or can become, a folder; create nothing.

    Raises:
        InputError: naming ``option`` and ``path`` if it, or a parent of it, is an existing
            file (so that no output could be written there).
    """
    folder = Path(path)
    for parent in (folder, *folder.parents):
        if parent.is_dir():
            break
        if parent == folder and parent.exists():
            raise InputError(f"{option}={folder}: exists and is not a folder")
        if parent.exists():
            raise InputError(f"{option}={folder}: cannot be a folder ({parent} is a file)")
    return folder


def make_out_dir(path: str | os.PathLike[str], option: str = "out") -> Path:
    """Create the output folder ``path`` (and its parents) if missing; return it.

    Raises:
        InputError: one line naming ``option`` and ``path`` if it cannot be a folder or cannot
            be created.
    """
    folder = check_out_dir(path, option)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"{option}={folder}: cannot create folder "
                         f"({error.strerror or error})") from None
    return folder


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


def write_npy_atomic(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """``np.save`` ``array`` (no pickles) atomically (see :func:`write_bytes_atomic`)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    write_bytes_atomic(path, buffer.getvalue())


def write_torch_atomic(path: str | os.PathLike[str], data: object) -> bytes:
    """``torch.save`` ``data`` atomically (see :func:`write_bytes_atomic`); returns the bytes."""
    import torch  # the readers in wsolkit.data need no torch

    buffer = io.BytesIO()
    torch.save(data, buffer)
    payload = buffer.getvalue()
    write_bytes_atomic(path, payload)
    return payload
