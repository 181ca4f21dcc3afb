"""Shape maps: the first principal components of a layer's feature vectors (rCAM, sec. 3.2).

Each spatial position of a (C, h, w) feature map is one sample of a C-dimensional vector; a PCA
over the h*w samples of one image gives k maps that condense the layer (Ha et al. use the
first 3 components of GoogLeNet's stride-8 response maps as the shape guide of their guided
filter). Which layers: :func:`select_shape_layers` (one per x2 step) and
:func:`shape_layer_groups` (every response map of that size, the paper's ``C^l``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from wsolkit.errors import InputError, LayerError
from wsolkit.models.layers import ModuleProbe, probe_modules


@dataclass(frozen=True)
class ShapeMaps:
    """The first principal components of one image's feature map.

    Attributes:
        maps: (k, h, w) float32, each component's projections min-max scaled to [0, 1]
            (a component with zero variance is all zeros).
        explained_variance_ratio: (k,) float64 share of the total variance of each component,
            in descending order.
        loadings: (k, C) float64 unit principal directions, sign-fixed as ``maps``.
    """

    maps: np.ndarray
    explained_variance_ratio: np.ndarray
    loadings: np.ndarray

    def guide(self) -> np.ndarray:
        """The maps as an OpenCV guide image: (h, w, k) float32, C-contiguous."""
        return np.ascontiguousarray(self.maps.transpose(1, 2, 0))


def pca_shape_maps(features: torch.Tensor | np.ndarray, components: int = 3) -> ShapeMaps:
    """PCA of the feature vectors of one image, as k maps at the features' resolution.

    The h*w positions are the samples and the C channels the variables: every channel is
    centered on its spatial mean, and the principal directions are the eigenvectors of the
    (C, C) scatter matrix (of the (h*w, h*w) Gram matrix when there are fewer positions than
    channels; both give the exact PCA). Components beyond the data's rank have zero variance
    and give all-zero maps. Computed in float64 with torch on the CPU, on one
    thread (the matrices are small; the caller's thread setting is restored).

    Sign convention: a principal direction's sign is arbitrary, so each component is flipped
    to make its projection of largest magnitude positive: the position farthest from the mean
    along the component maps to 1 after scaling. (The guided filter does not care: it fits a
    local linear model of the guide and is invariant to a contrast inversion.)

    Args:
        features: (C, h, w) floating tensor or array (not modified).
        components: number of components k; at most ``min(C, h * w)``.

    Returns:
        :class:`ShapeMaps` with (k, h, w) maps in [0, 1] and their explained variance ratios.

    Raises:
        InputError: wrong rank or dtype, non-finite values, or too many components.
    """
    tensor = _as_tensor(features, 3, "(C, h, w)")
    return pca_shape_maps_batch(tensor[None], components)[0]


def pca_shape_maps_batch(features: torch.Tensor | np.ndarray, components: int = 3,
                         center: bool = True) -> list[ShapeMaps]:
    """:func:`pca_shape_maps` of every image of an (N, C, h, w) batch, computed batched.

    ``center=False`` skips the centering: the directions are then the top right singular
    vectors of the raw (h*w, C) matrix, as in Eigen-CAM's SVD.
    """
    tensor = _as_tensor(features, 4, "(N, C, h, w)")
    count, channels, height, width = tensor.shape
    samples = height * width
    if isinstance(components, bool) or not isinstance(components, (int, np.integer)) \
            or not 1 <= components <= min(channels, samples):
        raise InputError(
            f"components={components!r}: must be an integer in 1..{min(channels, samples)} "
            f"for features of shape {tuple(tensor.shape[-3:])}"
        )
    with _one_thread():
        return _pca(tensor, components, center)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch's CPU ops on one thread, restoring the caller's setting afterwards.

    The PCA's matrices are small (at most a few thousand positions by ~100 channels): split
    over threads they cost 5-8x more (thread start-up and synchronization; measured on two
    busy cores), so the PCA always runs on one.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _pca(tensor: torch.Tensor, components: int, center: bool = True) -> list[ShapeMaps]:
    count, channels, height, width = tensor.shape
    samples = height * width
    data = tensor.detach().to("cpu", torch.float64).reshape(count, channels, samples)
    if center:
        data = data - data.mean(dim=2, keepdim=True)
    data = data.transpose(1, 2)  # (N, samples, C)
    total = data.square().sum(dim=(1, 2))  # (N,)
    if channels <= samples:
        values, vectors = torch.linalg.eigh(data.transpose(1, 2) @ data)  # ascending
        values = values.flip(-1)[:, :components].clamp(min=0)
        loadings = vectors.flip(-1)[:, :, :components]  # (N, C, k)
        projections = data @ loadings  # (N, samples, k)
    else:
        values, vectors = torch.linalg.eigh(data @ data.transpose(1, 2))
        values = values.flip(-1)[:, :components].clamp(min=0)
        left = vectors.flip(-1)[:, :, :components]  # (N, samples, k)
        singular = values.sqrt()
        projections = left * singular[:, None, :]  # U S
        safe = torch.where(singular > 0, singular, torch.ones_like(singular))
        loadings = data.transpose(1, 2) @ left / safe[:, None, :]  # V = X^T U / S
    peak = projections.abs().argmax(dim=1, keepdim=True)  # (N, 1, k)
    flip = torch.sign(projections.gather(1, peak))
    flip = torch.where(flip == 0, torch.ones_like(flip), flip)
    projections, loadings = projections * flip, loadings * flip
    safe_total = torch.where(total > 0, total, torch.ones_like(total))
    ratios = torch.where(total[:, None] > 0, values / safe_total[:, None],
                         torch.zeros_like(values))
    low = projections.amin(dim=1, keepdim=True)
    span = projections.amax(dim=1, keepdim=True) - low
    keep = (ratios[:, None, :] > 1e-10) & (span > 0)
    maps = torch.where(keep, (projections - low) / torch.where(span > 0, span, 1.0), 0.0)
    maps = maps.transpose(1, 2).reshape(count, components, height, width)
    return [
        ShapeMaps(maps[i].float().numpy(), ratios[i].numpy(), loadings[i].T.contiguous().numpy())
        for i in range(count)
    ]


def _as_tensor(features: object, ndim: int, layout: str) -> torch.Tensor:
    if isinstance(features, np.ndarray):
        if not np.issubdtype(features.dtype, np.floating):
            raise InputError(f"features must be floating point, got {features.dtype}")
        features = torch.from_numpy(features)
    elif not isinstance(features, torch.Tensor):
        raise InputError(
            f"features must be a {layout} tensor or array, got {type(features).__name__}"
        )
    if not features.is_floating_point():
        raise InputError(f"features must be floating point, got {features.dtype}")
    if features.ndim != ndim or 0 in features.shape:
        raise InputError(f"features must be a non-empty {layout} map, got {tuple(features.shape)}")
    if not torch.isfinite(features).all():
        raise InputError("features contain NaN or infinite values")
    return features


# ------------------------------------------------------------------------- shape layers

def _before(probe: ModuleProbe, feature_layer: str) -> list[str]:
    """4-D outputs of modules that run once and complete before ``feature_layer``."""
    shapes = probe.shapes
    if feature_layer not in shapes or len(shapes[feature_layer]) != 4:
        raise LayerError(f"layer {feature_layer!r} did not output an (N, C, h, w) map")
    names = probe.order[:probe.order.index(feature_layer)]
    return [name for name in names if probe.calls[name] == 1 and len(shapes[name]) == 4]


def select_shape_layers(module: nn.Module, sample: torch.Tensor, feature_layer: str,
                        steps: int = 2) -> tuple[str, ...]:
    """The shape layers of the x2 steps: modules at 2x, 4x, ... the CAM resolution.

    Runs ``module`` once on ``sample`` with temporary hooks on every module. For each factor
    f = 2, 4, ..., 2**steps, the candidates are the modules that run once, complete before
    ``feature_layer`` does and output an (N, C, H, W) map with ``H = ceil``-compatible to f
    times the CAM's height (``f * (h - 1) < H <= f * h``, the same for the width). Of the least
    nested candidates (fewest dots in the name: whole stages rather than their inner convs),
    the last to complete is chosen. Factors without a candidate are skipped. The probe is
    cached per module and input size.

    Raises:
        LayerError: no layer at 2x or 4x the CAM resolution (name ``shape_layers``).
    """
    probe = probe_modules(module, sample)
    before = _before(probe, feature_layer)
    height, width = probe.shapes[feature_layer][2:]
    chosen = []
    for power in range(1, steps + 1):
        factor = 2 ** power
        candidates = [
            name for name in before
            if factor * (height - 1) < probe.shapes[name][2] <= factor * height
            and factor * (width - 1) < probe.shapes[name][3] <= factor * width
        ]
        if candidates:
            depth = min(name.count(".") for name in candidates)
            chosen.append([name for name in candidates if name.count(".") == depth][-1])
    if not chosen:
        raise LayerError(
            f"no layer at 2x or 4x the {height}x{width} resolution of {feature_layer!r}; "
            "name the shape layers with RCAMConfig(shape_layers=...)"
        )
    return tuple(chosen)


def shape_layer_groups(module: nn.Module, sample: torch.Tensor, feature_layer: str,
                       layers: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    """Per shape layer, the group of every response map of its size (the paper's ``C^l``).

    Ha et al. gather all of GoogLeNet's response maps of one size l x l into ``C^l`` and run
    the PCA over the group. For any network: of the modules that run once before
    ``feature_layer`` and output maps of the shape layer's size, those one level below the
    least nested ones (the blocks inside the stages: their outputs are the network's
    successive response maps, while a stage's own output repeats its last block's), plus the
    least nested ones with no such block (e.g. a stem convolution).
    The EfficientNet-Lite0 at 224: ``features.stage3`` -> its 2 blocks at 28x28;
    ``features.stage5`` -> the 3 blocks of ``stage4`` and the 3 of ``stage5`` at 14x14.

    Returns:
        One tuple of layer names per entry of ``layers``, in completion order (the shape
        layer itself, when it has no children of its size, is in its group).

    Raises:
        LayerError: a layer that did not output an (N, C, h, w) map before ``feature_layer``.
    """
    probe = probe_modules(module, sample)
    before = _before(probe, feature_layer)
    groups = []
    for layer in layers:
        if layer not in before:
            raise LayerError(f"shape layer {layer!r} did not output an (N, C, h, w) map once "
                             f"before {feature_layer!r}")
        size = tuple(probe.shapes[layer][2:])
        same = [name for name in before if tuple(probe.shapes[name][2:]) == size]
        depth = min(name.count(".") for name in same)
        members = [name for name in same if name.count(".") == depth + 1]
        members += [top for top in same if top.count(".") == depth
                    and not any(name.startswith(top + ".") for name in members)]
        order = {name: index for index, name in enumerate(probe.order)}
        groups.append(tuple(sorted(dict.fromkeys(members), key=order.__getitem__)))
    return tuple(groups)
