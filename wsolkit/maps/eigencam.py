"""Eigen-CAM / PC1: the first principal component of a layer's feature vectors.

Muhammad and Yeasin (IJCNN 2020) project the (h*w, C) activations of a layer onto their first
right singular vector (no centering, class-agnostic). "CAM Back Again" (Yasuki and Taki,
CVPR 2024) localizes with the first principal component of the feature map ("PC1"). Both are
:func:`wsolkit.maps.shape.pca_shape_maps_batch` with one component: ``center=True`` (default)
is the PCA, ``center=False`` Eigen-CAM's SVD.
"""

from __future__ import annotations

import torch

from wsolkit.maps.base import ForwardPass, HeatmapMethod
from wsolkit.maps.shape import pca_shape_maps_batch


class EigenCAM(HeatmapMethod):
    """Projection of each position's feature vector on the layer's first principal direction.

    A principal direction's sign is arbitrary; it is fixed so that the projection rises with
    the channel sum (the direction's loadings sum to a positive number): the map then agrees
    with MASON's objectness (the sum of the feature maps) on where the layer responds. Were the
    loadings to sum to exactly 0, the sign of :func:`~wsolkit.maps.shape.pca_shape_maps` stays
    (largest projection positive). No ReLU: the whole projection is min-max normalized.
    The target class is not used.

    Args:
        center: subtract each channel's spatial mean first (PCA, "PC1"); False gives the
            uncentered SVD of the original Eigen-CAM.
    """

    name = "eigencam"
    summary = "Eigen-CAM / PC1: first principal component of a layer's features (class-agnostic)"
    relu = False

    def __init__(self, *args, center: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.center = center

    def layer_map(self, forward: ForwardPass) -> torch.Tensor:
        """``(F - mean F) . v1`` per position (``F . v1`` without centering)."""
        features = forward.activations.detach()
        count, channels = features.shape[:2]
        data = features.to("cpu", torch.float64).reshape(count, channels, -1)
        if self.center:
            data = data - data.mean(dim=2, keepdim=True)
        found = pca_shape_maps_batch(features, components=1, center=self.center)
        loadings = torch.stack([torch.from_numpy(shape.loadings[0]) for shape in found])
        sums = loadings.sum(dim=1, keepdim=True)
        loadings = torch.where(sums < 0, -loadings, loadings)
        projection = torch.einsum("nk,nkp->np", loadings, data)
        return projection.reshape(count, *features.shape[2:]).to(features.device, torch.float32)
