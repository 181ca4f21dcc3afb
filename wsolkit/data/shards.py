"""JSON Lines output in shards written atomically, for jobs that resume after interruption.

A job writes its rows (one JSON object per image) into ``<folder>/<prefix>-NNNNNN.jsonl``
files. Each shard is written whole to a temporary file and renamed into place, so a reader (or
a resumed run) sees complete shards only: an interrupted job loses at most the rows not yet
flushed, never leaves a half line, and never writes a row twice when it resumes.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

from wsolkit.data.atomic import write_bytes_atomic
from wsolkit.errors import InputError


class ShardWriter:
    """Buffer rows and write them as numbered, atomically written JSON Lines shards.

    Args:
        folder: existing output folder.
        key: the row field that identifies an item (``"image"``); resumed runs skip items
            whose key is already in a shard.
        prefix: shard file prefix (``rows`` gives ``rows-000000.jsonl``).
        shard_size: rows per shard; a shard is written as soon as it is full.
    """

    def __init__(self, folder: Path, key: str = "image", prefix: str = "rows",
                 shard_size: int = 1000) -> None:
        if shard_size < 1:
            raise InputError(f"shard_size={shard_size}: must be at least 1")
        self.folder, self.key, self.prefix, self.shard_size = Path(folder), key, prefix, shard_size
        self._buffer: list[str] = []
        self.done: set[str] = set()
        self.counts: dict[str, int] = {}
        self._next = 0
        for index, path in list_shards(self.folder, prefix):
            self._next = max(self._next, index + 1)
            for number, row in enumerate(read_rows(path), start=1):
                if self.key not in row:
                    raise InputError(f"{path}:{number}: row without {self.key!r}")
                self.done.add(str(row[self.key]))
                status = str(row.get("status", "ok"))
                self.counts[status] = self.counts.get(status, 0) + 1
        self._remove_stale_temporaries()

    def add(self, row: dict) -> None:
        """Queue one row; writes a shard when ``shard_size`` rows are queued."""
        self._buffer.append(json.dumps(row, separators=(",", ":")))
        self.done.add(str(row[self.key]))
        status = str(row.get("status", "ok"))
        self.counts[status] = self.counts.get(status, 0) + 1
        if len(self._buffer) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the queued rows (if any) as the next shard, atomically."""
        if not self._buffer:
            return
        path = self.folder / f"{self.prefix}-{self._next:06d}.jsonl"
        write_bytes_atomic(path, ("\n".join(self._buffer) + "\n").encode("utf-8"))
        self._next += 1
        self._buffer = []

    def _remove_stale_temporaries(self) -> None:
        # write_bytes_atomic's temporaries of a killed run: ".<shard name>.<hex>.tmp"
        for path in self.folder.glob(f".{self.prefix}-*.jsonl.*.tmp"):
            path.unlink(missing_ok=True)


def list_shards(folder: str | os.PathLike[str], prefix: str = "rows") -> list[tuple[int, Path]]:
    """``(index, path)`` of the complete shards in ``folder``, in index order."""
    pattern = re.compile(rf"{re.escape(prefix)}-(\d{{6,}})\.jsonl")
    found = []
    for path in Path(folder).iterdir():
        match = pattern.fullmatch(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def read_rows(path: str | os.PathLike[str]) -> Iterator[dict]:
    """The rows of one JSON Lines file.

    Raises:
        InputError: ``<file>:<line>: ...`` for a line that is not a JSON object.
    """
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise InputError(f"{path}:{number}: not a JSON line ({error.msg})") from None
            if not isinstance(row, dict):
                raise InputError(f"{path}:{number}: not a JSON object")
            yield row


def read_shards(folder: str | os.PathLike[str], prefix: str = "rows") -> Iterator[dict]:
    """Every row of a job's shards, shard by shard."""
    for _index, path in list_shards(folder, prefix):
        yield from read_rows(path)
