"""Reader for PASCAL VOC annotation XML files.

Two layouts:

- **standard**: ``root/Annotations/<id>.xml`` with images in ``root/JPEGImages/``; with
  ``split="val"`` (etc.) the ids and their order come from ``root/ImageSets/Main/val.txt``,
  else every XML file is read, sorted by name.
- **flat**: ``root/<id>.xml`` beside the images (e.g. LabelImg output).

Each XML gives the image file name (``<filename>``, else ``<id>.jpg``), the size
(``<size><width>``/``<height>``; None when missing or zero) and one ``<object>`` per box with
``<name>``, ``<difficult>`` and ``<bndbox>``. VOC boxes are 1-based with inclusive corners;
they become wsolkit edges as ``xmin - 1, ymin - 1, xmax, ymax`` (a box covering pixels 1..3
of VOC numbering, i.e. 0-based columns 0..2, is ``0, 0, 3, ...``); a ``xmin`` or ``ymin`` of 0
(written by some 0-based tools) gives 0, not -1. ``difficult`` boxes are
kept with ``box_ignore = True``. ``labels`` is the sorted set of box classes (difficult ones
included).

Class names: the 20 VOC classes in their usual order when every name found is one of them,
else the sorted names found, or the ``class_names`` argument. The format has no masks.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsolkit.data.base import SampleDataset, text_lines
from wsolkit.data.sample import Sample
from wsolkit.errors import InputError

__all__ = ["VOC_CLASSES", "VocDataset"]

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
"""The 20 PASCAL VOC classes in the usual class-index order."""


@dataclass(frozen=True)
class _Record:
    file_name: str
    size: tuple[int, int] | None
    boxes: np.ndarray  # (K, 4) float32 edges
    names: tuple[str, ...]
    difficult: np.ndarray  # (K,) bool


def _text(element: ET.Element, tag: str) -> str | None:
    child = element.find(tag)
    if child is None or child.text is None:
        return None
    text = child.text.strip()
    return text or None


def _number(element: ET.Element, tag: str) -> float | None:
    text = _text(element, tag)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _parse(path: Path) -> _Record:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise InputError(f"{path}: malformed XML ({exc})") from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if root.tag != "annotation":
        raise InputError(f"{path}: not a VOC annotation (root element <{root.tag}>)")
    size = None
    size_element = root.find("size")
    if size_element is not None:
        width, height = _number(size_element, "width"), _number(size_element, "height")
        if width and height and width > 0 and height > 0:
            size = (int(width), int(height))
    boxes, names, difficult = [], [], []
    for k, obj in enumerate(root.findall("object"), start=1):
        name = _text(obj, "name")
        box = obj.find("bndbox")
        coords = None
        if box is not None:
            coords = [_number(box, t) for t in ("xmin", "ymin", "xmax", "ymax")]
        if name is None or coords is None or any(v is None for v in coords):
            raise InputError(
                f"{path}: object {k} needs <name> and <bndbox> with numeric "
                f"xmin, ymin, xmax, ymax"
            )
        x0, y0, x1, y1 = coords  # type: ignore[misc]
        if x1 < x0 or y1 < y0:
            raise InputError(
                f"{path}: object {k} ({name}) has xmax < xmin or ymax < ymin "
                f"({x0:g}, {y0:g}, {x1:g}, {y1:g})"
            )
        boxes.append([max(x0 - 1, 0.0), max(y0 - 1, 0.0), x1, y1])
        names.append(name)
        flag = _text(obj, "difficult")
        difficult.append(flag not in (None, "0", "false", "False"))
    return _Record(
        file_name=_text(root, "filename") or f"{path.stem}.jpg",
        size=size,
        boxes=np.array(boxes, np.float32).reshape(-1, 4),
        names=tuple(names),
        difficult=np.array(difficult, bool),
    )


class VocDataset(SampleDataset):
    """Boxes and classes of a PASCAL VOC annotation folder, one sample per XML file.

    Args:
        root: The VOC folder (``Annotations/`` + ``JPEGImages/``) or a flat folder of XML
            files beside their images.
        split: Name of an ``ImageSets/Main/<split>.txt`` id list (standard layout only).
        class_names: Class-index order to use instead of the default (see the module doc);
            every name in the XML files must be in it.

    Attributes:
        root: The folder given.
        kind: ``"voc"``.
        layout: ``"standard"`` or ``"flat"``.
        image_dir: Folder the image file names are relative to.

    Raises:
        InputError: The folder or split file is missing, no XML file is found, a split id has
            no XML file (file and line named), an XML file is malformed or lacks a box field
            (file named), or a class is not in ``class_names``.
    """

    kind = "voc"

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"{self.root}: VOC folder not found")
        annotations = self.root / "Annotations"
        if annotations.is_dir():
            self.layout = "standard"
            self.image_dir = self.root / "JPEGImages"
        else:
            self.layout = "flat"
            annotations = self.root
            self.image_dir = self.root
            if split is not None:
                raise InputError(
                    f"{self.root}: split={split!r} needs the standard VOC layout "
                    f"(Annotations/, ImageSets/Main/)"
                )
        if split is None:
            xml_files = sorted(
                p for p in annotations.iterdir() if p.suffix.lower() == ".xml" and p.is_file()
            )
            if not xml_files:
                raise InputError(f"{annotations}: no .xml annotation files")
        else:
            xml_files = self._split_files(annotations, split)

        self._image_ids = [p.stem for p in xml_files]
        self._records = [_parse(p) for p in xml_files]
        found = sorted({name for r in self._records for name in r.names})
        if class_names is not None:
            names = [str(n) for n in class_names]
            missing = [n for n in found if n not in names]
            if missing:
                raise InputError(
                    f"{self.root}: classes {missing} are not in the given class_names"
                )
        elif all(n in VOC_CLASSES for n in found):
            names = list(VOC_CLASSES)
        else:
            names = found
        self._class_names = names
        self._index_of = {n: i for i, n in enumerate(names)}

    def _split_files(self, annotations: Path, split: str) -> list[Path]:
        path = self.root / "ImageSets" / "Main" / f"{split}.txt"
        files: list[Path] = []
        seen: dict[str, int] = {}
        for number, line in text_lines(path, "split file"):
            fields = line.split()
            image_id = fields[0]
            if image_id in seen:
                raise InputError(
                    f"{path}:{number}: duplicate id '{image_id}' (first on line {seen[image_id]})"
                )
            seen[image_id] = number
            xml = annotations / f"{image_id}.xml"
            if not xml.is_file():
                raise InputError(f"{path}:{number}: no annotation file {xml}")
            files.append(xml)
        if not files:
            raise InputError(f"{path}: no image ids")
        return files

    def _sample(self, i: int) -> Sample:
        record = self._records[i]
        box_labels = np.array([self._index_of[n] for n in record.names], np.int64)
        return Sample(
            image_id=self._image_ids[i],
            path=self.image_dir / record.file_name,
            labels=tuple(int(v) for v in np.unique(box_labels)),
            boxes=record.boxes.copy(),
            box_labels=box_labels,
            box_ignore=record.difficult.copy(),
            size=record.size,
        )
