"""Reader for a folder of images with one foreground mask each (DAVIS, COCO-mval style).

Layout::

    root/
      images/<stem>.jpg       (or any extension in wsolkit.data.IMAGE_EXTENSIONS)
      masks/<stem>.png        8-bit gray
      labels.csv              optional: '<stem>,<class name>' per line

Mask values: **exactly 128** marks an "unknown" band to ignore when scoring; values **above
128** (normally 255) are foreground; everything else (normally 0) is background. Files that are
not 8-bit gray are converted (see ``wsolkit.data.mask_files.read_mask_file``).

Every image needs a mask and every mask an image (matched by stem); the folders are listed at
construction but no file is opened. ``Sample.load_mask`` reads the mask and checks its size
against the image file's header (stored size, before EXIF rotation). The format gives no boxes:
samples have an empty ``boxes`` array; :func:`mask_box` gives the tight box of a loaded mask.

With ``labels.csv``, every image needs exactly one line (and every line an image); the class
names found, sorted, are ``class_names`` and each sample's ``labels`` is the index of its name.
Without it, samples have no labels and ``class_names`` is None.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from wsolkit.data.base import SampleDataset, text_lines
from wsolkit.data.images import IMAGE_EXTENSIONS
from wsolkit.data.mask_files import image_file_size, read_mask_file
from wsolkit.data.sample import Sample
from wsolkit.errors import InputError

__all__ = ["IGNORE_VALUE", "MaskFolderDataset", "mask_box"]

IGNORE_VALUE = 128
"""Mask value of the ignore band; values above it are foreground."""

_IMAGES = "images"
_MASKS = "masks"
_LABELS = "labels.csv"


def mask_box(mask: np.ndarray) -> np.ndarray:
    """Tight box of the nonzero pixels of a mask, in wsolkit edge coordinates.

    Args:
        mask: ``(H, W)`` mask (bool, or any numeric type: nonzero is "on"), e.g. the foreground
            from ``Sample.load_mask()``.

    Returns:
        ``(1, 4)`` float32 ``x0, y0, x1, y1`` with ``x1 = last column + 1`` (edges), or a
        ``(0, 4)`` array when the mask is empty.

    Raises:
        InputError: ``mask`` is not 2-D.
    """
    values = np.asarray(mask)
    if values.ndim != 2:
        raise InputError(f"mask must be an (H, W) array; got shape {values.shape}")
    on = values != 0
    cols = np.flatnonzero(on.any(axis=0))
    if cols.size == 0:
        return np.zeros((0, 4), np.float32)
    rows = np.flatnonzero(on.any(axis=1))
    return np.array([[cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]], np.float32)


def _load_mask(mask_path: Path, image_path: Path) -> tuple[np.ndarray, np.ndarray]:
    values = read_mask_file(mask_path)
    width, height = image_file_size(image_path)
    if values.shape != (height, width):
        raise InputError(
            f"{mask_path}: mask is {values.shape[1]}x{values.shape[0]} but the image "
            f"{image_path} is {width}x{height}"
        )
    return values > IGNORE_VALUE, values == IGNORE_VALUE


def _files_by_stem(folder: Path, extensions: frozenset[str] | set[str]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in extensions:
            continue
        if not path.is_file():
            continue
        if path.stem in found:
            raise InputError(
                f"{folder}: two files for stem '{path.stem}' ({found[path.stem].name}, "
                f"{path.name})"
            )
        found[path.stem] = path
    return found


class MaskFolderDataset(SampleDataset):
    """Images with foreground masks (``images/`` + ``masks/``), one sample per image.

    Args:
        root: The folder holding ``images/``, ``masks/`` and optionally ``labels.csv``.

    Attributes:
        root: The dataset folder.
        kind: ``"mask_folder"``.

    Raises:
        InputError: A folder is missing or empty, an image has no mask or a mask no image (the
            message names the stem), two files share a stem, or ``labels.csv`` is malformed
            (file and line number named).
    """

    kind = "mask_folder"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"{self.root}: mask folder dataset not found")
        for name in (_IMAGES, _MASKS):
            if not (self.root / name).is_dir():
                raise InputError(f"{self.root / name}: folder not found")
        images = _files_by_stem(self.root / _IMAGES, IMAGE_EXTENSIONS)
        masks = _files_by_stem(self.root / _MASKS, {".png"})
        if not images:
            raise InputError(f"{self.root / _IMAGES}: no image files")
        for stem in images:
            if stem not in masks:
                raise InputError(
                    f"{self.root / _MASKS}: no mask for image '{stem}' (expected {stem}.png)"
                )
        for stem, path in masks.items():
            if stem not in images:
                raise InputError(f"{path}: no image for mask '{stem}' in {self.root / _IMAGES}")

        self._image_ids = sorted(images)
        self._images = images
        self._masks = masks
        self._class_names = None
        self._labels: dict[str, int] = {}
        if (self.root / _LABELS).is_file():
            self._read_labels(self.root / _LABELS)

    def _read_labels(self, path: Path) -> None:
        names: dict[str, tuple[str, int]] = {}
        for number, line in text_lines(path):
            stem, sep, name = line.partition(",")
            stem, name = stem.strip(), name.strip()
            if not sep or not stem or not name:
                raise InputError(f"{path}:{number}: expected '<stem>,<class name>'")
            if stem not in self._images:
                raise InputError(f"{path}:{number}: no image for stem '{stem}'")
            if stem in names:
                raise InputError(
                    f"{path}:{number}: second label for '{stem}' (first on line "
                    f"{names[stem][1]})"
                )
            names[stem] = (name, number)
        for stem in self._image_ids:
            if stem not in names:
                raise InputError(f"{path}: no label for image '{stem}'")
        self._class_names = sorted({name for name, _ in names.values()})
        index = {name: i for i, name in enumerate(self._class_names)}
        self._labels = {stem: index[name] for stem, (name, _) in names.items()}

    def _sample(self, i: int) -> Sample:
        stem = self._image_ids[i]
        image = self._images[stem]
        label = self._labels.get(stem)
        return Sample(
            image_id=stem,
            path=image,
            labels=() if label is None else (label,),
            mask_loader=partial(_load_mask, self._masks[stem], image),
        )
