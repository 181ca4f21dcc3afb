"""Heatmap methods checked against references computed here with plain torch.

References run the tiny models' submodules by hand to get the hooked features F and the
logits, and get gradients of the target logit w.r.t. F by re-running the head on a leaf copy.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import NUM_CLASSES, TinyCNN, seeded
from torch import nn

from wsolkit.data.images import load_image
from wsolkit.errors import InputError, LayerError, ModelError, TargetError
from wsolkit.maps import METHODS, HeatmapMethod, get_method, heatmaps, method_names, register
from wsolkit.models import Classifier

# Methods whose raw map is the hooked layer's resolution (the CAM family).
LAYER_MAP_METHODS = [
    "cam", "gradcam", "gradcampp", "smoothgradcampp", "xgradcam", "layercam", "scorecam",
    "objectness", "eigencam", "bagcams",
]
# Methods that bring their own trained network (a head or decoder file for a given backbone):
# their logits and layers are their own, so the generic contract below does not apply; each has
# its own contract tests (tests/test_heads_train.py, tests/test_fcam.py).
OWN_NETWORK = {"wildcat", "excam", "fcam"}
# Every other registered method (also rCAM's stages and beam): the generic contract tests.
ALL_METHODS = [name for name in method_names() if name not in OWN_NETWORK]
GRADIENT_METHODS = ["gradcam", "gradcampp", "xgradcam", "layercam"]
# Options that keep the slower methods fast on the tiny models.
FAST = {"smoothgradcampp": {"samples": 2}, "scorecam": {"batch_size": 4}}
CHELSEA = Path(__file__).resolve().parents[1] / "examples" / "chelsea.jpg"


def make(name: str, model, **options) -> HeatmapMethod:
    return METHODS[name](model, **{**FAST.get(name, {}), **options})


# ------------------------------------------------------------------------------- references


def short(layer: str) -> str:
    """'features.conv2' -> 'conv2'; 'features' (the whole block) -> its last module."""
    return layer.split(".", 1)[1] if "." in layer else "act"


def features_at(model: TinyCNN, images: torch.Tensor, layer: str) -> torch.Tensor:
    """Output of ``layer`` (a module of ``model.features``), run by hand without hooks."""
    names = list(model.features._modules)
    out = images
    with torch.no_grad():
        for name in names[: names.index(short(layer)) + 1]:
            out = model.features._modules[name](out)
            if name == short(layer):
                out = out.clone()  # later in-place modules must not change it
    return out


def head_from(model: TinyCNN, feats: torch.Tensor, layer: str) -> torch.Tensor:
    """Logits from the output of ``layer`` onwards (works on a leaf: clones first)."""
    names = list(model.features._modules)
    out = feats.clone()
    for name in names[names.index(short(layer)) + 1:]:
        out = model.features._modules[name](out)
    return model.fc(model.pool(out).flatten(1))


def logits_of(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(images)


def features_and_grads(model, images, layer, classes):
    """(F, dS_c/dF) with S_c the logit of ``classes[n]`` for image n."""
    feats = features_at(model, images, layer)
    leaf = feats.clone().requires_grad_(True)
    logits = head_from(model, leaf, layer)
    (grads,) = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), leaf)
    return feats, grads


def upsample(raw: torch.Tensor, size, mode: str = "bilinear") -> torch.Tensor:
    return F.interpolate(raw[:, None], size=tuple(size), mode=mode, align_corners=False)[:, 0]


def minmax(maps: torch.Tensor) -> torch.Tensor:
    low = maps.amin(dim=(1, 2), keepdim=True)
    high = maps.amax(dim=(1, 2), keepdim=True)
    return (maps - low) / (high - low)


def close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5) -> None:
    """Relative comparison that is meaningful for the small magnitudes of gradient maps."""
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=1e-6 * scale + 1e-12)


def weighted(weights: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    return (weights[:, :, None, None] * feats).sum(dim=1)


def gradcampp_reference(feats: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    numerator = grads**2
    denominator = 2 * grads**2 + feats.sum(dim=(2, 3), keepdim=True) * grads**3
    alpha = torch.zeros_like(grads)
    nonzero = denominator != 0
    alpha[nonzero] = numerator[nonzero] / denominator[nonzero]
    weights = (alpha * grads.clamp(min=0)).sum(dim=(2, 3))
    return weighted(weights, feats)


def xgradcam_reference(feats: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    totals = feats.sum(dim=(2, 3))
    weights = torch.zeros_like(totals)
    nonzero = totals != 0
    weights[nonzero] = (feats * grads).sum(dim=(2, 3))[nonzero] / totals[nonzero]
    return weighted(weights, feats)


REFERENCES = {
    "gradcam": lambda feats, grads: weighted(grads.mean(dim=(2, 3)), feats),
    "gradcampp": gradcampp_reference,
    "xgradcam": xgradcam_reference,
    "layercam": lambda feats, grads: (grads.clamp(min=0) * feats).sum(dim=1),
}


def scorecam_reference(model, images, layer, classes, max_channels=None):
    feats = features_at(model, images, layer)
    count, channels = feats.shape[:2]
    weights = torch.zeros(count, channels)
    for n in range(count):
        order = feats[n].mean(dim=(1, 2)).argsort(descending=True).tolist()
        for k in order[:max_channels] if max_channels else range(channels):
            mask = upsample(feats[n, k][None], images.shape[-2:])[0]
            span = mask.max() - mask.min()
            mask = (mask - mask.min()) / span if span > 0 else torch.zeros_like(mask)
            probs = logits_of(model, images[n:n + 1] * mask).softmax(dim=1)
            weights[n, k] = probs[0, classes[n]]
    return weighted(weights, feats), weights


# ------------------------------------------------------------------------------- hooks/state


HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
GLOBAL_HOOK_DICTS = (
    "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


def assert_no_hooks(model: nn.Module) -> None:
    for name, module in model.named_modules():
        for attr in HOOK_DICTS:
            assert not getattr(module, attr, {}), f"{attr} left on {name or 'the model'}"
    for attr in GLOBAL_HOOK_DICTS:
        assert not getattr(torch.nn.modules.module, attr, {}), f"{attr} left"


def training_flags(model: nn.Module) -> dict[str, bool]:
    return {name: module.training for name, module in model.named_modules()}


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.state_dict().items()}


def assert_state_equal(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), f"{key} changed"


# ------------------------------------------------------------------------------------- CAM


def test_cam_raw_is_class_weights_times_features_top1(tiny_model, tiny_images):
    result = make("cam", tiny_model)(tiny_images)
    logits = logits_of(tiny_model, tiny_images)
    classes = logits.argmax(dim=1)
    feats = features_at(tiny_model, tiny_images, "features.act")
    expected = torch.einsum("nk,nkhw->nhw", tiny_model.fc.weight.detach()[classes], feats)
    assert result.layer == "features"
    assert torch.equal(result.classes, classes)
    close(result.raw, expected)
    # no ReLU for CAM: min-max of the upsampled raw map, negative evidence included
    close(result.maps, minmax(upsample(expected, (16, 16))))


def test_cam_keeps_negative_evidence(tiny_model, tiny_images):
    result = make("cam", tiny_model, layer="features.conv2")(tiny_images, target=[0, 3])
    feats = features_at(tiny_model, tiny_images, "features.conv2")
    weights = tiny_model.fc.weight.detach()[[0, 3]]
    expected = torch.einsum("nk,nkhw->nhw", weights, feats)
    assert expected.min() < 0  # the check below distinguishes ReLU from no ReLU
    close(result.raw, expected)
    close(result.maps, minmax(upsample(expected, (16, 16))))
    assert result.classes.tolist() == [0, 3]


@pytest.mark.parametrize("target", [2, [4, 1], torch.tensor([0, 0]), np.array([3, 2])])
def test_cam_explicit_targets(tiny_model, tiny_images, target):
    result = make("cam", tiny_model)(tiny_images, target=target)
    classes = torch.as_tensor(target).reshape(-1).expand(2).long()
    feats = features_at(tiny_model, tiny_images, "features")
    expected = torch.einsum("nk,nkhw->nhw", tiny_model.fc.weight.detach()[classes], feats)
    close(result.raw, expected)
    assert torch.equal(result.classes, classes)
    logits = logits_of(tiny_model, tiny_images)
    close(result.scores, logits.gather(1, classes[:, None])[:, 0])


def test_cam_on_embedded_model(embedded_model, chelsea_batch):
    result = heatmaps(embedded_model, chelsea_batch, "cam")
    assert result.layer == "features.head"
    assert result.maps.shape == (1, 224, 224) and result.raw.shape == (1, 7, 7)
    module = embedded_model.module
    with torch.no_grad():
        feats = module.features(chelsea_batch)
        logits = module.fc(module.pool(feats).flatten(1))
        top = int(logits.argmax())
        expected = torch.einsum("k,khw->hw", module.fc.weight[top], feats[0])[None]
    assert result.classes.tolist() == [top]
    close(result.raw, expected, rtol=1e-4)


# ---------------------------------------------------------------------- gradient methods


@pytest.mark.parametrize("layer", ["features.conv1", "features.conv2", "features.act"])
@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_gradient_methods_match_formula(tiny_model, tiny_images, name, layer):
    classes = torch.tensor([1, 4])
    result = make(name, tiny_model, layer=layer)(tiny_images, target=classes)
    feats, grads = features_and_grads(tiny_model, tiny_images, layer, classes)
    assert grads.abs().sum() > 0
    expected = REFERENCES[name](feats, grads)
    assert result.layer == layer
    close(result.raw, expected)
    # ReLU, then bilinear upsampling, then min-max normalization per map
    close(result.maps, minmax(upsample(expected.clamp(min=0), (16, 16))), rtol=1e-4)


def test_gradcam_weights_are_mean_gradients_top1(tiny_model, tiny_images):
    result = make("gradcam", tiny_model)(tiny_images)
    classes = logits_of(tiny_model, tiny_images).argmax(dim=1)
    feats, grads = features_and_grads(tiny_model, tiny_images, "features", classes)
    expected = torch.einsum("nk,nkhw->nhw", grads.mean(dim=(2, 3)), feats)
    close(result.raw, expected)
    assert torch.equal(result.classes, classes)


def test_gradcampp_differs_from_gradcam_on_deep_layer(tiny_model, tiny_images):
    # guards against the formulas collapsing to the same thing in this setup
    a = make("gradcam", tiny_model, layer="features.conv1")(tiny_images, target=1).raw
    b = make("gradcampp", tiny_model, layer="features.conv1")(tiny_images, target=1).raw
    assert not torch.allclose(a / a.abs().max(), b / b.abs().max(), atol=1e-3)


def test_gradcam_with_bicubic_upsampling(tiny_model, tiny_images):
    result = make("gradcam", tiny_model, upsample="bicubic")(tiny_images, target=3)
    feats, grads = features_and_grads(tiny_model, tiny_images, "features", torch.tensor([3, 3]))
    expected = torch.einsum("nk,nkhw->nhw", grads.mean(dim=(2, 3)), feats).clamp(min=0)
    close(result.maps, minmax(upsample(expected, (16, 16), mode="bicubic")), rtol=1e-4)
    assert 0 <= result.maps.min() and result.maps.max() <= 1


def test_unknown_upsampling_mode(tiny_model):
    with pytest.raises(InputError, match="upsample='nearest'"):
        make("gradcam", tiny_model, upsample="nearest")


# ------------------------------------------------------------------------------ objectness


def test_objectness_is_channel_sum_and_ignores_target(tiny_model, tiny_images):
    method = make("objectness", tiny_model, layer="features.conv2")
    first = method(tiny_images, target=0)
    second = method(tiny_images, target=4)
    expected = features_at(tiny_model, tiny_images, "features.conv2").sum(dim=1)
    assert expected.min() < 0  # no ReLU: negative sums stay below zero before normalization
    close(first.raw, expected)
    close(first.maps, minmax(upsample(expected, (16, 16))))
    assert torch.equal(first.raw, second.raw) and torch.equal(first.maps, second.maps)


def test_objectness_default_layer(tiny_model, tiny_images):
    assert make("objectness", tiny_model)(tiny_images).layer == "features"
    classifier = Classifier(module=tiny_model, objectness_layer="features.conv1")
    result = make("objectness", classifier)(tiny_images)
    assert result.layer == "features.conv1"
    close(result.raw, features_at(tiny_model, tiny_images, "features.conv1").sum(dim=1))
    # the other methods keep the CAM-head layer
    assert make("gradcam", classifier)(tiny_images).layer == "features"


def test_embedded_default_layers(embedded_model, chelsea_batch):
    result = heatmaps(embedded_model, chelsea_batch, "objectness")
    assert result.layer == "features.head" and result.raw.shape == (1, 7, 7)
    result = heatmaps(embedded_model, chelsea_batch, "gradcam")
    assert result.layer == "features.head" and result.maps.shape == (1, 224, 224)
    assert result.maps.dtype == torch.float32 and float(result.maps.max()) == 1.0


# -------------------------------------------------------------------------------- Score-CAM


@pytest.mark.parametrize("layer", ["features", "features.conv2"])
def test_scorecam_weights_are_softmax_of_masked_inputs(tiny_model, tiny_images, layer):
    classes = logits_of(tiny_model, tiny_images).argmax(dim=1)
    result = METHODS["scorecam"](tiny_model, layer=layer)(tiny_images)
    expected, _ = scorecam_reference(tiny_model, tiny_images, layer, classes)
    close(result.raw, expected, rtol=1e-4)
    close(result.maps, minmax(upsample(expected.clamp(min=0), (16, 16))), rtol=1e-4)


def test_scorecam_max_channels_and_batch_size(tiny_model, tiny_images):
    layer, classes = "features.conv2", torch.tensor([2, 0])
    expected, weights = scorecam_reference(tiny_model, tiny_images, layer, classes,
                                           max_channels=3)
    assert (weights != 0).sum(dim=1).tolist() == [3, 3]
    results = [
        METHODS["scorecam"](tiny_model, layer=layer, max_channels=3, batch_size=size)(
            tiny_images, target=classes)
        for size in (1, 2, 5, 64)
    ]
    close(results[0].raw, expected, rtol=1e-4)
    for other in results[1:]:
        torch.testing.assert_close(other.raw, results[0].raw)
        torch.testing.assert_close(other.maps, results[0].maps)
    # max_channels at least the channel count is the full method
    full = METHODS["scorecam"](tiny_model, layer=layer, max_channels=100)
    plain = METHODS["scorecam"](tiny_model, layer=layer)
    torch.testing.assert_close(full(tiny_images, target=classes).raw,
                               plain(tiny_images, target=classes).raw)


def test_scorecam_callable_replaces_softmax_score(tiny_model, tiny_images):
    method = METHODS["scorecam"](tiny_model)
    by_class = method(tiny_images, target=2)
    by_callable = method(tiny_images, target=lambda logits: logits.softmax(dim=1)[:, 2])
    torch.testing.assert_close(by_callable.raw, by_class.raw)


@pytest.mark.parametrize("options, message", [
    ({"batch_size": 0}, "batch_size=0"),
    ({"max_channels": 0}, "max_channels=0"),
])
def test_scorecam_bad_options(tiny_model, options, message):
    with pytest.raises(InputError, match=message):
        METHODS["scorecam"](tiny_model, **options)


# ----------------------------------------------------------------------- Smooth Grad-CAM++


def test_smoothgradcampp_without_noise_is_gradcampp(tiny_model, tiny_images):
    for layer in ("features", "features.conv1"):
        smooth = METHODS["smoothgradcampp"](tiny_model, layer=layer, samples=1, noise=0.0)
        plain = METHODS["gradcampp"](tiny_model, layer=layer)
        a, b = smooth(tiny_images, target=[1, 2]), plain(tiny_images, target=[1, 2])
        assert torch.equal(a.raw, b.raw) and torch.equal(a.maps, b.maps)


def test_smoothgradcampp_is_seeded(tiny_model, tiny_images):
    def run(seed):
        method = METHODS["smoothgradcampp"](tiny_model, layer="features.conv1", samples=3,
                                            noise=0.2, seed=seed)
        return method(tiny_images).raw

    first = run(7)
    assert torch.equal(first, run(7))
    assert not torch.equal(first, run(8))
    plain = METHODS["gradcampp"](tiny_model, layer="features.conv1")(tiny_images).raw
    assert not torch.equal(first, plain)


@pytest.mark.parametrize("options, message", [
    ({"samples": 0}, "samples=0"),
    ({"noise": -0.1}, "noise=-0.1"),
])
def test_smoothgradcampp_bad_options(tiny_model, options, message):
    with pytest.raises(InputError, match=message):
        METHODS["smoothgradcampp"](tiny_model, **options)


# ---------------------------------------------------------------------------------- targets


def test_top1_is_argmax(tiny_model, tiny_images):
    result = make("gradcam", tiny_model)(tiny_images, target="top1")
    logits = logits_of(tiny_model, tiny_images)
    assert torch.equal(result.classes, logits.argmax(dim=1))
    assert result.image_index.tolist() == [0, 1]
    torch.testing.assert_close(result.logits, logits)
    torch.testing.assert_close(result.scores, logits.amax(dim=1))


@pytest.mark.parametrize("name", ["cam", "gradcam", "scorecam", "objectness"])
def test_top3_gives_three_maps_per_image(tiny_model, tiny_images, name):
    logits = logits_of(tiny_model, tiny_images)
    top = logits.topk(3, dim=1).indices
    method = make(name, tiny_model)
    result = method(tiny_images, target="top3")
    assert result.maps.shape == (6, 16, 16) and result.raw.shape == (6, 8, 8)
    assert torch.equal(result.image_index, torch.arange(2).repeat_interleave(3))
    assert torch.equal(result.classes, top.reshape(-1))
    torch.testing.assert_close(result.logits, logits.repeat_interleave(3, dim=0))
    torch.testing.assert_close(result.scores, logits.topk(3, dim=1).values.reshape(-1))
    for rank in range(3):
        single = method(tiny_images, target=top[:, rank])
        torch.testing.assert_close(result.raw[rank::3], single.raw)
        torch.testing.assert_close(result.maps[rank::3], single.maps)


def test_int_list_gt_and_numpy_targets_agree(tiny_model, tiny_images):
    method = make("gradcam", tiny_model)
    as_list = method(tiny_images, target=[3, 1])
    for other in (
        method(tiny_images, target=(3, 1)),
        method(tiny_images, target=torch.tensor([3, 1])),
        method(tiny_images, target=np.array([3, 1])),
        method(tiny_images, target="gt", labels=[3, 1]),
        method(tiny_images, target="gt", labels=torch.tensor([3, 1])),
    ):
        assert torch.equal(other.raw, as_list.raw)
        assert other.classes.tolist() == [3, 1]
    one = method(tiny_images, target=4)
    assert one.classes.tolist() == [4, 4]
    for scalar in (np.int64(4), torch.tensor(4)):
        assert torch.equal(method(tiny_images, target=scalar).raw, one.raw)


def test_callable_target_equals_class_target(tiny_model, tiny_images):
    method = make("gradcam", tiny_model)
    by_callable = method(tiny_images, target=lambda logits: logits[:, 2])
    by_class = method(tiny_images, target=2)
    assert torch.equal(by_callable.raw, by_class.raw)
    assert by_callable.classes.tolist() == [-1, -1]
    torch.testing.assert_close(by_callable.scores, logits_of(tiny_model, tiny_images)[:, 2])


@pytest.mark.parametrize("target, labels, message", [
    (NUM_CLASSES, None, "out of range"),
    (-1, None, "out of range"),
    ([0, 7], None, "class index 7 out of range: the model has 5 classes"),
    ([1, 2, 3], None, "3 classes for 2 images"),
    ([1], None, "1 classes for 2 images"),
    ("gt", [1, 2, 3], "3 classes for 2 images"),
    ("gt", None, "needs labels"),
    ("gt", [0, 9], "out of range"),
    ("best", None, "unknown target 'best'"),
    ("top0", None, "unknown target 'top0'"),
    ("top6", None, "more classes than the 5"),
    ([1.0, 2.0], None, "integer class indices"),
    (True, None, "integer class indices"),
    (lambda logits: logits, None, r"one score per image, shape \(2,\)"),
    (lambda logits: 1.0, None, "one score per image"),
])
def test_bad_targets(tiny_model, tiny_images, target, labels, message):
    with pytest.raises(TargetError, match=message):
        make("gradcam", tiny_model)(tiny_images, target=target, labels=labels)
    assert_no_hooks(tiny_model)


def test_cam_rejects_callable_target(tiny_model, tiny_images):
    with pytest.raises(TargetError, match="callable"):
        make("cam", tiny_model)(tiny_images, target=lambda logits: logits[:, 0])


# -------------------------------------------------------------------------- output contract


@pytest.mark.parametrize("name", ALL_METHODS)
def test_output_contract(tiny_model, name):
    images = torch.randn(2, 3, 20, 12, generator=torch.Generator().manual_seed(3))
    result = make(name, tiny_model)(images)
    logits = logits_of(tiny_model, images)
    assert result.method == name and result.layer == "features"
    assert result.maps.shape == (2, 20, 12) and result.maps.dtype == torch.float32
    if name in LAYER_MAP_METHODS:
        assert result.raw.shape == (2, 10, 6)
    else:  # rCAM upsamples its raw map, beam makes it at the input size
        assert result.raw.ndim == 3 and result.raw.shape[0] == 2
    assert result.raw.dtype == torch.float32
    assert float(result.maps.min()) >= 0 and float(result.maps.max()) <= 1
    for heat in result.maps:  # every map here is non-constant: it spans exactly [0, 1]
        assert float(heat.min()) == 0.0 and float(heat.max()) == pytest.approx(1.0)
    assert result.classes.dtype == torch.long and result.classes.shape == (2,)
    assert result.image_index.tolist() == [0, 1]
    torch.testing.assert_close(result.logits, logits)
    torch.testing.assert_close(result.scores, logits.gather(1, result.classes[:, None])[:, 0])
    assert not result.maps.requires_grad and not result.raw.requires_grad


@pytest.mark.parametrize("name", ["cam", "gradcam", "gradcampp", "smoothgradcampp", "xgradcam",
                                  "layercam"])
def test_constant_map_gives_zeros(tiny_model, tiny_images, name):
    with torch.no_grad():
        tiny_model.fc.weight.zero_()
    result = make(name, tiny_model)(tiny_images, target=1)
    assert torch.count_nonzero(result.raw) == 0
    assert torch.equal(result.maps, torch.zeros(2, 16, 16))


def test_single_image_and_heatmaps_function(tiny_model, tiny_images):
    result = heatmaps(tiny_model, tiny_images[:1], "layercam", target=0, layer="features.conv1")
    assert result.maps.shape == (1, 16, 16) and result.raw.shape == (1, 16, 16)
    direct = METHODS["layercam"](tiny_model, layer="features.conv1")(tiny_images[:1], target=0)
    assert torch.equal(result.raw, direct.raw)
    with pytest.raises(InputError, match="unknown method 'nope'"):
        heatmaps(tiny_model, tiny_images, "nope")


# ------------------------------------------------------------------- hooks and model state


@pytest.mark.parametrize("name", ALL_METHODS)
def test_no_hooks_left_and_repeatable(tiny_model, tiny_images, name):
    method = make(name, tiny_model)
    first = method(tiny_images, target="top2")
    assert_no_hooks(tiny_model)
    second = method(tiny_images, target="top2")
    assert_no_hooks(tiny_model)
    assert torch.equal(first.maps, second.maps) and torch.equal(first.raw, second.raw)
    # a fresh method object (fresh head detection) gives the same maps too
    assert torch.equal(make(name, tiny_model)(tiny_images, target="top2").raw, first.raw)


@pytest.mark.parametrize("grad_enabled", [True, False])
@pytest.mark.parametrize("name", ALL_METHODS)
def test_failing_call_leaves_no_trace(tiny_model, tiny_images, name, grad_enabled):
    tiny_model.train()
    flags = training_flags(tiny_model)
    with torch.set_grad_enabled(grad_enabled):
        with pytest.raises(TargetError, match="out of range"):
            make(name, tiny_model)(tiny_images, target=99)
        assert torch.is_grad_enabled() is grad_enabled
    assert_no_hooks(tiny_model)
    assert training_flags(tiny_model) == flags


@pytest.mark.parametrize("grad_enabled", [True, False])
@pytest.mark.parametrize("layer", [None, "features.conv2"])
@pytest.mark.parametrize("name", ALL_METHODS)
def test_model_raising_after_hooked_layer(raising_model, tiny_images, name, layer,
                                          grad_enabled):
    raising_model.train()
    with torch.set_grad_enabled(grad_enabled):
        with pytest.raises(RuntimeError, match="boom after the features"):
            make(name, raising_model, layer=layer)(tiny_images)
        assert torch.is_grad_enabled() is grad_enabled
    assert_no_hooks(raising_model)
    assert all(training_flags(raising_model).values())


@pytest.mark.parametrize("name", ALL_METHODS)
def test_model_state_untouched(bn_model, tiny_images, name):
    model = bn_model.train()
    model.features.bn1.eval()  # a mixed state must come back as it was
    reference = copy.deepcopy(model).eval()
    params = dict(model.named_parameters())
    params["features.conv1.weight"].grad = torch.full_like(params["features.conv1.weight"], 0.5)
    params["fc.bias"].requires_grad_(False)  # a frozen parameter stays frozen
    flags = training_flags(model)
    before = state_copy(model)
    requires = {key: p.requires_grad for key, p in params.items()}
    images = tiny_images.clone()

    result = make(name, model)(images, target="top2")

    assert training_flags(model) == flags
    assert_state_equal(model, before)  # parameters and BN running stats, bit for bit
    assert {key: p.requires_grad for key, p in params.items()} == requires
    assert torch.equal(params["features.conv1.weight"].grad,
                       torch.full_like(params["features.conv1.weight"], 0.5))
    assert all(p.grad is None for key, p in params.items() if key != "features.conv1.weight")
    assert torch.is_grad_enabled()
    assert torch.equal(images, tiny_images)
    assert_no_hooks(model)
    # the maps were computed in eval mode (no dropout, running statistics)
    expected = make(name, reference)(tiny_images, target="top2")
    torch.testing.assert_close(result.raw, expected.raw)
    torch.testing.assert_close(result.maps, expected.maps)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_grad_mode_and_inference_mode_callers(tiny_model, tiny_images, name):
    expected = make(name, tiny_model)(tiny_images)
    with torch.no_grad():
        result = make(name, tiny_model)(tiny_images)
        assert not torch.is_grad_enabled()
    assert torch.equal(result.raw, expected.raw)
    with torch.inference_mode():
        images = tiny_images.clone()  # an inference tensor
        result = make(name, tiny_model)(images)
        assert torch.is_inference_mode_enabled()
    assert torch.equal(result.raw, expected.raw)
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("name", ALL_METHODS)
def test_inputs_not_modified(inplace_model, tiny_images, name):
    images = tiny_images.clone()
    make(name, inplace_model)(images, target="top2")
    assert torch.equal(images, tiny_images)


def test_inplace_relu_after_hooked_layer(inplace_model, tiny_images):
    layer, classes = "features.conv2", torch.tensor([0, 3])
    feats, grads = features_and_grads(inplace_model, tiny_images, layer, classes)
    assert feats.min() < 0  # the in-place ReLU would have zeroed these

    cam = make("cam", inplace_model, layer=layer)(tiny_images, target=classes)
    close(cam.raw, torch.einsum("nk,nkhw->nhw", inplace_model.fc.weight.detach()[classes], feats))
    gradcam = make("gradcam", inplace_model, layer=layer)(tiny_images, target=classes)
    close(gradcam.raw, REFERENCES["gradcam"](feats, grads))
    objectness = make("objectness", inplace_model, layer=layer)(tiny_images)
    close(objectness.raw, feats.sum(dim=1))

    # and the in-place model gives the same maps as the same weights without in-place ops
    plain = seeded(TinyCNN)
    for name in LAYER_MAP_METHODS:
        a = make(name, inplace_model, layer=layer)(tiny_images, target=classes)
        b = make(name, plain, layer=layer)(tiny_images, target=classes)
        torch.testing.assert_close(a.raw, b.raw)


# ----------------------------------------------------------------------------- layer errors


@pytest.mark.parametrize("name", ALL_METHODS)
def test_unknown_layer(tiny_model, tiny_images, name):
    with pytest.raises(LayerError, match=r"'features\.cnv2' not found.*'features\.conv2'"):
        make(name, tiny_model, layer="features.cnv2")(tiny_images)
    assert_no_hooks(tiny_model)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_layer_that_is_not_a_feature_map(tiny_model, tiny_images, name):
    with pytest.raises(LayerError, match=r"layer 'fc' outputs \(2, 5\), not an \(N, C, h, w\)"):
        make(name, tiny_model, layer="fc")(tiny_images)
    assert_no_hooks(tiny_model)
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("name", ALL_METHODS)
def test_layer_running_twice(shared_relu_model, tiny_images, name):
    with pytest.raises(LayerError, match="'relu' runs more than once"):
        make(name, shared_relu_model, layer="relu")(tiny_images)
    assert_no_hooks(shared_relu_model)
    assert torch.is_grad_enabled()


def test_cam_layer_with_wrong_channel_count(tiny_model, tiny_images):
    with pytest.raises(LayerError, match=r"'features\.conv1' has 4 channels but 'fc' takes 6"):
        make("cam", tiny_model, layer="features.conv1")(tiny_images)
    assert_no_hooks(tiny_model)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_model_is_refused(tiny_model):
    with pytest.raises(ModelError, match="TorchScript"):
        make("gradcam", torch.jit.script(tiny_model))


# ----------------------------------------------------------------------------- bad images


@pytest.mark.parametrize("images, message", [
    (np.zeros((2, 3, 16, 16), dtype=np.float32), "torch.Tensor, got ndarray"),
    ([[0.0]], "torch.Tensor, got list"),
    (torch.zeros(3, 16, 16), r"\(N, C, H, W\) batch, got \(3, 16, 16\)"),
    (torch.zeros(0, 3, 16, 16), "non-empty"),
    (torch.zeros(2, 3, 16, 16, dtype=torch.uint8), "floating point, got torch.uint8"),
    (torch.zeros(2, 3, 16, 16, dtype=torch.long), "floating point"),
    (torch.full((2, 3, 16, 16), float("nan")), "NaN"),
    (torch.full((2, 3, 16, 16), float("inf")), "infinite"),
])
@pytest.mark.parametrize("name", ["cam", "gradcam", "scorecam"])
def test_bad_images(tiny_model, name, images, message):
    with pytest.raises(InputError, match=message):
        make(name, tiny_model)(images)
    assert_no_hooks(tiny_model)


# --------------------------------------------------------------------------------- registry


def test_registry_names():
    assert set(ALL_METHODS) <= set(method_names())
    assert method_names() == list(METHODS)
    for name in ALL_METHODS:
        cls = get_method(name)
        assert issubclass(cls, HeatmapMethod) and cls.name == name and cls.summary


def test_get_unknown_method():
    with pytest.raises(InputError, match="unknown method 'nope'; known methods: .*gradcam"):
        get_method("nope")


def test_register_duplicate_and_nameless():
    before = dict(METHODS)

    class Impostor(HeatmapMethod):
        name = "gradcam"

    class Nameless(HeatmapMethod):
        pass

    with pytest.raises(InputError, match="'gradcam' is already registered"):
        register(Impostor)
    with pytest.raises(InputError, match="no name"):
        register(Nameless)
    assert register(METHODS["gradcam"]) is METHODS["gradcam"]  # same class again: no-op
    assert METHODS == before


# ------------------------------------------------------------------------ embedded fixture


@pytest.fixture(scope="module")
def chelsea_batch(embedded_model):
    return embedded_model.preprocess(load_image(CHELSEA))[None]
