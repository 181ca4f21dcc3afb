"""Reading ground-truth mask image files (PNG) as 8-bit gray arrays, with one-line errors."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from wsolkit.errors import InputError

__all__ = ["image_file_size", "read_mask_file"]

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def image_file_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image file from its header (the pixels are not decoded).

    This is the stored size, before any EXIF rotation.

    Raises:
        InputError: naming ``path`` if it is missing or not an image.
    """
    try:
        with Image.open(path) as image:
            return image.size
    except FileNotFoundError as exc:
        raise InputError(f"{path}: file not found") from exc
    except (UnidentifiedImageError, *_DECODE_ERRORS) as exc:
        raise InputError(f"{path}: cannot read image ({_one_line(exc)})") from exc


def read_mask_file(path: Path) -> np.ndarray:
    """Read a mask image as an ``(H, W)`` uint8 gray array.

    8-bit gray (``L``) files are returned as stored; 1-bit files give 0/255; gray with alpha
    keeps the gray channel; palette and color files are converted to gray with Pillow's
    ``convert("L")``. 16-bit, 32-bit and float files are rejected.

    Raises:
        InputError: naming ``path`` if it is missing, not an image, truncated or of an
            unsupported mode.
    """
    try:
        with Image.open(path) as image:
            mode = image.mode
            if mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                raise InputError(
                    f"{path}: mask mode {mode} is not supported (expected an 8-bit gray PNG)"
                )
            image.load()
            if mode == "L":
                return np.array(image, dtype=np.uint8)
            if mode == "1":
                return np.array(image, dtype=bool).astype(np.uint8) * 255
            if mode == "LA":
                return np.array(image.getchannel("L"), dtype=np.uint8)
            return np.array(image.convert("L"), dtype=np.uint8)
    except FileNotFoundError as exc:
        raise InputError(f"{path}: mask file not found") from exc
    except (UnidentifiedImageError, *_DECODE_ERRORS) as exc:
        raise InputError(f"{path}: cannot read mask ({_one_line(exc)})") from exc
