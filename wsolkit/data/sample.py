"""`Sample`: one image of a localization dataset, the same whatever the file format."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MaskLoader = Callable[[], tuple[np.ndarray, np.ndarray]]
InstanceMaskLoader = Callable[[], np.ndarray]


def empty_boxes() -> np.ndarray:
    """A (0, 4) float32 box array."""
    return np.zeros((0, 4), np.float32)


@dataclass(frozen=True)
class Sample:
    """One image with its ground truth.

    Attributes:
        image_id: identifier unique in the dataset (wsolevaluation: the relative image path).
        path: image file; not opened or checked by the readers.
        labels: image-level class indices (one for ImageNet-style sets, several for COCO/VOC,
            possibly none).
        boxes: (K, 4) float32 ``x0, y0, x1, y1`` in pixel-edge coordinates of the image file
            (``x1 = x0 + width``; wsolevaluation's inclusive corners get +1 on x1 and y1).
        box_labels: (K,) int64 class of each box (-1 when the format has none).
        box_ignore: (K,) bool, boxes to leave out of scoring (VOC ``difficult``, COCO
            ``iscrowd``).
        size: (width, height) of the image when the metadata gives it, else None.
        mask_loader: returns ``(foreground, ignore)`` bool (H, W) masks, or None if the
            dataset has no masks.
        instance_mask_loader: returns (K, H, W) bool masks aligned with ``boxes``
            (COCO polygons/RLE), or None.
    """

    image_id: str
    path: Path
    labels: tuple[int, ...] = ()
    boxes: np.ndarray = field(default_factory=empty_boxes)
    box_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    box_ignore: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    size: tuple[int, int] | None = None
    mask_loader: MaskLoader | None = field(default=None, compare=False, repr=False)
    instance_mask_loader: InstanceMaskLoader | None = field(
        default=None, compare=False, repr=False
    )

    @property
    def label(self) -> int:
        """The first image-level label, -1 when there is none."""
        return self.labels[0] if self.labels else -1

    @property
    def has_mask(self) -> bool:
        """True when :meth:`load_mask` can give a mask."""
        return self.mask_loader is not None

    def load_mask(self) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(foreground, ignore)`` (H, W) bool masks.

        Raises:
            InputError: when the dataset has no masks or a mask file is bad.
        """
        if self.mask_loader is None:
            from wsolkit.errors import InputError

            raise InputError(f"{self.image_id}: the dataset has no masks")
        return self.mask_loader()
