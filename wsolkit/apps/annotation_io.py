"""Reading and rewriting box annotations (COCO JSON, PASCAL VOC XML) for annotation tools.

Unlike the dataset readers of :mod:`wsolkit.data`, which give clean samples for scoring, these
functions keep every annotation as found, including the ones a tool must skip (crowd,
degenerate, outside the image, malformed), so that the rewritten file holds everything the
input held except what the tool changed on purpose.

Boxes are wsolkit pixel edges ``x0, y0, x1, y1`` (``x1 = x0 + width``): COCO ``[x, y, w, h]``
maps to ``x, y, x + w, y + h``; VOC's 1-based inclusive ``xmin..xmax`` to ``xmin - 1 .. xmax``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import secrets
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsolkit.data.atomic import make_out_dir, write_bytes_atomic
from wsolkit.data.coco_json import bbox_edges, coco_image_dir, coco_images, read_json
from wsolkit.errors import InputError

__all__ = [
    "AnnotatedBox",
    "AnnotationSet",
    "check_output",
    "read_annotations",
    "write_annotations",
]

SKIP_REASONS = {
    "crowd": "crowd annotation (iscrowd=1)",
    "degenerate": "degenerate box (width or height below the minimum)",
    "outside": "box outside the image",
    "malformed": "malformed box",
    "no_image": "image entry missing",
    "unreadable": "image file missing or unreadable",
    "size_mismatch": "image file size differs from the annotation's",
}
"""Why a box is not scored, by status code."""


@dataclass
class AnnotatedBox:
    """One annotated box and what a tool decided about it.

    Attributes:
        key: Unique description (``annotation 17`` or ``2008_000008.xml object 2``).
        image: Image file name, relative to the image folder.
        label: Class name.
        box: ``(4,)`` float64 edges as annotated (None when malformed).
        status: ``"ok"`` (to be scored) or a key of ``SKIP_REASONS``.
        clipped: The box reaches outside the image and was clipped for scoring.
        score: Dominance score (NaN until scored).
        new_box: The box to write (None: unchanged).
        action: ``"kept"``, ``"tightened"``, ``"flagged"``, ``"dropped"`` or ``"skipped"``.
    """

    key: str
    image: str
    label: str
    box: np.ndarray | None
    status: str = "ok"
    clipped: bool = False
    score: float = math.nan
    new_box: np.ndarray | None = None
    action: str = "kept"
    ref: Any = field(default=None, repr=False)


@dataclass
class AnnotationSet:
    """All boxes of a COCO file or VOC folder, grouped by image.

    Attributes:
        kind: ``"coco"`` or ``"voc"``.
        source: The JSON file or VOC folder.
        image_dir: Folder image file names are relative to.
        images: Image file name -> ``(width, height)`` from the annotations (None if absent).
        boxes: Every box, in file order.
    """

    kind: str
    source: Path
    image_dir: Path
    images: dict[str, tuple[int, int] | None]
    boxes: list[AnnotatedBox]
    data: Any = field(default=None, repr=False)


def _finite_numbers(values: Any, count: int) -> bool:
    return (
        isinstance(values, (list, tuple))
        and len(values) == count
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for v in values)
    )


def _classify(entry: AnnotatedBox, size: tuple[int, int] | None, min_side: float) -> None:
    """Set ``status`` and ``clipped`` of a box with known coordinates."""
    x0, y0, x1, y1 = entry.box
    if x1 - x0 < min_side or y1 - y0 < min_side:
        entry.status = "degenerate"
        return
    if size is None:
        return
    width, height = size
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if cx1 - cx0 < min_side or cy1 - cy0 < min_side:
        entry.status = "outside"
        return
    entry.clipped = (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1)


def _read_coco(path: Path, image_dir: Path | None, min_side: float) -> AnnotationSet:
    data = read_json(path, "annotation file")
    coco_images(data, path)
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise InputError(f"{path}: 'annotations' must be a list")
    names = {c.get("id"): str(c.get("name")) for c in data.get("categories", []) or []
             if isinstance(c, dict)}
    by_id: dict[Any, tuple[str, tuple[int, int] | None]] = {}
    images: dict[str, tuple[int, int] | None] = {}
    for number, image in enumerate(data["images"]):
        width, height = image.get("width"), image.get("height")
        size = None
        if _finite_numbers([width, height], 2) and width > 0 and height > 0:
            size = (int(width), int(height))
        try:
            by_id[image["id"]] = (str(image["file_name"]), size)
        except TypeError:
            raise InputError(f"{path}: image entry {number} has an unhashable id") from None
        images[str(image["file_name"])] = size
    boxes: list[AnnotatedBox] = []
    for number, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            raise InputError(f"{path}: annotation entry {number} is not an object")
        key = f"annotation {ann.get('id', f'#{number}')}"
        try:
            file_name, size = by_id.get(ann.get("image_id"), ("", None))
        except TypeError:
            file_name, size = "", None
        try:
            label = names.get(ann.get("category_id"), str(ann.get("category_id")))
        except TypeError:
            label = str(ann.get("category_id"))
        bbox = ann.get("bbox")
        entry = AnnotatedBox(key, file_name, label, None, ref=number)
        if not _finite_numbers(bbox, 4):
            entry.status = "malformed"
        else:
            entry.box = bbox_edges(bbox)
            if not file_name:
                entry.status = "no_image"
            elif ann.get("iscrowd"):
                entry.status = "crowd"
            else:
                _classify(entry, size, min_side)
        if entry.status != "ok":
            entry.action = "skipped"
        boxes.append(entry)
    folder = coco_image_dir(path, next(iter(images), None), image_dir)
    return AnnotationSet("coco", path, Path(folder), images, boxes, data)


def _voc_number(element: ET.Element | None, tag: str) -> float | None:
    if element is None:
        return None
    child = element.find(tag)
    if child is None or child.text is None:
        return None
    try:
        value = float(child.text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _voc_files(root: Path) -> tuple[Path, list[Path], Path]:
    annotations = root / "Annotations"
    if annotations.is_dir():
        folder, images = annotations, root / "JPEGImages"
    else:
        folder, images = root, root
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".xml" and p.is_file())
    if not files:
        raise InputError(f"{folder}: no .xml annotation files")
    return folder, files, images


def _read_voc(root: Path, image_dir: Path | None, min_side: float) -> AnnotationSet:
    folder, files, default_images = _voc_files(root)
    trees: dict[str, ET.ElementTree] = {}
    images: dict[str, tuple[int, int] | None] = {}
    boxes: list[AnnotatedBox] = []
    for xml in files:
        try:
            tree = ET.parse(xml)
        except ET.ParseError as exc:
            raise InputError(f"{xml}: malformed XML ({exc})") from exc
        except OSError as exc:
            raise InputError(f"{xml}: cannot read ({exc.strerror or exc})") from exc
        top = tree.getroot()
        if top.tag != "annotation":
            raise InputError(f"{xml}: not a VOC annotation (root element <{top.tag}>)")
        trees[xml.name] = tree
        name_element = top.find("filename")
        file_name = (name_element.text or "").strip() if name_element is not None else ""
        file_name = file_name or f"{xml.stem}.jpg"
        size_element = top.find("size")
        width, height = _voc_number(size_element, "width"), _voc_number(size_element, "height")
        size = (int(width), int(height)) if width and height and width > 0 and height > 0 \
            else None
        images[file_name] = size
        for k, obj in enumerate(top.findall("object"), start=1):
            name = obj.find("name")
            label = (name.text or "").strip() if name is not None and name.text else "?"
            coords = [_voc_number(obj.find("bndbox"), t) for t in ("xmin", "ymin", "xmax", "ymax")]
            entry = AnnotatedBox(f"{xml.name} object {k}", file_name, label, None,
                                 ref=(xml.name, k - 1))
            if any(v is None for v in coords):
                entry.status = "malformed"
            else:
                x0, y0, x1, y1 = coords  # type: ignore[misc]
                entry.box = np.array([max(x0 - 1, 0.0), max(y0 - 1, 0.0), x1, y1], np.float64)
                _classify(entry, size, min_side)
            if entry.status != "ok":
                entry.action = "skipped"
            boxes.append(entry)
    folder_images = Path(image_dir) if image_dir is not None else default_images
    return AnnotationSet("voc", root, folder_images, images, boxes, trees)


def read_annotations(
    source: str | os.PathLike[str], image_dir: str | os.PathLike[str] | None = None,
    min_side: float = 2.0,
) -> AnnotationSet:
    """Read every box of a COCO JSON file or a VOC folder (``Annotations/`` or flat XML).

    Boxes that cannot be scored get a status instead of raising: ``crowd`` (COCO
    ``iscrowd``), ``degenerate`` (width or height ``< min_side`` pixels, e.g. empty),
    ``outside`` (less than ``min_side`` pixels inside the image), ``malformed`` (missing or
    non-numeric coordinates), ``no_image`` (COCO ``image_id`` without an image entry). The
    input is only read.

    Args:
        source: ``.json`` file (COCO) or folder (VOC).
        image_dir: Folder of the image files; default: the JSON's folder (or its ``images/``)
            for COCO, ``JPEGImages/`` (standard layout) or the folder itself (flat) for VOC.
        min_side: Smallest width and height of a box worth scoring, in pixels.

    Raises:
        InputError: The file or folder is missing, or not COCO JSON / VOC XML at all.
    """
    path = Path(source)
    if path.is_file() and path.suffix.lower() == ".json":
        return _read_coco(path, None if image_dir is None else Path(image_dir), min_side)
    if path.is_dir():
        return _read_voc(path, None if image_dir is None else Path(image_dir), min_side)
    if not path.exists():
        raise InputError(f"{path}: annotations not found")
    raise InputError(f"{path}: expected a COCO .json file or a VOC folder of .xml files")


def _coco_box(box: np.ndarray) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]


def _annotated_coco(annotations: AnnotationSet, drop: bool) -> bytes:
    data = copy.deepcopy(annotations.data)
    anns = data.get("annotations", [])
    removed: set[int] = set()
    for entry in annotations.boxes:
        ann = anns[entry.ref]
        if entry.action == "skipped":
            continue
        if not math.isnan(entry.score):
            ann["objectness_score"] = round(float(entry.score), 4)
        if entry.action in ("flagged", "dropped"):
            if drop:
                removed.add(entry.ref)
            else:
                ann["flagged"] = "no_dominant_object"
        elif entry.new_box is not None:
            ann["bbox_original"] = ann["bbox"]
            ann["bbox"] = _coco_box(entry.new_box)
    data["annotations"] = [a for i, a in enumerate(anns) if i not in removed]
    return (json.dumps(data) + "\n").encode("utf-8")


def _set_voc_box(obj: ET.Element, box: np.ndarray) -> None:
    bndbox = obj.find("bndbox")
    x0, y0, x1, y1 = (float(v) for v in box)
    values = {"xmin": math.floor(x0) + 1, "ymin": math.floor(y0) + 1,
              "xmax": math.ceil(x1), "ymax": math.ceil(y1)}
    for tag, value in values.items():
        child = bndbox.find(tag)
        if child is None:
            child = ET.SubElement(bndbox, tag)
        child.text = str(int(value))


def _annotated_voc(annotations: AnnotationSet, drop: bool) -> dict[str, bytes]:
    trees = {name: copy.deepcopy(tree) for name, tree in annotations.data.items()}
    objects = {name: tree.getroot().findall("object") for name, tree in trees.items()}
    for entry in annotations.boxes:
        if entry.action == "skipped":
            continue
        name, index = entry.ref
        obj = objects[name][index]
        if not math.isnan(entry.score):
            ET.SubElement(obj, "objectness_score").text = f"{entry.score:.4f}"
        if entry.action in ("flagged", "dropped"):
            if drop:
                trees[name].getroot().remove(obj)
            else:
                ET.SubElement(obj, "flagged").text = "no_dominant_object"
        elif entry.new_box is not None:
            _set_voc_box(obj, entry.new_box)
    out = {}
    for name, tree in trees.items():
        ET.indent(tree)
        out[name] = ET.tostring(tree.getroot(), encoding="utf-8", xml_declaration=False) + b"\n"
    return out


def _same_file(a: Path, b: Path) -> bool:
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def output_path(annotations: AnnotationSet, out_dir: Path) -> Path:
    """Where :func:`write_annotations` writes: ``OUT/<json name>`` or ``OUT/Annotations``."""
    if annotations.kind == "coco":
        return out_dir / annotations.source.name
    return out_dir / "Annotations"


def _within(path: Path, folder: Path) -> bool:
    """True when ``path`` is ``folder`` or lies inside it (symbolic links resolved)."""
    path_, folder_ = (os.path.normcase(os.path.realpath(p)) for p in (path, folder))
    return os.path.commonpath([path_, folder_]) == folder_


def check_output(annotations: AnnotationSet, out_dir: Path) -> Path:
    """Check that writing into ``out_dir`` leaves every input in place; return the target.

    Raises:
        InputError: The COCO output would be the input file, ``out_dir`` is the VOC input
            folder, or the VOC ``OUT/Annotations`` folder (replaced as a whole) is or holds
            the input annotations or images.
    """
    out_dir = Path(out_dir)
    target = output_path(annotations, out_dir)
    if annotations.kind == "coco":
        if _same_file(target, annotations.source):
            raise InputError(f"out={out_dir}: would overwrite the input {annotations.source}")
        return target
    inputs = (annotations.source, _voc_files(annotations.source)[0])
    if any(_same_file(out_dir, folder) for folder in inputs):
        raise InputError(f"out={out_dir}: is the input folder; choose a new folder")
    for folder in (*inputs, annotations.image_dir):
        if _within(folder, target):
            raise InputError(f"out={out_dir}: writing {target} would replace the input "
                             f"{folder}; choose a new folder")
    return target


def write_annotations(annotations: AnnotationSet, out_dir: Path, drop: bool = False) -> Path:
    """Write the rewritten annotations into ``out_dir``, atomically; never over the input.

    COCO: ``OUT/<input file name>``; every scored annotation gets ``objectness_score``;
    flagged ones get ``"flagged": "no_dominant_object"`` (or are removed with ``drop``);
    tightened ones get the new ``bbox`` and keep the old one in ``bbox_original`` (``area``
    and ``segmentation`` are left as they were). VOC: ``OUT/Annotations/<same names>.xml``
    with ``<objectness_score>``, ``<flagged>`` and rewritten ``<bndbox>`` (integers, rounded
    outwards); the folder is written beside and renamed into place.

    Returns:
        The JSON file or the ``Annotations`` folder written.

    Raises:
        InputError: The output would overwrite the input, or a write fails.
    """
    out_dir = Path(out_dir)
    target = check_output(annotations, out_dir)
    make_out_dir(out_dir)
    if annotations.kind == "coco":
        write_bytes_atomic(target, _annotated_coco(annotations, drop))
        return target
    files = _annotated_voc(annotations, drop)
    temp = out_dir / f".Annotations.{secrets.token_hex(6)}.tmp"
    old = out_dir / f".Annotations.{secrets.token_hex(6)}.old"
    try:
        temp.mkdir()
        for name, data in files.items():
            write_bytes_atomic(temp / name, data)
        if target.exists():
            os.replace(target, old)
        os.replace(temp, target)
    except OSError as error:
        raise InputError(f"cannot write {target}: {error.strerror or error}") from None
    finally:
        shutil.rmtree(temp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return target
