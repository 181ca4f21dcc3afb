"""Eigen-CAM / PC1 and BagCAMs against hand computations on the tiny seeded CNN.

References: features by running the tiny model's modules by hand (test_maps helpers), the
first principal direction from numpy's SVD, and BagCAMs' gradients from a hand-written head
whose ReLUs are an autograd function that passes only positive gradients back.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TinyCNN, seeded
from test_maps import assert_no_hooks, features_at, short

from wsolkit.errors import InputError
from wsolkit.maps import METHODS, make_method

# ------------------------------------------------------------------------------- Eigen-CAM


def pc1_reference(feats: torch.Tensor, center: bool) -> torch.Tensor:
    """Projection on the top right singular vector (numpy SVD), sign: loadings sum > 0."""
    out = []
    for image in feats.double().numpy():
        data = image.reshape(image.shape[0], -1).T  # (positions, channels)
        if center:
            data = data - data.mean(axis=0)
        _, _, vt = np.linalg.svd(data, full_matrices=False)
        direction = vt[0] if vt[0].sum() >= 0 else -vt[0]
        out.append((data @ direction).reshape(image.shape[1:]))
    return torch.from_numpy(np.stack(out)).float()


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("layer", ["features.conv1", "features.conv2", "features"])
def test_eigencam_is_first_principal_component(tiny_model, tiny_images, layer, center):
    result = METHODS["eigencam"](tiny_model, layer=layer, center=center)(tiny_images)
    feats = features_at(tiny_model, tiny_images, layer)
    torch.testing.assert_close(result.raw, pc1_reference(feats, center), rtol=1e-4, atol=1e-5)


def test_eigencam_sign_follows_channel_sum(tiny_model, tiny_images):
    raw = METHODS["eigencam"](tiny_model, layer="features.conv2")(tiny_images).raw
    feats = features_at(tiny_model, tiny_images, "features.conv2")
    for image, heat in zip(feats, raw, strict=True):
        total = image.sum(dim=0).flatten()
        covariance = ((total - total.mean()) * (heat.flatten() - heat.mean())).sum()
        assert covariance > 0


def test_eigencam_ignores_target(tiny_model, tiny_images):
    method = METHODS["eigencam"](tiny_model, layer="features.conv1")
    assert torch.equal(method(tiny_images, target=0).raw, method(tiny_images, target=3).raw)


def test_eigencam_bad_option(tiny_model):
    with pytest.raises(InputError, match="center=1 of eigencam: expected true or false"):
        make_method("eigencam", tiny_model, center=1)


# -------------------------------------------------------------------------------- BagCAMs


class PositiveGradientReLU(torch.autograd.Function):
    """ReLU forward; backward lets only positive gradients through (BagCAMs' ReLU hook)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad.clamp(min=0) * (x > 0)


def clamped_head(model: TinyCNN, feats: torch.Tensor, layer: str, clamp: bool) -> torch.Tensor:
    names = list(model.features._modules)
    out = feats.clone()
    for name in names[names.index(short(layer)) + 1:]:
        module = model.features._modules[name]
        relu = isinstance(module, torch.nn.ReLU)
        out = PositiveGradientReLU.apply(out) if relu and clamp else module(out)
    return model.fc(model.pool(out).flatten(1))


def bagcams_reference(model, images, layer, classes, clamp=True, log=True):
    feats = features_at(model, images, layer)
    leaf = feats.clone().requires_grad_(True)
    scores = clamped_head(model, leaf, layer, clamp).gather(1, classes[:, None])[:, 0]
    objective = scores.log() if log else scores
    (grads,) = torch.autograd.grad(objective.sum(), leaf)
    out = []
    for f, g in zip(feats, grads, strict=True):
        localizer = g * f  # (K, h, w)
        weight = (localizer + 1).mean(dim=(1, 2))  # GAP over positions, per channel
        out.append(torch.relu(weight[:, None, None] * localizer).sum(dim=0))
    return torch.stack(out)


@pytest.mark.parametrize("layer", ["features.conv1", "features.relu1", "features.conv2"])
def test_bagcams_matches_hand_computation(tiny_model, tiny_images, layer):
    classes = torch.tensor([1, 2])  # positive logits (tiny model: 0.39..0.42)
    result = METHODS["bagcams"](tiny_model, layer=layer)(tiny_images, target=classes)
    expected = bagcams_reference(tiny_model, tiny_images, layer, classes)
    torch.testing.assert_close(result.raw, expected, rtol=1e-4, atol=1e-7)
    assert_no_hooks(tiny_model)


def test_bagcams_clamping_and_log_matter(tiny_model, tiny_images):
    """The references without clamping or without the log differ: both steps are tested."""
    layer, classes = "features.conv1", torch.tensor([1, 2])
    raw = METHODS["bagcams"](tiny_model, layer=layer)(tiny_images, target=classes).raw
    unclamped = bagcams_reference(tiny_model, tiny_images, layer, classes, clamp=False)
    no_log = bagcams_reference(tiny_model, tiny_images, layer, classes, log=False)
    assert not torch.allclose(raw, unclamped, rtol=1e-3, atol=1e-6)
    assert not torch.allclose(raw, no_log, rtol=1e-3, atol=1e-6)


def test_bagcams_non_positive_score_uses_plain_gradient(tiny_model, tiny_images):
    layer, classes = "features.conv1", torch.tensor([3, 1])  # logit of class 3 < 0
    logits = tiny_model(tiny_images).detach()
    assert logits[0, 3] < 0 < logits[1, 1]
    raw = METHODS["bagcams"](tiny_model, layer=layer)(tiny_images, target=classes).raw
    plain = bagcams_reference(tiny_model, tiny_images, layer, classes, log=False)
    logged = bagcams_reference(tiny_model, tiny_images, layer, classes)
    assert torch.isfinite(raw).all()
    torch.testing.assert_close(raw[0], plain[0], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(raw[1], logged[1], rtol=1e-4, atol=1e-7)


def test_bagcams_inplace_relus_and_top2(inplace_model, tiny_images):
    """In-place ReLUs after the layer are clamped the same; top-2 rows equal explicit ones."""
    plain = seeded(TinyCNN)
    layer = "features.conv1"
    a = METHODS["bagcams"](inplace_model, layer=layer)(tiny_images, target="top2")
    b = METHODS["bagcams"](plain, layer=layer)(tiny_images, target="top2")
    torch.testing.assert_close(a.raw, b.raw)
    expected = bagcams_reference(plain, tiny_images[a.image_index], layer, a.classes)
    torch.testing.assert_close(a.raw, expected, rtol=1e-4, atol=1e-7)
    assert_no_hooks(inplace_model)


# ------------------------------------------------------------------------- embedded model


def test_embedded_defaults_are_the_measured_layers(embedded_model):
    """bagcams at features.stage6, eigencam fused over stage5 + head (benchmarks/reach_eval.py);
    the fused default equals naming the layers."""
    from test_maps import CHELSEA

    from wsolkit.data.images import load_image

    x = embedded_model.preprocess(load_image(CHELSEA))[None]
    bag = METHODS["bagcams"](embedded_model)(x)
    assert bag.layer == "features.stage6" and bag.raw.shape == (1, 7, 7)
    eigen = METHODS["eigencam"](embedded_model)(x)
    named = METHODS["eigencam"](embedded_model, layer="features.stage5,features.head")(x)
    assert eigen.layer == "features.stage5,features.head" and eigen.raw.shape == (1, 14, 14)
    assert torch.equal(eigen.raw, named.raw)
    assert METHODS["cam"](embedded_model)(x).layer == "features.head"
    # naming a layer replaces the preset
    assert METHODS["bagcams"](embedded_model, layer="features.head")(x).layer == "features.head"
