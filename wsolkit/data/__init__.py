"""Readers for image files, command-line image inputs and localization datasets.

Every dataset reader is a sequence of :class:`Sample` with ``root``, ``kind``,
``class_names`` and ``image_ids``; :func:`open_dataset` picks the reader from the files.
"""

from wsolkit.data.base import SampleDataset
from wsolkit.data.coco import CocoDataset
from wsolkit.data.detect import open_dataset
from wsolkit.data.images import IMAGE_EXTENSIONS, MAX_SIDE, MIN_SIDE, expand_paths, load_image
from wsolkit.data.mask_folder import MaskFolderDataset, mask_box
from wsolkit.data.sample import Sample
from wsolkit.data.voc import VOC_CLASSES, VocDataset
from wsolkit.data.wsol_metadata import WSOLMetadataDataset

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_SIDE",
    "MIN_SIDE",
    "VOC_CLASSES",
    "CocoDataset",
    "MaskFolderDataset",
    "Sample",
    "SampleDataset",
    "VocDataset",
    "WSOLMetadataDataset",
    "expand_paths",
    "load_image",
    "mask_box",
    "open_dataset",
]
