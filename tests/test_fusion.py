"""Layer fusion: a method at several layers, maps resized and combined, against a hand fusion.

The per-layer references are the hand computations of test_maps (features by running the
tiny model's modules, gradients by autograd on a leaf copy); the fusion is redone here with
plain torch (ReLU, bilinear resize to the finest map, min-max per map, mean or max).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_maps import REFERENCES, assert_no_hooks, features_and_grads, features_at

from wsolkit.errors import InputError
from wsolkit.maps import METHODS, heatmaps

LAYERS = ("features.conv1", "features.conv2")  # 16x16 and 8x8 for the 16x16 tiny images


def hand_fusion(maps: list[torch.Tensor], relu: bool, how: str) -> torch.Tensor:
    out = []
    for raw in maps:
        raw = raw.clamp(min=0) if relu else raw
        raw = F.interpolate(raw[:, None], size=(16, 16), mode="bilinear",
                            align_corners=False)[:, 0]
        flat = raw.flatten(1)
        low, high = flat.min(dim=1).values, flat.max(dim=1).values
        out.append((raw - low[:, None, None]) / (high - low)[:, None, None])
    stacked = torch.stack(out)
    return stacked.mean(dim=0) if how == "mean" else stacked.max(dim=0).values


@pytest.mark.parametrize("how", ["mean", "max"])
def test_gradcam_fused_over_two_layers(tiny_model, tiny_images, how):
    classes = torch.tensor([1, 4])
    result = METHODS["gradcam"](tiny_model, layer=list(LAYERS), fuse=how)(tiny_images,
                                                                          target=classes)
    per_layer = [REFERENCES["gradcam"](*features_and_grads(tiny_model, tiny_images, layer,
                                                           classes)) for layer in LAYERS]
    expected = hand_fusion(per_layer, relu=True, how=how)
    torch.testing.assert_close(result.raw, expected, rtol=1e-4, atol=1e-5)
    assert result.layer == "features.conv1,features.conv2" and result.raw.shape == (2, 16, 16)
    assert result.classes.tolist() == [1, 4]
    assert_no_hooks(tiny_model)


def test_objectness_fused_keeps_negative_values_before_scaling(tiny_model, tiny_images):
    """A method without ReLU is scaled from its full range (conv outputs go below 0)."""
    result = METHODS["objectness"](tiny_model, layer="features.conv1,features.conv2")(
        tiny_images)
    per_layer = [features_at(tiny_model, tiny_images, layer).sum(dim=1) for layer in LAYERS]
    assert min(float(m.min()) for m in per_layer) < 0
    torch.testing.assert_close(result.raw, hand_fusion(per_layer, relu=False, how="mean"),
                               rtol=1e-4, atol=1e-5)


def test_comma_string_list_and_one_layer(tiny_model, tiny_images):
    joined = heatmaps(tiny_model, tiny_images, "layercam", layer="features.conv1, features.conv2")
    listed = heatmaps(tiny_model, tiny_images, "layercam", layer=list(LAYERS))
    assert torch.equal(joined.raw, listed.raw) and torch.equal(joined.maps, listed.maps)
    single = heatmaps(tiny_model, tiny_images, "layercam", layer=["features.conv2"])
    plain = heatmaps(tiny_model, tiny_images, "layercam", layer="features.conv2")
    assert torch.equal(single.raw, plain.raw) and single.layer == "features.conv2"


@pytest.mark.parametrize("options, message", [
    ({"layer": "features.conv1,"}, "give a layer name, or several"),
    ({"layer": 3}, "give a layer name"),
    ({"fuse": "sum"}, "fuse='sum': use one of mean, max"),
])
def test_bad_fusion_options(tiny_model, options, message):
    with pytest.raises(InputError, match=message):
        METHODS["gradcam"](tiny_model, **options)


def test_cli_fuses_comma_separated_layers(tmp_path):
    """``--layer a,b`` reaches the library as two fused layers (``--option fuse=max`` accepted)."""
    import json
    from pathlib import Path

    from wsolkit.cli.main import main

    chelsea = Path(__file__).resolve().parents[1] / "examples" / "chelsea.jpg"
    out = tmp_path / "out"
    assert main(["localize", str(chelsea), "--method", "layercam", "--layer",
                 "features.stage5,features.head", "--option", "fuse=max", "--out", str(out),
                 "--quiet"]) == 0
    written = json.loads((out / "results.json").read_text())
    assert written["layer"] == "features.stage5,features.head"
