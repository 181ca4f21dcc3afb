"""Writing job outputs atomically and naming them without clobbering inputs."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from wsolkit.errors import InputError


def write_json(path: Path, data: object) -> None:
    """Write ``data`` as indented JSON via a temporary file and ``os.replace``.

    Raises:
        InputError: if the file cannot be written.
    """
    temp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        with open(temp, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except OSError as error:
        temp.unlink(missing_ok=True)
        raise InputError(f"cannot write {path}: {error.strerror or error}") from None


class OutputNamer:
    """Unique output file names in one folder that never equal an input file."""

    def __init__(self, out_dir: Path, inputs: list[Path]) -> None:
        self.out_dir = out_dir
        self.taken = {os.path.realpath(p) for p in inputs}

    def name(self, stem: str, suffix: str) -> Path:
        """``<out>/<stem><suffix>``, with ``-2``, ``-3``... appended when already used."""
        candidate, count = self.out_dir / f"{stem}{suffix}", 1
        while os.path.realpath(candidate) in self.taken:
            count += 1
            candidate = self.out_dir / f"{stem}-{count}{suffix}"
        self.taken.add(os.path.realpath(candidate))
        return candidate
