"""Reading a manifest: the list of image files of a large job, one per line."""

from __future__ import annotations

import json
import os
from pathlib import Path

from wsolkit.errors import InputError


def read_manifest(path: str | os.PathLike[str]) -> list[Path]:
    """Image paths listed in a manifest file, in order, each once.

    A line is a path, or a JSON object with an ``"image"`` path (JSON Lines, e.g. the rows of
    another job); blank lines and lines starting with ``#`` are skipped. Relative paths are
    relative to the manifest's folder. Listed files are not opened here: a missing or bad
    file becomes a failed row of the job, not an error of the manifest.

    Raises:
        InputError: the manifest cannot be read, or ``<file>:<line>: ...`` for a line that
            starts a JSON object but is not valid JSON or has no string ``"image"``.
    """
    manifest = Path(path)
    try:
        text = manifest.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"manifest={manifest}: cannot read ({error})") from None
    found: dict[str, Path] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        if item.startswith("{"):
            try:
                row = json.loads(item)
            except json.JSONDecodeError as error:
                raise InputError(f"{manifest}:{number}: not a JSON line ({error.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("image"), str):
                raise InputError(f"{manifest}:{number}: JSON line without an \"image\" path")
            item = row["image"]
        file = Path(item)
        if not file.is_absolute():
            file = manifest.parent / file
        found.setdefault(str(file), file)
    if not found:
        raise InputError(f"manifest={manifest}: lists no image files")
    return list(found.values())


def job_inputs(paths: list[str], manifest: str | os.PathLike[str] | None, recursive: bool = False
               ) -> tuple[list[Path], list[tuple[str, str]]]:
    """The image files of a job: expanded ``paths``, then the manifest's files not among them.

    Returns:
        ``(files, problems)``: problems are ``(item, reason)`` of paths that matched nothing.

    Raises:
        InputError: neither paths nor a manifest, or no file at all (problems printed first
            by the caller).
    """
    from wsolkit.data.images import expand_paths

    if not paths and manifest is None:
        raise InputError("give image PATHS or --manifest FILE")
    files, problems = expand_paths(paths, recursive=recursive) if paths else ([], [])
    if manifest is not None:
        seen = {str(p) for p in files}
        files += [p for p in read_manifest(manifest) if str(p) not in seen]
    return files, problems
