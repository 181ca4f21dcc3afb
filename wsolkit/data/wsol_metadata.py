"""Reader for the ``wsolevaluation`` metadata layout (Choe et al., CVPR 2020).

A metadata folder holds plain-text files, one record per line, fields separated by commas:

- ``image_ids.txt``: ``<image_id>`` (an image path relative to the folder); defines the set
  and the order of the images.
- ``class_labels.txt``: ``<image_id>,<class index>``
- ``image_sizes.txt``: ``<image_id>,<width>,<height>``
- ``localization.txt``: ``<image_id>,<x0>,<y0>,<x1>,<y1>``, one line per box; an image can have
  several boxes. Pixel coordinates of the image file, **corners inclusive** (the wsolevaluation
  convention: a box covering pixel columns 3..5 is ``x0=3, x1=5``). This differs from the
  wsolkit box convention (continuous edges, ``x1 = x0 + width``); the reader returns the
  numbers as written, and ``wsolkit.eval.BoxAccuracy`` expects them in this form.
- ``class_names.txt`` (optional): one class name per line, in class-index order.

Fields are split on every comma, as wsolevaluation does, so image ids cannot contain one.
Blank lines are skipped; line numbers in error messages count them. Records in the label,
size or box files whose image id is not listed in ``image_ids.txt`` are ignored
(``image_ids.txt`` defines the set, as in wsolevaluation). Image files are not opened or
checked here.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsolkit.errors import InputError

__all__ = ["WSOLMetadataDataset", "WSOLSample"]

_IMAGE_IDS = "image_ids.txt"
_CLASS_LABELS = "class_labels.txt"
_IMAGE_SIZES = "image_sizes.txt"
_LOCALIZATION = "localization.txt"
_CLASS_NAMES = "class_names.txt"


@dataclass(frozen=True)
class WSOLSample:
    """One image record of a wsolevaluation metadata folder.

    Attributes:
        image_id: The id as written in ``image_ids.txt`` (a path relative to the root).
        path: ``root / image_id``; not checked for existence.
        label: Class index from ``class_labels.txt``.
        size: ``(width, height)`` of the image file, from ``image_sizes.txt``.
        boxes: ``(K, 4)`` float32 ``x0, y0, x1, y1`` from ``localization.txt``, in pixel
            coordinates of the image file with **inclusive** corners (wsolevaluation
            convention, not the wsolkit continuous-edge convention). ``K`` is 0 only when
            the dataset was opened with ``require_boxes=False`` and has no box for the image.
    """

    image_id: str
    path: Path
    label: int
    size: tuple[int, int]
    boxes: np.ndarray


def _records(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, stripped_line)`` for the non-blank lines of a text file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot read metadata file ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a UTF-8 text file") from exc
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line:
            yield number, line


def _int_fields(fields: list[str]) -> list[int] | None:
    """Parse every field as an int (``"12"`` or ``"12.0"``); None if one is not integral."""
    values = []
    for field in fields:
        try:
            values.append(int(field))
            continue
        except ValueError:
            pass
        try:
            number = float(field)
        except ValueError:
            return None
        if not number.is_integer():
            return None
        values.append(int(number))
    return values


class WSOLMetadataDataset:
    """Image ids, class labels, sizes and GT boxes of a wsolevaluation metadata folder.

    All files are parsed and cross-checked at construction; images are not loaded.

    Args:
        root: The metadata folder (e.g. ``shared/data/imagenet-dev``). Image paths are
            resolved relative to it.
        require_boxes: If True (default), ``localization.txt`` must exist and every image
            must have at least one box. If False, a missing ``localization.txt`` is allowed
            (e.g. classification-only sets) and images without boxes get a ``(0, 4)`` array.

    Raises:
        InputError: A folder or file is missing, a line is malformed (the message names the
            file and line number), or an image id lacks a label, size or box.
    """

    def __init__(self, root: str | Path, require_boxes: bool = True) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"{self.root}: WSOL metadata folder not found")
        required = [_IMAGE_IDS, _CLASS_LABELS, _IMAGE_SIZES]
        if require_boxes:
            required.append(_LOCALIZATION)
        for name in required:
            if not (self.root / name).is_file():
                raise InputError(f"{self.root / name}: metadata file not found")

        self._image_ids = self._read_image_ids()
        known = set(self._image_ids)
        labels = self._read_labels(known)
        sizes = self._read_sizes(known)
        loc_path = self.root / _LOCALIZATION
        boxes = self._read_boxes(known) if loc_path.is_file() else {}
        self._class_names = self._read_class_names()

        for image_id in self._image_ids:
            if image_id not in labels:
                raise InputError(
                    f"{self.root / _CLASS_LABELS}: no class label for image id '{image_id}'"
                )
            if image_id not in sizes:
                raise InputError(
                    f"{self.root / _IMAGE_SIZES}: no image size for image id '{image_id}'"
                )
            if require_boxes and image_id not in boxes:
                raise InputError(f"{loc_path}: no box for image id '{image_id}'")

        if self._class_names is not None:
            n_classes = len(self._class_names)
            for image_id in self._image_ids:
                label, number = labels[image_id]
                if label >= n_classes:
                    raise InputError(
                        f"{self.root / _CLASS_LABELS}:{number}: class index {label} is out of "
                        f"range for the {n_classes} names in {_CLASS_NAMES}"
                    )

        self._labels = [labels[i][0] for i in self._image_ids]
        self._sizes = [sizes[i] for i in self._image_ids]
        empty = np.zeros((0, 4), dtype=np.float32)
        self._boxes = [
            np.asarray(boxes[i], dtype=np.float32).reshape(-1, 4) if i in boxes else empty
            for i in self._image_ids
        ]
        for array in self._boxes:
            array.flags.writeable = False

    # -- parsing -----------------------------------------------------------------------------

    def _read_image_ids(self) -> list[str]:
        path = self.root / _IMAGE_IDS
        ids: list[str] = []
        first_line: dict[str, int] = {}
        for number, line in _records(path):
            if "," in line:
                raise InputError(f"{path}:{number}: image ids cannot contain ','")
            if line in first_line:
                raise InputError(
                    f"{path}:{number}: duplicate image id '{line}' "
                    f"(first on line {first_line[line]})"
                )
            first_line[line] = number
            ids.append(line)
        if not ids:
            raise InputError(f"{path}: no image ids")
        return ids

    def _read_labels(self, known: set[str]) -> dict[str, tuple[int, int]]:
        path = self.root / _CLASS_LABELS
        labels: dict[str, tuple[int, int]] = {}
        for number, line in _records(path):
            fields = line.split(",")
            values = _int_fields(fields[1:]) if len(fields) == 2 else None
            if not values or values[0] < 0 or not fields[0]:
                raise InputError(
                    f"{path}:{number}: expected 'image_id,class_index' "
                    f"(class index a non-negative integer)"
                )
            image_id = fields[0]
            if image_id not in known:
                continue
            if image_id in labels:
                raise InputError(
                    f"{path}:{number}: second class label for image id '{image_id}' "
                    f"(first on line {labels[image_id][1]})"
                )
            labels[image_id] = (values[0], number)
        return labels

    def _read_sizes(self, known: set[str]) -> dict[str, tuple[int, int]]:
        path = self.root / _IMAGE_SIZES
        sizes: dict[str, tuple[int, int]] = {}
        lines: dict[str, int] = {}
        for number, line in _records(path):
            fields = line.split(",")
            values = _int_fields(fields[1:]) if len(fields) == 3 else None
            if not values or min(values) <= 0 or not fields[0]:
                raise InputError(
                    f"{path}:{number}: expected 'image_id,width,height' (positive integers)"
                )
            image_id = fields[0]
            if image_id not in known:
                continue
            if image_id in sizes:
                raise InputError(
                    f"{path}:{number}: second size for image id '{image_id}' "
                    f"(first on line {lines[image_id]})"
                )
            sizes[image_id] = (values[0], values[1])
            lines[image_id] = number
        return sizes

    def _read_boxes(self, known: set[str]) -> dict[str, list[list[float]]]:
        path = self.root / _LOCALIZATION
        boxes: dict[str, list[list[float]]] = {}
        for number, line in _records(path):
            fields = line.split(",")
            coords: list[float] | None = None
            if len(fields) == 5 and fields[0]:
                try:
                    coords = [float(f) for f in fields[1:]]
                except ValueError:
                    coords = None
            if coords is None or not all(np.isfinite(coords)):
                raise InputError(f"{path}:{number}: expected 'image_id,x0,y0,x1,y1'")
            x0, y0, x1, y1 = coords
            if min(coords) < 0 or x1 < x0 or y1 < y0:
                raise InputError(
                    f"{path}:{number}: box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) needs "
                    f"0 <= x0 <= x1 and 0 <= y0 <= y1"
                )
            if fields[0] in known:
                boxes.setdefault(fields[0], []).append(coords)
        return boxes

    def _read_class_names(self) -> list[str] | None:
        path = self.root / _CLASS_NAMES
        if not path.is_file():
            return None
        return [line for _, line in _records(path)]

    # -- access ------------------------------------------------------------------------------

    @property
    def image_ids(self) -> list[str]:
        """Image ids in ``image_ids.txt`` order (a copy)."""
        return list(self._image_ids)

    @property
    def class_names(self) -> list[str] | None:
        """Names from ``class_names.txt`` in class-index order, or None if it is absent."""
        return None if self._class_names is None else list(self._class_names)

    def __len__(self) -> int:
        return len(self._image_ids)

    def __getitem__(self, index: int) -> WSOLSample:
        """Return the record of the ``index``-th image (negative indices count from the end).

        Raises:
            IndexError: ``index`` is out of range.
        """
        i = operator.index(index)
        n = len(self._image_ids)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} is out of range for {n} images")
        image_id = self._image_ids[i]
        return WSOLSample(
            image_id=image_id,
            path=self.root / image_id,
            label=self._labels[i],
            size=self._sizes[i],
            boxes=self._boxes[i].copy(),
        )

    def __iter__(self) -> Iterator[WSOLSample]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return f"WSOLMetadataDataset(root={str(self.root)!r}, images={len(self)})"
