"""Reader for COCO-style instance annotation files (``instances_*.json``), via pycocotools.

One :class:`Sample` per image entry of the JSON, in file order, with:

- ``image_id``: the image's ``file_name`` (a path relative to the image folder); the COCO
  integer ids are in ``CocoDataset.coco_image_ids``, and ``CocoDataset.coco`` is the
  ``pycocotools.coco.COCO`` object (for ``COCOeval``).
- ``boxes``: each annotation's ``bbox`` ``[x, y, w, h]`` as edges ``x, y, x + w, y + h``
  (COCO boxes are already continuous pixel coordinates), in annotation order.
- ``box_labels``: contiguous class indices ``0..C-1`` in category-id order
  (``class_names[i]`` is the name and ``category_ids[i]`` the COCO id of index ``i``).
- ``labels``: the sorted unique ``box_labels`` (crowd annotations included).
- ``box_ignore``: the annotation's ``iscrowd``.
- ``instance_mask_loader``: ``(K, H, W)`` bool masks aligned with ``boxes`` from
  ``COCO.annToMask`` (polygons and RLE); ``mask_loader``: the union of the non-crowd instance
  masks as foreground and of the crowd masks (minus the foreground) as ignore. Both are None
  for an image with an annotation without ``segmentation``.

Annotations whose box has ``w <= 0`` or ``h <= 0`` are dropped (box, label and mask alike);
their number is ``CocoDataset.skipped``. Images left without annotations are skipped unless
``include_empty=True`` (then they have empty boxes and no labels). Image files are not opened.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from wsolkit.data.base import SampleDataset
from wsolkit.data.coco_json import bbox_edges, coco_image_dir, coco_images, read_json
from wsolkit.data.sample import Sample
from wsolkit.errors import InputError

__all__ = ["CocoDataset"]


def _make_coco(data: dict[str, Any]) -> Any:
    try:
        from pycocotools.coco import COCO
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise InputError(
            "reading COCO annotations needs pycocotools: pip install pycocotools"
        ) from exc
    with contextlib.redirect_stdout(io.StringIO()):  # COCO prints progress lines
        coco = COCO()
        coco.dataset = data
        coco.createIndex()
    return coco


def _instance_masks(
    coco: Any, anns: tuple[dict[str, Any], ...], shape: tuple[int, int], source: Path
) -> np.ndarray:
    """``(K, H, W)`` bool masks of ``anns`` (all of one image of ``shape`` (H, W))."""
    height, width = shape
    masks = np.zeros((len(anns), height, width), bool)
    for k, ann in enumerate(anns):
        segmentation = ann["segmentation"]
        if isinstance(segmentation, list) and not segmentation:
            continue
        try:
            with warnings.catch_warnings():
                # pycocotools' decode trips numpy 2's __array__ copy-keyword deprecation
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                masks[k] = coco.annToMask(ann) != 0
        except Exception as exc:  # pycocotools raises assorted types for bad polygons / RLE
            raise InputError(
                f"{source}: cannot decode the segmentation of annotation {ann.get('id')} "
                f"({type(exc).__name__}: {' '.join(str(exc).split())})"
            ) from exc
    return masks


def _union_masks(
    coco: Any,
    anns: tuple[dict[str, Any], ...],
    crowd: np.ndarray,
    shape: tuple[int, int],
    source: Path,
) -> tuple[np.ndarray, np.ndarray]:
    masks = _instance_masks(coco, anns, shape, source)
    foreground = masks[~crowd].any(axis=0)
    ignore = masks[crowd].any(axis=0) & ~foreground
    return foreground, ignore


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


class CocoDataset(SampleDataset):
    """Images, boxes, classes and instance masks of a COCO instance annotation file.

    Args:
        annotation_json: The ``instances*.json`` file.
        image_dir: Folder the ``file_name`` entries are relative to. By default the folder
            holding the JSON, or ``images/`` beside the JSON when the first image's file is
            not in the JSON's folder but ``images/`` exists.
        include_empty: Also give a sample for images without (kept) annotations.

    Attributes:
        root: The folder holding the JSON.
        kind: ``"coco"``.
        annotation_file: The JSON file.
        image_dir: The folder images are resolved against.
        category_ids: COCO category id of each class index.
        coco_image_ids: COCO image id of each sample, in dataset order.
        skipped: Number of annotations dropped for a box with ``w <= 0`` or ``h <= 0``.
        coco: The ``pycocotools.coco.COCO`` object of the whole file.

    Raises:
        InputError: The file is missing or not COCO JSON, an image entry lacks ``id``,
            ``file_name``, ``width`` or ``height``, an annotation has a malformed ``bbox`` or an
            unknown ``category_id`` (the message names the file and annotation id), or
            pycocotools is not installed.
    """

    kind = "coco"

    def __init__(
        self,
        annotation_json: str | Path,
        image_dir: str | Path | None = None,
        include_empty: bool = False,
    ) -> None:
        source = Path(annotation_json)
        self.annotation_file = source
        self.root = source.parent
        data = read_json(source, "COCO annotation file")
        coco_images(data, source)
        data.setdefault("annotations", [])
        data.setdefault("categories", [])
        for key in ("annotations", "categories"):
            if not isinstance(data[key], list):
                raise InputError(f"{source}: '{key}' must be a list")

        categories = self._read_categories(data["categories"], source)
        self.category_ids = [c for c, _ in categories]
        self._class_names = [name for _, name in categories]
        index_of = {c: i for i, c in enumerate(self.category_ids)}

        images: dict[int, dict[str, Any]] = {}
        file_names: set[str] = set()
        for number, image in enumerate(data["images"]):
            if (
                not isinstance(image, dict)
                or not all(k in image for k in ("id", "file_name", "width", "height"))
                or not all(_positive_int(image[k]) for k in ("width", "height"))
            ):
                raise InputError(
                    f"{source}: image entry {number} needs 'id', 'file_name' and positive "
                    f"integer 'width', 'height'"
                )
            if image["id"] in images:
                raise InputError(f"{source}: duplicate image id {image['id']}")
            if str(image["file_name"]) in file_names:
                raise InputError(f"{source}: duplicate file_name {image['file_name']!r}")
            file_names.add(str(image["file_name"]))
            images[image["id"]] = image

        self.skipped = 0
        per_image: dict[int, list[dict[str, Any]]] = {}
        for number, ann in enumerate(data["annotations"]):
            if not isinstance(ann, dict) or "id" not in ann or "image_id" not in ann:
                raise InputError(f"{source}: annotation entry {number} needs 'id' and 'image_id'")
            ann_id = ann["id"]
            try:
                known_category = ann.get("category_id") in index_of
            except TypeError:  # an unhashable category_id
                known_category = False
            if not known_category:
                raise InputError(
                    f"{source}: annotation {ann_id} has unknown category_id "
                    f"{ann.get('category_id')!r}"
                )
            bbox = ann.get("bbox")
            if (
                not isinstance(bbox, list | tuple)
                or len(bbox) != 4
                or not all(isinstance(v, int | float) and math.isfinite(v) for v in bbox)
            ):
                raise InputError(f"{source}: annotation {ann_id} needs 'bbox': [x, y, w, h]")
            if ann["image_id"] not in images:
                continue
            if bbox[2] <= 0 or bbox[3] <= 0:
                self.skipped += 1
                continue
            per_image.setdefault(ann["image_id"], []).append(ann)

        self.coco = _make_coco(data)
        first = str(data["images"][0]["file_name"]) if data["images"] else None
        self.image_dir = coco_image_dir(source, first, image_dir)
        self.coco_image_ids: list[int] = []
        self._records: list[tuple[dict[str, Any], tuple[dict[str, Any], ...]]] = []
        for image_id, image in images.items():
            anns = tuple(per_image.get(image_id, ()))
            if not anns and not include_empty:
                continue
            self.coco_image_ids.append(image_id)
            self._records.append((image, anns))
        self._image_ids = [str(image["file_name"]) for image, _ in self._records]
        self._index_of = index_of
        self._source = source

    @staticmethod
    def _read_categories(entries: list[Any], source: Path) -> list[tuple[int, str]]:
        found: dict[int, str] = {}
        for entry in entries:
            if not isinstance(entry, dict) or "id" not in entry or "name" not in entry:
                raise InputError(f"{source}: every category needs 'id' and 'name'")
            if entry["id"] in found:
                raise InputError(f"{source}: duplicate category id {entry['id']}")
            found[entry["id"]] = str(entry["name"])
        return sorted(found.items())

    def _sample(self, i: int) -> Sample:
        image, anns = self._records[i]
        boxes = np.array([bbox_edges(a["bbox"]) for a in anns], np.float64).reshape(-1, 4)
        box_labels = np.array([self._index_of[a["category_id"]] for a in anns], np.int64)
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], bool)
        has_masks = all("segmentation" in a for a in anns)
        width, height = int(image["width"]), int(image["height"])
        shape = (height, width)
        return Sample(
            image_id=self._image_ids[i],
            path=self.image_dir / str(image["file_name"]),
            labels=tuple(int(v) for v in np.unique(box_labels)),
            boxes=boxes.astype(np.float32),
            box_labels=box_labels,
            box_ignore=crowd,
            size=(width, height),
            mask_loader=partial(_union_masks, self.coco, anns, crowd, shape, self._source)
            if has_masks
            else None,
            instance_mask_loader=partial(_instance_masks, self.coco, anns, shape, self._source)
            if has_masks
            else None,
        )
