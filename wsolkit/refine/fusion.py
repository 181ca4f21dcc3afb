"""Probability-weighted fusion of two maps (rCAM's eq. 5) and per-map min-max scaling."""

from __future__ import annotations

import numpy as np

from wsolkit.checks import normalize_minmax
from wsolkit.errors import InputError


def fuse(rcam1: np.ndarray, p1: float | np.ndarray, rcam2: np.ndarray,
         p2: float | np.ndarray, normalize: bool = True) -> np.ndarray:
    """``rCAM_3 = rCAM_1 * P_1(c) + rCAM_2 * P_2(c)`` (eq. 5), then min-max per map.

    Args:
        rcam1: (H, W) or (N, H, W) map of scale 1 (at the input size).
        p1: probability of the target class at scale 1: a scalar or (N,).
        rcam2: map of scale 2, the same shape as ``rcam1``.
        p2: probability at scale 2: a scalar or (N,).
        normalize: min-max normalize each fused map to [0, 1] (a constant map becomes 0).

    Returns:
        float32 map(s) of ``rcam1``'s shape.
    """
    first = np.asarray(rcam1, dtype=np.float32)
    second = np.asarray(rcam2, dtype=np.float32)
    if first.shape != second.shape or first.ndim not in (2, 3):
        raise InputError(
            f"rcam1 and rcam2 must be (H, W) or (N, H, W) of one shape, got {first.shape} "
            f"and {second.shape}"
        )
    weights = [np.asarray(p, dtype=np.float32) for p in (p1, p2)]
    if first.ndim == 3:
        if any(w.size not in (1, first.shape[0]) for w in weights):
            raise InputError(f"p1 and p2 must be scalars or ({first.shape[0]},) for "
                             f"{first.shape[0]} maps")
        weights = [np.broadcast_to(w.reshape(-1), (first.shape[0],))[:, None, None]
                   for w in weights]
    elif any(w.size != 1 for w in weights):
        raise InputError("p1 and p2 must be scalars for (H, W) maps")
    else:
        weights = [w.reshape(()) for w in weights]
    fused = first * weights[0] + second * weights[1]
    fused = fused.astype(np.float32)
    return normalize_minmax(fused) if normalize else fused
