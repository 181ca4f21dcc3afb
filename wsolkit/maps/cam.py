"""CAM (Zhou et al., CVPR 2016): class weights of the linear head applied to the feature maps."""

from __future__ import annotations

import torch

from wsolkit.errors import LayerError, TargetError
from wsolkit.maps.base import ForwardPass, HeatmapMethod
from wsolkit.models.layers import find_linear


class CAM(HeatmapMethod):
    """``M_c = sum_k W[c, k] F_k``, with W the weights of the global-average-pool + linear head.

    The head's bias is left out, as in the paper; no ReLU (negative evidence stays below zero
    before min-max normalization, as in the original CAM and the wsolevaluation protocol).
    """

    name = "cam"
    summary = "class activation map: linear-head weights of the target class times feature maps"
    relu = False

    def layer_map(self, forward: ForwardPass) -> torch.Tensor:
        """Weight the hooked features by the target class's row of the linear head."""
        if forward.targets.score_fn is not None:
            raise TargetError("cam needs class targets, not a callable")
        head = self.classifier.cam_head(forward.images)
        fc = find_linear(self.module, head.fc_layer)
        channels = forward.activations.shape[1]
        if fc.in_features != channels:
            raise LayerError(
                f"cam: layer {forward.layer!r} has {channels} channels but {head.fc_layer!r} "
                f"takes {fc.in_features}; use the layer feeding the pooled linear head"
            )
        weights = fc.weight.detach()[forward.targets.classes.to(fc.weight.device)]
        # one matrix product per distinct image, also when it explains every class
        return forward.weighted_sum(weights.to(forward.activations))
