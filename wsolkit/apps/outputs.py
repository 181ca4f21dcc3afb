"""Naming job outputs so that they never clobber inputs or each other."""

from __future__ import annotations

import os
from pathlib import Path


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
