"""The pieces of a COCO JSON file every reader needs, read one way.

:class:`~wsolkit.data.coco.CocoDataset` (clean samples for scoring), the annotation tools'
reader (:mod:`wsolkit.apps.annotation_io`, which keeps every entry as found) and the box
files of ``wsolkit instances`` (a COCO annotation file or a detector's results list) all go
through :func:`read_json`, :func:`coco_images` and :func:`coco_image_dir`; boxes are
converted by :func:`bbox_edges` and masks written by :func:`encode_rle`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from wsolkit.errors import InputError

__all__ = [
    "bbox_edges",
    "box_entries",
    "check_entry",
    "coco_image_dir",
    "coco_images",
    "encode_rle",
    "entry_name",
    "image_files",
    "read_json",
]


def read_json(path: Path, what: str = "JSON file") -> Any:
    """The parsed JSON of ``path``, or a one-line :class:`InputError` naming the file.

    Args:
        path: the file.
        what: what the file is, for the "not found" message.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} not found")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({' '.join(str(exc).split())})") from exc


def coco_images(data: Any, path: Path) -> list[dict[str, Any]]:
    """The ``images`` entries of a COCO annotation dict, each checked for ``id`` and ``file_name``.

    Raises:
        InputError: no ``images`` list, or an entry that is not an object with both keys.
    """
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise InputError(f"{path}: not a COCO annotation file (no 'images' list)")
    for number, image in enumerate(data["images"]):
        if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
            raise InputError(f"{path}: image entry {number} needs 'id' and 'file_name'")
    return data["images"]


def coco_image_dir(path: Path, first_file: str | None, image_dir: str | Path | None = None
                   ) -> Path:
    """The folder a COCO file's ``file_name`` entries are relative to.

    ``image_dir`` when given; else the JSON's folder, or ``images/`` beside the JSON when the
    first image's file is not in the JSON's folder but ``images/`` exists.
    """
    if image_dir is not None:
        return Path(image_dir)
    root = Path(path).parent
    if first_file is not None and not (root / first_file).exists() and (root / "images").is_dir():
        return root / "images"
    return root


def bbox_edges(bbox: Any) -> np.ndarray:
    """COCO ``[x, y, w, h]`` as wsolkit edges ``x, y, x + w, y + h`` (``(4,)`` float64)."""
    x, y, w, h = (float(v) for v in bbox)
    return np.array([x, y, x + w, y + h], np.float64)


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE of a bool mask, JSON-ready (``counts`` as a string)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def box_entries(data: Any, path: Path) -> list[Any]:
    """The box entries of a dataset dict (``annotations``) or of a results list."""
    if isinstance(data, list):
        return data
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        return data["annotations"]
    raise InputError(
        f"{path}: expected COCO detections (a list of {{image_id, category_id, bbox, score}}) or "
        "a COCO annotation file with 'annotations'"
    )


def image_files(data: Any, path: Path, image_dir: Path) -> dict[Any, tuple[Path, tuple]]:
    """Image id -> (file, (width, height)) of a COCO dataset dict's ``images``."""
    table = {}
    for image in coco_images(data, path):
        size = (image.get("width"), image.get("height"))
        table[image["id"]] = (image_dir / str(image["file_name"]), size)
    return table


def entry_name(entry: Any, index: int) -> str:
    """How a message names a box entry: ``annotation <id>``, or ``entry <index>`` without id."""
    if isinstance(entry, dict) and "id" in entry:
        return f"annotation {entry['id']}"
    return f"entry {index}"


def check_entry(entry: object, index: int, table: dict, path: Path) -> None:
    """One-line error for a box entry without an image id or with one not in ``table``."""
    name = entry_name(entry, index)
    if not isinstance(entry, dict) or "image_id" not in entry:
        raise InputError(f"{path}: {name} needs 'image_id' and 'bbox'")
    try:
        known = entry["image_id"] in table
    except TypeError:  # an unhashable id (list, dict)
        known = False
    if not known:
        raise InputError(f"{path}: {name} refers to unknown image {entry['image_id']!r}")
