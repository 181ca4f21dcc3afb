"""Reading image files and expanding command-line inputs into image paths.

`load_image` turns any common image file into an 8-bit RGB `PIL.Image.Image` and reports
every kind of bad file with a one-line `wsolkit.errors.ImageError` that starts with the path.
`expand_paths` turns files, folders and glob patterns into a sorted list of image files.
"""

from __future__ import annotations

import glob
import io
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from wsolkit.errors import ImageError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
)
"""Lower-case file extensions (with the dot) that folder and glob expansion treat as images."""

MIN_SIDE = 32
"""Smallest accepted image side, in pixels."""

MAX_SIDE = 8000
"""Largest accepted image side, in pixels."""

# Exceptions Pillow raises for broken headers or pixel data, besides OSError.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)
_GLOB_CHARS = frozenset("*?[")


def _one_line(exc: BaseException) -> str:
    """Return an exception's message squeezed onto one line."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Read an image file as an 8-bit RGB PIL image.

    The size is checked from the header before the pixels are decoded, then the whole file is
    decoded (so truncated files fail here, not later). EXIF orientation is applied. Grayscale,
    palette, alpha, CMYK, 1-bit, 16-bit and float images are converted to 8-bit RGB: alpha is
    dropped, 16-bit and 32-bit integer values are scaled from 0..65535 to 0..255, float values
    in [0, 1] are scaled to 0..255 and other float values are clipped to 0..255. Of an animated
    file (GIF, WebP, TIFF pages) the first frame is read. The file is only read, never
    modified.

    Args:
        path: Path of the image file.

    Returns:
        A new RGB image, independent of the file.

    Raises:
        ImageError: The file is missing, a folder, not an image, truncated or corrupt, or
            smaller than `MIN_SIDE` or larger than `MAX_SIDE` pixels on a side.
    """
    name = os.fspath(path)
    file = Path(name)
    if not file.exists():
        raise ImageError(f"{name}: file not found")
    if file.is_dir():
        raise ImageError(f"{name}: is a folder, not an image file")
    try:
        handle = open(file, "rb")
    except OSError as exc:
        raise ImageError(f"{name}: cannot read file ({_one_line(exc)})") from exc
    with handle:
        if os.fstat(handle.fileno()).st_size == 0:
            raise ImageError(f"{name}: not a readable image (empty file)")
        return _decode(handle, name)


def decode_image(data: bytes, name: str) -> Image.Image:
    """Decode an image file's bytes exactly as :func:`load_image` decodes the file.

    For engines that read files elsewhere (Ray read tasks) and decode later.

    Args:
        data: the whole file's bytes.
        name: the file's path or URI, used in error messages.

    Raises:
        ImageError: as for :func:`load_image`.
    """
    if not data:
        raise ImageError(f"{name}: not a readable image (empty file)")
    return _decode(io.BytesIO(data), name)


def _decode(handle: BinaryIO, name: str) -> Image.Image:
    """Decode an open image file: size check from the header, full decode, EXIF, RGB."""
    try:
        image = Image.open(handle)
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name}: not a readable image (unrecognized format)") from exc
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name}: image is too large ({_one_line(exc)})") from exc
    except _DECODE_ERRORS as exc:
        raise ImageError(f"{name}: not a readable image ({_one_line(exc)})") from exc
    width, height = image.size
    if min(width, height) < MIN_SIDE:
        raise ImageError(
            f"{name}: image is {width}x{height} px, too small "
            f"(sides must be at least {MIN_SIDE} px)"
        )
    if max(width, height) > MAX_SIDE:
        raise ImageError(
            f"{name}: image is {width}x{height} px, too large "
            f"(sides must be at most {MAX_SIDE} px)"
        )
    try:
        image.load()
    except _DECODE_ERRORS as exc:
        raise ImageError(
            f"{name}: truncated or corrupt image data ({_one_line(exc)})"
        ) from exc
    image = _apply_exif_orientation(image)
    return _to_rgb(image, name)


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    """Rotate or flip by the EXIF orientation tag; leave the image as is if EXIF is broken."""
    try:
        return ImageOps.exif_transpose(image)
    except (*_DECODE_ERRORS, KeyError, TypeError):
        return image


def _to_rgb(image: Image.Image, name: str) -> Image.Image:
    """Convert a decoded image of any Pillow mode to a new 8-bit RGB image."""
    mode = image.mode
    if mode.startswith("I"):  # "I;16", "I;16B", "I;16L", "I;16N", "I"
        values = np.asarray(image).astype(np.float64)
        values = np.clip(values, 0.0, 65535.0) * (255.0 / 65535.0)
        return _gray_to_rgb(values)
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            values = values * 255.0
        return _gray_to_rgb(np.clip(values, 0.0, 255.0))
    if mode == "P" and "transparency" in image.info:
        # Going through RGBA avoids Pillow's warning about palette transparency.
        image = image.convert("RGBA")
    try:
        return image.convert("RGB")
    except ValueError:
        pass
    try:
        return image.convert("RGBA").convert("RGB")
    except ValueError as exc:
        raise ImageError(f"{name}: unsupported image mode {mode!r}") from exc


def _gray_to_rgb(values: np.ndarray) -> Image.Image:
    """Turn a 2-D float array already in 0..255 into an RGB image."""
    gray = np.rint(values).astype(np.uint8)
    return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2), mode="RGB")


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _scan_folder(folder: Path, recursive: bool) -> list[Path]:
    """Image files in a folder (skipping hidden files and, when recursive, hidden folders)."""
    found: list[Path] = []
    if recursive:
        for root, dirs, files in os.walk(folder):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            found.extend(Path(root) / f for f in files if not f.startswith("."))
    else:
        found.extend(p for p in folder.iterdir() if not p.name.startswith("."))
    return [p for p in found if _is_image_name(p) and p.is_file()]


def expand_paths(
    inputs: Sequence[str | os.PathLike[str]], *, recursive: bool = False
) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand files, folders and glob patterns into a sorted list of image files.

    A file named explicitly is kept whatever its extension (it fails later in `load_image`
    if it is not an image). A folder contributes its files whose extension is in
    `IMAGE_EXTENSIONS` (case-insensitive), skipping hidden files; subfolders only when
    `recursive` is true. A glob pattern (``*``, ``?``, ``[``; ``**`` matches any depth)
    contributes the image files it matches. An input that exists as a path is never treated
    as a pattern. The same file reached twice is listed once.

    Args:
        inputs: Files, folders and glob patterns, as given on a command line.
        recursive: Also look in subfolders of the folders given.

    Returns:
        ``(files, problems)``: the sorted image paths, and ``(input, reason)`` pairs for
        inputs that gave nothing (missing path, folder or pattern without image files).
        Problems are reported, not raised; the caller decides what to do.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    files: dict[str, Path] = {}
    problems: list[tuple[str, str]] = []

    def add(path: Path) -> None:
        files.setdefault(os.path.normcase(os.path.realpath(path)), path)

    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if not text:
            problems.append((text, "empty path"))
        elif path.is_dir():
            found = _scan_folder(path, recursive)
            if not found:
                problems.append((text, "no image files in folder"))
            for p in found:
                add(p)
        elif path.exists():
            add(path)
        elif _GLOB_CHARS.intersection(text):
            matches = [Path(m) for m in glob.glob(text, recursive=True)]
            found = [p for p in matches if _is_image_name(p) and p.is_file()]
            if not matches:
                problems.append((text, "no files match the pattern"))
            elif not found:
                problems.append((text, "no image files match the pattern"))
            for p in found:
                add(p)
        else:
            problems.append((text, "no such file or folder"))
    return sorted(files.values()), problems
