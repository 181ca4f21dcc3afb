"""Readers for image files, command-line image inputs and WSOL datasets."""

from wsolkit.data.images import IMAGE_EXTENSIONS, MAX_SIDE, MIN_SIDE, expand_paths, load_image
from wsolkit.data.wsol_metadata import WSOLMetadataDataset, WSOLSample

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_SIDE",
    "MIN_SIDE",
    "WSOLMetadataDataset",
    "WSOLSample",
    "expand_paths",
    "load_image",
]
