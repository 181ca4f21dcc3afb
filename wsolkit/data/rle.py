"""COCO run-length encoding of masks (the ``segmentation`` of COCO results), without pycocotools.

A mask is read in column-major order (down the first column, then the next); ``counts``
alternates runs of 0s and 1s and starts with a run of 0s (of length 0 when the first pixel is
foreground). The compressed form is COCO's string: each count (from the fourth on, minus the
count two places before it) in 5-bit groups, low group first, a continuation bit 0x20, every
character offset by 48 (``rleToString`` in the COCO API's ``maskApi.c``).
"""

from __future__ import annotations

import numpy as np

from wsolkit.errors import InputError

__all__ = ["decode_rle", "encode_rle", "rle_counts", "rle_string", "string_counts"]


def rle_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO counts of an (H, W) mask (column-major runs, 0s first)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InputError(f"mask: expected (H, W), got shape {mask.shape}")
    flat = mask.astype(bool).ravel(order="F")
    if flat.size == 0:
        return [0]
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate(([0], changes, [flat.size]))
    runs = np.diff(edges).tolist()
    return [0, *runs] if flat[0] else runs


def rle_string(counts: list[int]) -> str:
    """COCO's compressed string of uncompressed counts."""
    out = []
    for index, count in enumerate(counts):
        value = int(count) - (int(counts[index - 2]) if index > 2 else 0)
        more = True
        while more:
            group = value & 0x1F
            value >>= 5  # arithmetic shift: a negative difference ends at -1
            more = value != -1 if group & 0x10 else value != 0
            if more:
                group |= 0x20
            out.append(chr(group + 48))
    return "".join(out)


def string_counts(text: str) -> list[int]:
    """Counts of a COCO compressed string (the inverse of :func:`rle_string`)."""
    counts: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            group = ord(text[position]) - 48
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            position += 1
            shift += 5
            if not more and group & 0x10:
                value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def encode_rle(mask: np.ndarray, compressed: bool = True) -> dict:
    """COCO RLE of an (H, W) mask: ``{"size": [H, W], "counts": str | list[int]}``."""
    counts = rle_counts(mask)
    height, width = np.asarray(mask).shape
    return {"size": [int(height), int(width)],
            "counts": rle_string(counts) if compressed else counts}


def decode_rle(rle: dict) -> np.ndarray:
    """The (H, W) bool mask of a COCO RLE (compressed or not).

    Raises:
        InputError: the counts do not add up to H x W.
    """
    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    counts = string_counts(counts) if isinstance(counts, str) else [int(c) for c in counts]
    if sum(counts) != height * width or min(counts, default=0) < 0:
        raise InputError(f"RLE counts add up to {sum(counts)}, not {height}x{width}")
    values = np.zeros(len(counts), bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape((width, height)).T
