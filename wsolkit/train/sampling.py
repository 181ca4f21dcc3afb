"""Training-set sampling: a seeded train/validation split and class-balanced oversampling.

Oversampling follows Bency et al. (ECCV 2016, sec. 4.1: samples of under-represented classes are
repeated, each repeat augmented). For multi-label images exact balance is not possible, so each
class gets a *repeat factor* and each image the largest factor of its labels (as in the repeat
factor sampling of LVIS, Gupta et al. 2019):

``r_c = min(max_repeat, (n_max / n_c) ** balance)``,  ``r_image = max(r_c for c in labels)``

with ``n_c`` the number of training images showing class ``c`` and ``n_max`` the largest
``n_c``. ``balance=1`` aims at equal counts (up to ``max_repeat``), ``balance=0`` turns
oversampling off. An epoch shows each image ``floor(r)`` times plus once more with probability
``r - floor(r)``, in a shuffled order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from wsolkit.errors import InputError

__all__ = ["class_balanced_epoch", "repeat_factors", "split_train_val"]


def split_train_val(count: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(count)`` into sorted train and validation indices, by ``seed``.

    Args:
        count: Number of items.
        val_fraction: Fraction in [0, 1) held out for validation (rounded; at least one item
            when positive and ``count >= 2``; at least one item always stays for training).
        seed: The same seed gives the same split.

    Raises:
        InputError: ``val_fraction`` is outside [0, 1) or there is nothing to train on.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"val_fraction must be in [0, 1); got {val_fraction}")
    if count < 1:
        raise InputError("no images to train on")
    n_val = round(count * val_fraction)
    if val_fraction > 0:
        n_val = max(n_val, 1)
    n_val = min(n_val, count - 1)
    order = np.random.default_rng(seed).permutation(count)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def repeat_factors(
    label_sets: Sequence[Sequence[int]],
    num_classes: int,
    balance: float = 0.5,
    max_repeat: float = 4.0,
) -> np.ndarray:
    """Per-image repeat factors (>= 1) of class-balanced oversampling (see the module doc).

    Args:
        label_sets: The image-level class indices of each image.
        num_classes: Number of classes.
        balance: Exponent in [0, 1]; 0 turns oversampling off, 1 aims at equal class counts.
        max_repeat: Largest repeat factor (>= 1), bounding the epoch length.

    Returns:
        (N,) float64 factors; images without labels get 1.

    Raises:
        InputError: ``balance`` or ``max_repeat`` out of range, or a label out of range.
    """
    if not 0.0 <= balance <= 1.0:
        raise InputError(f"balance must be in [0, 1]; got {balance}")
    if max_repeat < 1.0:
        raise InputError(f"max_repeat must be >= 1; got {max_repeat}")
    counts = np.zeros(num_classes, np.int64)
    for labels in label_sets:
        for label in set(labels):
            if not 0 <= label < num_classes:
                raise InputError(f"label {label} is outside 0..{num_classes - 1}")
            counts[label] += 1
    present = counts > 0
    class_factor = np.ones(num_classes)
    if present.any():
        ratio = counts.max() / np.where(present, counts, 1)
        class_factor = np.minimum(max_repeat, ratio ** balance)
    return np.array(
        [max((class_factor[c] for c in labels), default=1.0) for labels in label_sets],
        np.float64,
    )


def class_balanced_epoch(factors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The image indices of one epoch: image ``i`` about ``factors[i]`` times, shuffled.

    Args:
        factors: (N,) repeat factors from :func:`repeat_factors`.
        rng: Draws the rounding of fractional factors and the order.

    Returns:
        int64 indices into the N images.
    """
    factors = np.asarray(factors, np.float64)
    whole = np.floor(factors)
    repeats = whole + (rng.random(factors.shape) < factors - whole)
    indices = np.repeat(np.arange(factors.size), repeats.astype(np.int64))
    return rng.permutation(indices)
