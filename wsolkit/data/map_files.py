"""Heatmap files of an evaluation: ``<folder>/<image_id>.npy`` (the wsolevaluation layout)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from wsolkit.data.atomic import make_out_dir, write_npy_atomic
from wsolkit.errors import InputError

__all__ = ["load_map", "save_map"]


def load_map(maps_dir: Path, image_id: str) -> np.ndarray:
    """Load ``<maps_dir>/<image_id>.npy``, a finite 2-D map of any size and range.

    Raises:
        InputError: missing or unreadable file, wrong shape, non-finite values.
    """
    path = maps_dir / f"{image_id}.npy"
    if not path.is_file():
        raise InputError(f"{path}: map file not found")
    try:
        heatmap = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: not a readable .npy array ({error})") from None
    heatmap = np.squeeze(heatmap)
    if heatmap.ndim != 2 or heatmap.dtype.kind not in "fiub" or min(heatmap.shape) < 1:
        raise InputError(f"{path}: expected a 2-D numeric map, got shape {heatmap.shape}")
    if not np.isfinite(heatmap).all():
        raise InputError(f"{path}: map has NaN or infinite values")
    return heatmap.astype(np.float32)


def save_map(folder: Path, image_id: str, heatmap: np.ndarray,
             option: str = "save_maps_dir") -> None:
    """Write ``heatmap`` as ``<folder>/<image_id>.npy`` (float32), atomically.

    Raises:
        InputError: naming ``option`` when the image id would put the file outside ``folder``.
    """
    path = folder / f"{image_id}.npy"
    if not os.path.realpath(path).startswith(os.path.join(os.path.realpath(folder), "")):
        raise InputError(f"{option} {folder}: the map of image {image_id!r} would be "
                         "written outside it")
    make_out_dir(path.parent, option)
    write_npy_atomic(path, heatmap.astype(np.float32))
