"""`open_dataset`: open a localization dataset folder or file, detecting its format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wsolkit.data.base import SampleDataset
from wsolkit.data.coco import CocoDataset
from wsolkit.data.mask_folder import MaskFolderDataset
from wsolkit.data.voc import VocDataset
from wsolkit.data.wsol_metadata import WSOLMetadataDataset
from wsolkit.errors import InputError

__all__ = ["open_dataset"]

_EXPECTED = (
    "a wsolevaluation metadata folder with image_ids.txt, a folder with images/ and masks/, "
    "a COCO .json file or a folder with one instances*.json, or a VOC folder with "
    "Annotations/ or .xml files"
)


def open_dataset(path: str | Path, **options: Any) -> SampleDataset:
    """Open a dataset, choosing the reader from what ``path`` holds.

    Checked in this order:

    1. a folder with ``image_ids.txt``: :class:`WSOLMetadataDataset` (with
       ``require_boxes=False`` when it has no ``localization.txt``);
    2. a folder with ``images/`` and ``masks/``: :class:`MaskFolderDataset`;
    3. a ``.json`` file, or a folder with exactly one ``instances*.json``: :class:`CocoDataset`;
    4. a folder with ``Annotations/`` or ``.xml`` files: :class:`VocDataset`.

    Args:
        path: The dataset folder or COCO JSON file.
        **options: Passed to the reader's constructor (e.g. ``split="val"`` for VOC).

    Returns:
        The reader, a sequence of :class:`~wsolkit.data.sample.Sample`.

    Raises:
        InputError: ``path`` is missing, its format is unknown, a folder holds several
            ``instances*.json`` files, or the reader rejects the data.
    """
    root = Path(path)
    if root.is_file():
        if root.suffix.lower() == ".json":
            return CocoDataset(root, **options)
        raise InputError(f"{root}: unknown dataset format (expected {_EXPECTED})")
    if not root.is_dir():
        raise InputError(f"{root}: dataset not found")
    if (root / "image_ids.txt").is_file():
        options.setdefault("require_boxes", (root / "localization.txt").is_file())
        return WSOLMetadataDataset(root, **options)
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return MaskFolderDataset(root, **options)
    instances = sorted(p for p in root.glob("instances*.json") if p.is_file())
    if len(instances) == 1:
        return CocoDataset(instances[0], **options)
    if len(instances) > 1:
        names = ", ".join(p.name for p in instances)
        raise InputError(f"{root}: several COCO files ({names}); give the .json file itself")
    if (root / "Annotations").is_dir() or any(
        p.suffix.lower() == ".xml" for p in root.iterdir() if p.is_file()
    ):
        return VocDataset(root, **options)
    raise InputError(f"{root}: unknown dataset format (expected {_EXPECTED})")
