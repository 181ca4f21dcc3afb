"""Array checks and conversions shared by every stage (the one home for them).

Each check raises :class:`~wsolkit.errors.InputError` with a one-line message that names the
argument (``name``), and returns a new array, so callers never modify their input. Nothing here
imports from wsolkit but the errors, so any stage (maps, refine, eval, viz, apps) may use it.

>>> import numpy as np
>>> check_heatmap(np.array([[0.0, 0.5], [1.0, 0.25]])).dtype
dtype('float64')
>>> check_heatmap(np.array([[0.0, 2.0]]))
Traceback (most recent call last):
    ...
wsolkit.errors.InputError: heatmap values must lie in [0, 1], got min 0 and max 2
>>> normalize_minmax(np.array([[2.0, 4.0], [3.0, 2.0]]))
array([[0. , 1. ],
       [0.5, 0. ]])
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from wsolkit.errors import InputError

__all__ = ["RANGE_TOLERANCE", "check_boxes", "check_heatmap", "check_integer", "check_labels",
           "check_scores", "check_unit_range", "normalize_minmax", "to_numpy"]

RANGE_TOLERANCE = 1e-6
"""Slack of the [0, 1] check for maps that went through float32 arithmetic (refine, viz); the
metrics in ``eval/`` check the exact range."""


def to_numpy(value: Any, name: str = "array", *, array_like: bool = False) -> np.ndarray:
    """A numpy array of a numpy array or a (CPU or GPU) torch tensor, detached.

    Args:
        value: the array.
        name: the argument's name, for the error message.
        array_like: also accept anything ``np.asarray`` takes (lists, scalars); otherwise
            only numpy arrays and torch tensors are accepted.

    Returns:
        The numpy array itself (not a copy) or the tensor's values.

    Raises:
        InputError: ``value`` is neither, when ``array_like`` is False.
    """
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    if not array_like:
        raise InputError(f"{name} must be a numpy array or torch tensor, got "
                         f"{type(value).__name__}")
    return np.asarray(value)


def check_unit_range(values: np.ndarray, name: str = "heatmap",
                     tolerance: float = 0.0) -> None:
    """Require every non-NaN value of a real array in ``[-tolerance, 1 + tolerance]``.

    NaNs are skipped (a map of NaNs only passes); reject them first where they are wrong.

    Raises:
        InputError: naming ``name`` with the smallest and largest value.
    """
    if values.size == 0:
        return
    low = float(np.fmin.reduce(values, axis=None))
    high = float(np.fmax.reduce(values, axis=None))
    if low < -tolerance or high > 1.0 + tolerance:
        raise InputError(f"{name} values must lie in [0, 1], got min {low:.6g} and max "
                         f"{high:.6g}")


def check_heatmap(
    value: Any,
    name: str = "heatmap",
    *,
    ndim: int = 2,
    array_like: bool = False,
    allow_nan: bool = False,
    allow_inf: bool = False,
    unit_range: bool = True,
    tolerance: float = 0.0,
) -> np.ndarray:
    """Validate a non-empty real map (or stack of maps); return it as a float64 copy.

    Args:
        value: ``(H, W)`` map (``ndim=2``) or ``(C, H, W)`` stack (``ndim=3``), numpy or torch;
            bool and integer values count as real.
        name: the argument's name, for the error messages.
        ndim: 2 or 3.
        array_like: also accept lists and other array-likes (see :func:`to_numpy`).
        allow_nan: let NaN values through (callers that map them to something, such as
            :func:`normalize_minmax`, which makes a NaN map zeros).
        allow_inf: let infinite values through.
        unit_range: require the values in [0, 1] (see :func:`check_unit_range`).
        tolerance: slack of the [0, 1] bounds, for maps that went through float32 arithmetic.

    Raises:
        InputError: not an array, wrong rank, empty, not real, NaN or inf (unless allowed), or
            outside [0, 1] (when ``unit_range``).
    """
    array = to_numpy(value, name, array_like=array_like)
    layout = "(H, W)" if ndim == 2 else "(C, H, W)"
    if array.ndim != ndim:
        raise InputError(f"{name} must be {ndim}-D {layout}, got shape {tuple(array.shape)}")
    if array.size == 0:
        raise InputError(f"{name} must not be empty, got shape {tuple(array.shape)}")
    if array.dtype.kind not in "fiub":
        raise InputError(f"{name} must hold real numbers, got dtype {array.dtype}")
    values = array.astype(np.float64)
    if not np.isfinite(values).all():
        has_nan, has_inf = bool(np.isnan(values).any()), bool(np.isinf(values).any())
        if (has_nan and not allow_nan) or (has_inf and not allow_inf):
            what = ("NaN or inf" if not (allow_nan or allow_inf)
                    else "inf" if allow_nan else "NaN")
            raise InputError(f"{name} contains {what}")
    if unit_range:
        check_unit_range(values, name, tolerance)
    return values


def check_integer(value: Any, name: str, minimum: int) -> int:
    """Validate an integer (Python or numpy, not bool) ``>= minimum``; return it as ``int``.

    Raises:
        InputError: ``{name} must be an integer >= {minimum}, got {value!r}``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_boxes(value: Any, name: str = "boxes", *, array_like: bool = False,
                ordered: bool = False) -> np.ndarray:
    """Validate ``(K, 4)`` ``x0, y0, x1, y1`` boxes (``K`` may be 0); return a float64 copy.

    Args:
        value: the boxes, numpy or torch.
        name: the argument's name, for the error messages.
        array_like: also accept lists and other array-likes (see :func:`to_numpy`).
        ordered: also require ``x0 <= x1`` and ``y0 <= y1``.

    Raises:
        InputError: not ``(K, 4)``, not real, not finite, or (``ordered``) a reversed box.
    """
    boxes = to_numpy(value, name, array_like=array_like)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise InputError(f"{name} must have shape (K, 4), got {tuple(boxes.shape)}")
    if boxes.size and boxes.dtype.kind not in "fiu":
        raise InputError(f"{name} must hold real numbers, got dtype {boxes.dtype}")
    boxes = boxes.astype(np.float64)
    if not np.isfinite(boxes).all():
        raise InputError(f"{name} must be finite")
    if ordered and ((boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any()):
        raise InputError(f"{name} must be x0, y0, x1, y1 with x0 <= x1 and y0 <= y1")
    return boxes


def _check_vector(value: Any, name: str, length: int, kinds: str, what: str) -> np.ndarray:
    """A ``(length,)`` array of dtype kind in ``kinds`` (``what`` names them)."""
    array = to_numpy(value, name, array_like=True)
    if array.shape != (length,):
        raise InputError(f"{name} must have shape ({length},), got {array.shape}")
    if array.size and array.dtype.kind not in kinds:
        raise InputError(f"{name} must hold {what}, got dtype {array.dtype}")
    return array


def check_scores(value: Any, name: str, length: int) -> np.ndarray:
    """Validate ``(length,)`` finite real scores (numpy, torch or a sequence); float64 copy.

    Raises:
        InputError: wrong shape, not real, or not finite.
    """
    scores = _check_vector(value, name, length, "fiub", "real numbers").astype(np.float64)
    if not np.isfinite(scores).all():
        raise InputError(f"{name} must be finite")
    return scores


def check_labels(value: Any, name: str, length: int, num_classes: int) -> np.ndarray:
    """Validate ``(length,)`` integer class indices in ``[0, num_classes)``; int64 copy.

    Raises:
        InputError: wrong shape, not integers, or out of range.
    """
    labels = _check_vector(value, name, length, "iu", "integer class indices")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise InputError(f"{name} must be class indices in [0, {num_classes}), got min "
                         f"{labels.min()}, max {labels.max()}")
    return labels


def normalize_minmax(maps: Any) -> Any:
    """Min-max normalize each map to [0, 1] over its last two (H, W) dimensions.

    A constant map, or one holding a NaN, becomes all zeros. Torch in, torch out (same dtype
    and device); numpy in, numpy out (float input keeps its dtype, other input becomes
    float64). The input is not modified.

    Args:
        maps: ``(..., H, W)`` torch tensor or numpy array.
    """
    if isinstance(maps, torch.Tensor):
        low = maps.amin(dim=(-2, -1), keepdim=True)
        span = maps.amax(dim=(-2, -1), keepdim=True) - low
        safe = torch.where(span > 0, span, torch.ones_like(span))  # NaN > 0 is False
        return torch.where(span > 0, (maps - low) / safe, torch.zeros_like(maps))
    array = np.asarray(maps)
    if array.dtype.kind != "f":
        array = array.astype(np.float64)
    low = array.min(axis=(-2, -1), keepdims=True)
    span = array.max(axis=(-2, -1), keepdims=True) - low
    with np.errstate(invalid="ignore"):
        valid = span > 0  # NaN > 0 is False
    out = np.zeros_like(array)
    np.divide(array - low, span, out=out, where=valid)
    return out
