"""Reader for the ``wsolevaluation`` metadata layout (Choe et al., CVPR 2020).

A metadata folder holds plain-text files, one record per line, fields separated by commas:

- ``image_ids.txt``: ``<image_id>`` (an image path relative to the data folder); defines the
  set and the order of the images.
- ``class_labels.txt``: ``<image_id>,<class index>``
- ``image_sizes.txt``: ``<image_id>,<width>,<height>``
- ``localization.txt``: one line per box or per mask; an image can have several. Each line is
  one of

  - a **box line** ``<image_id>,<x0>,<y0>,<x1>,<y1>`` (ImageNet, CUB): pixel coordinates of the
    image file, **corners inclusive** (a box covering pixel columns 3..5 is ``x0=3, x1=5``).
    The reader converts them to the wsolkit edge convention (``x1 = x0 + width``) by adding 1
    to ``x1`` and ``y1``, so ``Sample.boxes`` is ``x0, y0, x1 + 1, y1 + 1``.
  - a **mask line** ``<image_id>,<mask_path>,<ignore_path>`` (OpenImages): three fields whose
    second is not a number. The masks of all mask lines of an image are united into its
    foreground; ``ignore_path`` (may be empty) names a mask of pixels to leave out of scoring.
    Paths are relative to the data folder. In both files a nonzero pixel is "on"; as in
    wsolevaluation, ignore pixels that are also foreground count as foreground.

- ``class_names.txt`` (optional): one class name per line, in class-index order.

Fields are split on every comma, as wsolevaluation does, so image ids and mask paths cannot
contain one. Blank lines are skipped; line numbers in error messages count them. Records in the
label, size or localization files whose image id is not listed in ``image_ids.txt`` are ignored
(``image_ids.txt`` defines the set, as in wsolevaluation). Image and mask files are not opened
or checked at construction; masks are read by ``Sample.load_mask``, which checks their size
against ``image_sizes.txt``.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np

from wsolkit.data.base import SampleDataset, text_lines
from wsolkit.data.mask_files import read_mask_file
from wsolkit.data.sample import Sample
from wsolkit.errors import InputError

__all__ = ["WSOLMetadataDataset"]

_IMAGE_IDS = "image_ids.txt"
_CLASS_LABELS = "class_labels.txt"
_IMAGE_SIZES = "image_sizes.txt"
_LOCALIZATION = "localization.txt"
_CLASS_NAMES = "class_names.txt"


def _records(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, stripped_line)`` for the non-blank lines of a text file."""
    return text_lines(path, "metadata file")


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


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _load_masks(
    mask_paths: tuple[Path, ...],
    ignore_paths: tuple[Path, ...],
    size: tuple[int, int],
    image_id: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Read and unite an image's masks; return ``(foreground, ignore)`` (H, W) bool."""
    width, height = size

    def read(path: Path) -> np.ndarray:
        values = read_mask_file(path)
        if values.shape != (height, width):
            raise InputError(
                f"{path}: mask is {values.shape[1]}x{values.shape[0]} but {_IMAGE_SIZES} gives "
                f"{width}x{height} for image id '{image_id}'"
            )
        return values != 0

    foreground = np.zeros((height, width), bool)
    for path in mask_paths:
        foreground |= read(path)
    ignore = np.zeros((height, width), bool)
    for path in ignore_paths:
        ignore |= read(path)
    ignore &= ~foreground
    return foreground, ignore


class WSOLMetadataDataset(SampleDataset):
    """Image ids, class labels, sizes, GT boxes and masks of a wsolevaluation metadata folder.

    All text files are parsed and cross-checked at construction; images and masks are not
    loaded. Each :class:`Sample` has ``labels = (class_index,)``, ``size`` from
    ``image_sizes.txt``, ``boxes`` in wsolkit edge coordinates (inclusive corners + 1 on
    ``x1, y1``), ``box_labels`` the image's class, no ignored boxes, and a ``mask_loader`` when
    the image has mask lines (else None).

    Args:
        root: The metadata folder (e.g. ``shared/data/imagenet-dev``).
        require_boxes: If True (default), ``localization.txt`` must exist and every image
            must have at least one box or mask line. If False, a missing ``localization.txt``
            is allowed (e.g. classification-only sets) and images without one get no boxes and
            no masks.
        data_root: Folder the image ids and mask paths are relative to (wsolevaluation keeps
            ``metadata/`` apart from ``dataset/``); defaults to ``root``.

    Attributes:
        root: The metadata folder.
        data_root: The folder images and masks are resolved against.
        kind: ``"wsol"``.

    Raises:
        InputError: A folder or file is missing, a line is malformed (the message names the
            file and line number), or an image id lacks a label, size or localization.
    """

    kind = "wsol"

    def __init__(
        self,
        root: str | Path,
        require_boxes: bool = True,
        data_root: str | Path | None = None,
    ) -> None:
        self.root = Path(root)
        self.data_root = self.root if data_root is None else Path(data_root)
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
        boxes: dict[str, list[list[float]]] = {}
        masks: dict[str, tuple[list[str], list[str]]] = {}
        if loc_path.is_file():
            boxes, masks = self._read_localization(known)
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
            if require_boxes and image_id not in boxes and image_id not in masks:
                raise InputError(f"{loc_path}: no box or mask for image id '{image_id}'")

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
        self._boxes = []
        for image_id in self._image_ids:
            array = np.asarray(boxes.get(image_id, []), dtype=np.float64).reshape(-1, 4)
            array[:, 2:] += 1.0  # inclusive corners -> pixel edges
            self._boxes.append(array.astype(np.float32))
        self._masks = {
            image_id: (
                tuple(self.data_root / p for p in mask_list),
                tuple(self.data_root / p for p in ignore_list),
            )
            for image_id, (mask_list, ignore_list) in masks.items()
        }

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

    def _read_localization(
        self, known: set[str]
    ) -> tuple[dict[str, list[list[float]]], dict[str, tuple[list[str], list[str]]]]:
        path = self.root / _LOCALIZATION
        boxes: dict[str, list[list[float]]] = {}
        masks: dict[str, tuple[list[str], list[str]]] = {}
        for number, line in _records(path):
            fields = line.split(",")
            if len(fields) == 3 and fields[0] and not _is_number(fields[1].strip()):
                image_id, mask_path, ignore_path = (f.strip() for f in fields)
                if not mask_path:
                    raise InputError(f"{path}:{number}: empty mask path")
                if image_id in known:
                    mask_list, ignore_list = masks.setdefault(image_id, ([], []))
                    mask_list.append(mask_path)
                    if ignore_path and ignore_path not in ignore_list:
                        ignore_list.append(ignore_path)
                continue
            coords: list[float] | None = None
            if len(fields) == 5 and fields[0]:
                try:
                    coords = [float(f) for f in fields[1:]]
                except ValueError:
                    coords = None
            if coords is None or not all(np.isfinite(coords)):
                raise InputError(
                    f"{path}:{number}: expected 'image_id,x0,y0,x1,y1' "
                    f"or 'image_id,mask_path,ignore_path'"
                )
            x0, y0, x1, y1 = coords
            if min(coords) < 0 or x1 < x0 or y1 < y0:
                raise InputError(
                    f"{path}:{number}: box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) needs "
                    f"0 <= x0 <= x1 and 0 <= y0 <= y1"
                )
            if fields[0] in known:
                boxes.setdefault(fields[0], []).append(coords)
        return boxes, masks

    def _read_class_names(self) -> list[str] | None:
        path = self.root / _CLASS_NAMES
        if not path.is_file():
            return None
        return [line for _, line in _records(path)]

    # -- access ------------------------------------------------------------------------------

    def _sample(self, i: int) -> Sample:
        image_id = self._image_ids[i]
        label = self._labels[i]
        boxes = self._boxes[i].copy()
        mask_loader = None
        if image_id in self._masks:
            mask_paths, ignore_paths = self._masks[image_id]
            mask_loader = partial(_load_masks, mask_paths, ignore_paths, self._sizes[i], image_id)
        return Sample(
            image_id=image_id,
            path=self.data_root / image_id,
            labels=(label,),
            boxes=boxes,
            box_labels=np.full(len(boxes), label, np.int64),
            box_ignore=np.zeros(len(boxes), bool),
            size=self._sizes[i],
            mask_loader=mask_loader,
        )
