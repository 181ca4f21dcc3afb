"""rCAM: PCA shape maps, the guided upsampling chain, fusion, the registered stage methods and
rCAM inside boxes. Tiny models except two checks on the embedded model with one image."""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import NUM_CLASSES, seeded
from PIL import Image
from torch import nn

from wsolkit.apps.rcam_box import rcam_boxes, rcam_in_box
from wsolkit.checks import normalize_minmax
from wsolkit.data.images import load_image
from wsolkit.errors import InputError, LayerError, TargetError
from wsolkit.maps import METHODS, get_method, method_names
from wsolkit.maps.rcam import (
    PRESETS,
    RCAM,
    RCAM1,
    RCAM2,
    RCAM3,
    RCAMConfig,
    _chunked_forward,
    fuse,
    refine_crf,
    select_shape_layers,
    to_rgb_uint8,
    upsample_chain,
)
from wsolkit.maps.shape import pca_shape_maps, pca_shape_maps_batch, shape_layer_groups
from wsolkit.models import Classifier
from wsolkit.refine.crf import CRFParams, dense_crf
from wsolkit.refine.guided_filter import guided_filter
from wsolkit.refine.variogram import variogram_radius

CHELSEA = Path(__file__).resolve().parents[1] / "examples" / "chelsea.jpg"
STAGE_METHODS = {"rcam1": RCAM1, "rcam2": RCAM2, "rcam3": RCAM3, "rcam": RCAM}
TINY_LAYERS = ("features.relu2", "features.relu1")
TINY = RCAMConfig(scales=(16, 32), shape_layers=TINY_LAYERS)


class TwoStrideCNN(nn.Module):
    """conv1 (16x16 at 16) -> conv2 stride 2 (8x8) -> conv3 stride 2 (4x4 CAM) -> GAP -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(3, 4, 3, padding=1),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(4, 5, 3, stride=2, padding=1),
            relu2=nn.ReLU(),
            conv3=nn.Conv2d(5, 6, 3, stride=2, padding=1),
            act=nn.ReLU(),
        ))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, NUM_CLASSES)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(images)).flatten(1))


class RaisesAtScale2(TwoStrideCNN):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] > 16:
            self.features(images)
            raise RuntimeError("boom at scale 2")
        return super().forward(images)


@pytest.fixture
def model() -> TwoStrideCNN:
    return seeded(TwoStrideCNN)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))


def structured_features(channels: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Low-rank spatial structure plus noise, so the leading components are well separated."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((4, height * width)) * np.array([[4.0], [2.5], [1.5], [1.0]])
    mixing = rng.standard_normal((channels, 4))
    data = mixing @ basis + 0.1 * rng.standard_normal((channels, height * width)) + 3.0
    return data.reshape(channels, height, width).astype(np.float32)


def hooks_of(module: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


# ------------------------------------------------------------------------------ shape maps


@pytest.mark.parametrize("shape", [(8, 6, 7), (50, 3, 4)])  # scatter and Gram paths
def test_pca_components_are_orthogonal_and_explain_the_stated_variance(shape):
    features = structured_features(*shape)
    result = pca_shape_maps(features)
    assert result.maps.shape == (3, *shape[1:]) and result.maps.dtype == np.float32
    assert result.maps.min() == 0.0 and np.allclose(result.maps.max(axis=(1, 2)), 1.0)

    data = features.reshape(shape[0], -1).T.astype(np.float64)
    data -= data.mean(axis=0)
    eigenvalues = np.linalg.eigvalsh(np.cov(data.T))[::-1]
    expected = eigenvalues[:3] / eigenvalues.sum()
    np.testing.assert_allclose(result.explained_variance_ratio, expected, rtol=1e-8)
    assert np.all(np.diff(result.explained_variance_ratio) <= 0)

    centered = result.maps.reshape(3, -1).astype(np.float64)
    centered -= centered.mean(axis=1, keepdims=True)
    gram = centered @ centered.T
    off = gram - np.diag(np.diag(gram))
    assert np.abs(off).max() < 1e-5 * np.diag(gram).max()
    np.testing.assert_allclose(result.loadings @ result.loadings.T, np.eye(3), atol=1e-8)

    projections = data @ result.loadings.T  # the maps are these, min-max scaled
    scaled = (projections - projections.min(0)) / np.ptp(projections, axis=0)
    np.testing.assert_allclose(result.maps.reshape(3, -1).T, scaled, atol=1e-6)
    # sign convention: the projection of largest magnitude is positive (maps to 1)
    peaks = np.abs(projections).argmax(axis=0)
    assert np.all(projections[peaks, np.arange(3)] > 0)


def test_pca_accepts_tensors_batches_and_zero_variance():
    features = structured_features(6, 5, 5, seed=1)
    from_numpy = pca_shape_maps(features)
    from_torch = pca_shape_maps(torch.from_numpy(features))
    np.testing.assert_array_equal(from_numpy.maps, from_torch.maps)
    batch = pca_shape_maps_batch(np.stack([features, features[::-1].copy()]))
    np.testing.assert_allclose(batch[0].maps, from_numpy.maps, atol=1e-6)
    assert len(batch) == 2
    rank_one = np.ones((4, 3, 3), np.float32) * np.arange(9, dtype=np.float32).reshape(1, 3, 3)
    flat = pca_shape_maps(rank_one)
    assert flat.explained_variance_ratio[0] == pytest.approx(1.0)
    assert not flat.maps[1:].any()  # components beyond the rank are all zeros


@pytest.mark.parametrize("features, components", [
    (np.zeros((3, 4), np.float32), 3),
    (np.zeros((3, 4, 4), np.int64), 3),
    (np.zeros((2, 4, 4), np.float32), 3),
    (np.full((3, 4, 4), np.nan, np.float32), 1),
    ("features", 3),
])
def test_pca_rejects_bad_input(features, components):
    with pytest.raises(InputError):
        pca_shape_maps(features, components)


# ------------------------------------------------------------------------------ stage functions


def test_fuse_equals_the_formula():
    rng = np.random.default_rng(0)
    first, second = rng.random((2, 3, 9, 7)).astype(np.float32)
    p1, p2 = np.array([0.7, 0.2, 0.5]), np.array([0.1, 0.6, 0.5])
    raw = first * p1[:, None, None] + second * p2[:, None, None]
    low = raw.min(axis=(1, 2), keepdims=True)
    expected = (raw - low) / (raw.max(axis=(1, 2), keepdims=True) - low)
    np.testing.assert_allclose(fuse(first, p1, second, p2), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fuse(first, p1, second, p2, normalize=False), raw, rtol=1e-6)
    single = fuse(first[0], 0.7, second[0], 0.1)
    np.testing.assert_allclose(single, expected[0], rtol=1e-5, atol=1e-6)
    assert not fuse(np.ones((4, 4)), 0.5, np.ones((4, 4)), 0.5).any()  # constant -> zeros
    with pytest.raises(InputError):
        fuse(first, p1, second[:, :3], p2)
    with pytest.raises(InputError):
        fuse(first, p1[:2], second, p2)


def test_upsample_chain_doubles_per_step_and_equals_bilinear_plus_guided_filter():
    rng = np.random.default_rng(1)
    cam = rng.standard_normal((5, 6)).astype(np.float32)
    guides = [pca_shape_maps(structured_features(7, 10, 12, seed=2)).maps,
              pca_shape_maps(structured_features(7, 20, 24, seed=3)).maps]
    eps = 0.01
    out = upsample_chain(cam, guides, eps)
    assert out.shape == (20, 24) and out.dtype == np.float32
    assert upsample_chain(cam, guides[:1], eps).shape == (10, 12)

    manual = cam
    for guide in guides:
        image = np.ascontiguousarray(guide.transpose(1, 2, 0))
        radius = variogram_radius(image)
        doubled = cv2.resize(manual, (2 * manual.shape[1], 2 * manual.shape[0]),
                             interpolation=cv2.INTER_LINEAR)
        manual = guided_filter(doubled, image, radius, eps)
    np.testing.assert_array_equal(out, manual)
    # explicit radii are used as given
    fixed = upsample_chain(cam, guides, eps, radii=[1, 2])
    step = guided_filter(cv2.resize(cam, (12, 10), interpolation=cv2.INTER_LINEAR),
                         np.ascontiguousarray(guides[0].transpose(1, 2, 0)), 1, eps)
    step = guided_filter(cv2.resize(step, (24, 20), interpolation=cv2.INTER_LINEAR),
                         np.ascontiguousarray(guides[1].transpose(1, 2, 0)), 2, eps)
    np.testing.assert_array_equal(fixed, step)


def test_upsample_chain_handles_odd_sizes_and_rejects_shrinking_guides():
    cam = np.random.default_rng(2).random((11, 11)).astype(np.float32)
    odd = pca_shape_maps(structured_features(5, 21, 21)).maps  # 11 -> 21, not x2
    assert upsample_chain(cam, [odd], 0.01).shape == (21, 21)
    small = pca_shape_maps(structured_features(5, 8, 8)).maps
    with pytest.raises(InputError, match="not larger"):
        upsample_chain(cam, [small], 0.01)
    with pytest.raises(InputError):
        upsample_chain(cam, [odd], 0.01, radii=[1, 2])


def test_crf_at_a_moderate_size_is_the_crf_of_the_resized_inputs_resized_back():
    rng = np.random.default_rng(8)
    rgb = cv2.GaussianBlur(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), (0, 0), 2)
    prior = cv2.GaussianBlur(rng.random((48, 64)).astype(np.float32), (0, 0), 4)
    prior = normalize_minmax(prior)
    params = CRFParams(gaussian_sxy=4.0, bilateral_sxy=20.0)
    np.testing.assert_array_equal(refine_crf(rgb, prior, params, 3),
                                  dense_crf(rgb, prior, params, 3))
    np.testing.assert_array_equal(refine_crf(rgb, prior, params, 3, size=48),
                                  dense_crf(rgb, prior, params, 3))  # not smaller: as is
    half = refine_crf(rgb, prior, params, 3, size=24)
    small = dense_crf(cv2.resize(rgb, (32, 24), interpolation=cv2.INTER_AREA),
                      np.clip(cv2.resize(prior, (32, 24)), 0, 1),
                      CRFParams(gaussian_sxy=2.0, bilateral_sxy=10.0), 3)
    expected = np.clip(cv2.resize(small, (64, 48), interpolation=cv2.INTER_LINEAR), 0, 1)
    assert half.shape == (48, 64) and half.dtype == np.float32
    np.testing.assert_allclose(half, expected, atol=1e-6)


def test_chunked_forward_equals_one_batched_forward(model):
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    logits, outputs = _chunked_forward(model, images, ["features.relu2", "features.act"])
    with torch.no_grad():
        expected = model(images)
        features = model.features[:4](images)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outputs["features.relu2"], features, rtol=1e-5, atol=1e-6)
    assert outputs["features.act"].shape == (3, 6, 8, 8) and hooks_of(model) == 0


def test_radius_scale_scales_the_variogram_radii(model, images):
    base = RCAM1(model, config=RCAMConfig(scales=(16, 32), shape_layers=TINY_LAYERS,
                                          radius=None))
    base(images)
    bigger = RCAM1(model, config=RCAMConfig(scales=(16, 32), shape_layers=TINY_LAYERS,
                                            radius=None, radius_scale=3.0))
    bigger(images)
    assert (bigger.last_stages.radii1 >= base.last_stages.radii1).all()
    assert (bigger.last_stages.radii1 > base.last_stages.radii1).any()


def test_a_fixed_radius_replaces_the_variogram_rule(model, images):
    config = RCAMConfig(scales=(16, 32), shape_layers=TINY_LAYERS, radius=2)
    stages = RCAM1(model, config=config).stages(images)
    assert (stages.radii1 == 2).all() and (stages.radii2 == 2).all()
    guides = [layer[0].maps for layer in stages.shapes1] + [stages.shapes2[-1][0].maps]
    chained = upsample_chain(stages.cam1[0], guides, config.eps, radii=[2, 2, 2])
    expected = cv2.resize(chained, (16, 16), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(stages.rcam1[0], expected, atol=1e-6)
    assert RCAM(model, radius=0).config.radius is None
    with pytest.raises(InputError):
        RCAMConfig(radius=0)


def test_rgb_recovery_inverts_the_classifier_preprocessing():
    rgb = np.random.default_rng(4).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    classifier = Classifier(module=nn.Identity(), input_size=(16, 16))
    tensor = classifier.preprocess(Image.fromarray(rgb))[None]
    np.testing.assert_array_equal(to_rgb_uint8(tensor, classifier.mean, classifier.std)[0], rgb)
    with pytest.raises(InputError):
        to_rgb_uint8(torch.zeros(1, 1, 4, 4), classifier.mean, classifier.std)


@pytest.mark.parametrize("options", [
    {"scales": (224,)}, {"scales": (0, 448)}, {"shape_layers": "features.stage3"},
    {"shape_layers": ()}, {"components": 4}, {"eps": 0.0}, {"min_radius": 0},
    {"max_radius": 0}, {"fuse_inputs": "sum"}, {"crf": {}}, {"crf_iterations": 0},
    {"radius_scale": 0.0}, {"radius_scale": True}, {"crf_size": 4}, {"crf_size": 1.5},
])
def test_config_rejects_bad_values(options):
    with pytest.raises(InputError):
        RCAMConfig(**options)


# ------------------------------------------------------------------------------ methods


def test_stages_are_registered():
    names = method_names()
    assert names[-4:] == ["rcam1", "rcam2", "rcam3", "rcam"]
    for name, cls in STAGE_METHODS.items():
        assert get_method(name) is cls and METHODS[name].stage == name


def test_shape_layers_are_probed_at_2x_and_4x_the_cam_resolution(model, images):
    assert select_shape_layers(model, images, "features.act") == TINY_LAYERS
    method = RCAM(model, scales=(16, 32))
    method(images)
    assert method.last_stages.shape_layers == TINY_LAYERS


@pytest.mark.parametrize("name", list(STAGE_METHODS))
def test_each_stage_gives_maps_in_unit_range(model, images, name):
    result = STAGE_METHODS[name](model, config=TINY)(images)
    assert result.maps.shape == (2, 16, 16) and result.raw.shape == (2, 16, 16)
    assert result.maps.dtype == torch.float32
    assert float(result.maps.min()) >= 0.0 and float(result.maps.max()) <= 1.0
    assert torch.isfinite(result.raw).all() and result.method == name


def hand_variogram_radius(guide: np.ndarray, scale: float = 1.0) -> int:
    """Radius from a variogram written out here: every horizontal and vertical pixel pair h
    apart (h = 1 .. max(3, min(H, W) // 2)), channels averaged, scipy's curve_fit of
    c1 exp(-h^2 / 2 sigma^2) + c2 from several starts (best residual), round(scale * sigma)
    clipped to [1, min(H, W) // 2]."""
    from scipy.optimize import curve_fit

    values = np.asarray(guide, dtype=np.float64)
    values = values[None] if values.ndim == 2 else values  # (k, H, W)
    height, width = values.shape[1:]
    lags = np.arange(1, max(3, min(height, width) // 2) + 1, dtype=np.float64)
    gamma = []
    for lag in lags.astype(int):
        squares = [(values[:, :, lag:] - values[:, :, :-lag]) ** 2,
                   (values[:, lag:, :] - values[:, :-lag, :]) ** 2]
        pairs = sum(sq[0].size for sq in squares)
        gamma.append(sum(sq.sum() for sq in squares) / (2 * pairs * values.shape[0]))
    gamma = np.array(gamma)

    def model(h, c1, c2, sigma):
        return c1 * np.exp(-h * h / (2 * sigma * sigma)) + c2

    fits = []
    for start in (0.5, 1.0, 2.0, 4.0, 8.0):
        try:
            params, _ = curve_fit(model, lags, gamma, p0=[-gamma.max(), gamma.max(), start],
                                  bounds=([-np.inf, -np.inf, 0.1], [np.inf, np.inf,
                                                                   4 * lags[-1]]))
        except RuntimeError:
            continue
        fits.append((float(np.sum((model(lags, *params) - gamma) ** 2)), params[2]))
    sigma = min(fits)[1]
    return int(min(max(np.floor(scale * sigma + 0.5), 1), max(1, min(height, width) // 2)))


def test_the_variogram_radius_of_a_constructed_map_matches_a_fit_by_hand():
    # blobs of a known size: a smooth field whose variogram rises over ~5 pixels
    rng = np.random.default_rng(12)
    field = cv2.GaussianBlur(rng.standard_normal((40, 40)), (0, 0), 3.0)
    guide = np.stack([field, field.T, -field]).astype(np.float32)
    expected = hand_variogram_radius(guide)
    assert expected >= 3  # a real range, not the clip
    assert variogram_radius(np.ascontiguousarray(guide.transpose(1, 2, 0))) == expected
    # the chain uses it when no radii are given
    cam = rng.random((20, 20)).astype(np.float32)
    radius_free = upsample_chain(cam, [guide], 0.01)
    explicit = upsample_chain(cam, [guide], 0.01, radii=[expected])
    np.testing.assert_array_equal(radius_free, explicit)


def test_the_pipeline_radii_are_the_variogram_radii_of_its_guides(model):
    rng = np.random.default_rng(0)  # smooth images: shape maps with ranges of several pixels
    images = torch.from_numpy(np.stack([
        cv2.GaussianBlur(rng.standard_normal((64, 64, 3)).astype(np.float32), (0, 0), 4)
        .transpose(2, 0, 1) * 5 for _ in range(2)]))
    config = RCAMConfig(scales=(64, 128), shape_layers=TINY_LAYERS, radius=None)
    stages = RCAM1(model, config=config).stages(images)
    assert stages.radii1.max() > 5 and len(np.unique(stages.radii1)) > 3
    for row in range(2):
        guides = [layer[row].maps for layer in stages.shapes1] + [stages.shapes2[-1][row].maps]
        assert stages.radii1[row].tolist() == [hand_variogram_radius(g) for g in guides]
        guides2 = [layer[row].maps for layer in stages.shapes2]
        assert stages.radii2[row].tolist() == [hand_variogram_radius(g) for g in guides2]


def test_stages_follow_the_paper_and_agree_across_methods(model, images):
    """Eq. 5 of the paper on raw maps (the ``paper`` preset), checked by hand in numpy."""
    paper = replace(PRESETS["paper"], scales=(16, 32), shape_layers=TINY_LAYERS)
    stages = RCAM(model, config=paper).stages(images)
    with torch.no_grad():
        logits1 = model(images)
        logits2 = model(torch.nn.functional.interpolate(images, size=(32, 32),
                                                        mode="bilinear", align_corners=False))
    classes = logits1.argmax(1)
    p1 = (logits1.exp() / logits1.exp().sum(1, keepdim=True))[[0, 1], classes].numpy()
    p2 = (logits2.exp() / logits2.exp().sum(1, keepdim=True))[[0, 1], classes].numpy()
    np.testing.assert_array_equal(stages.classes, classes.numpy())
    np.testing.assert_allclose(stages.p1, p1, rtol=1e-5)
    np.testing.assert_allclose(stages.p2, p2, rtol=1e-5)
    # rCAM_3 = rCAM_1 P_1(c) + rCAM_2 P_2(c), then normalized to [0, 1] for the CRF
    fused = stages.rcam1 * p1[:, None, None] + stages.rcam2 * p2[:, None, None]
    np.testing.assert_allclose(stages.fused, fused, rtol=1e-5, atol=1e-6)
    low = fused.min(axis=(1, 2), keepdims=True)
    high = fused.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(stages.rcam3, (fused - low) / (high - low), atol=1e-5)
    # our default scales each upsampled CAM to [0, 1] first
    ours = RCAM(model, config=TINY).stages(images)

    def unit(x):
        return (x - x.min(axis=(1, 2), keepdims=True)) / np.ptp(x, axis=(1, 2), keepdims=True)

    fused_ours = unit(ours.rcam1) * p1[:, None, None] + unit(ours.rcam2) * p2[:, None, None]
    np.testing.assert_allclose(ours.rcam3, unit(fused_ours), atol=1e-5)
    stages = ours
    logits1, logits2 = model(images), model(
        torch.nn.functional.interpolate(images, size=(32, 32), mode="bilinear",
                                        align_corners=False))
    classes = logits1.argmax(1)
    np.testing.assert_array_equal(stages.classes, classes.numpy())
    np.testing.assert_allclose(stages.p1, logits1.softmax(1)[[0, 1], classes].detach(), rtol=1e-5)
    np.testing.assert_allclose(stages.p2, logits2.softmax(1)[[0, 1], classes].detach(), rtol=1e-5)
    cam = METHODS["cam"](model)(images).raw.numpy()
    np.testing.assert_allclose(stages.cam1, cam, rtol=1e-5, atol=1e-6)
    assert stages.cam1.shape == (2, 4, 4) and stages.cam2.shape == (2, 8, 8)
    assert stages.radii1.shape == (2, 3) and stages.radii2.shape == (2, 2)  # 4->8->16->32
    assert [len(layer) for layer in stages.shapes1] == [2, 2]
    assert stages.shapes2[1][0].maps.shape == (3, 32, 32)
    assert stages.rcam.shape == (2, 16, 16) and 0 <= stages.rcam.min() <= stages.rcam.max() <= 1
    for name, field in (("rcam1", "rcam1"), ("rcam2", "rcam2"), ("rcam3", "rcam3"),
                        ("rcam", "rcam")):
        maps = STAGE_METHODS[name](model, config=TINY)(images).maps.numpy()
        np.testing.assert_allclose(maps, normalize_minmax(getattr(stages, field)), atol=1e-5)
    raw = RCAM(model, config=TINY)(images).raw.numpy()  # marginal scaled by the fusion's peak
    np.testing.assert_allclose(raw, stages.rcam * stages.fused.max(axis=(1, 2), keepdims=True),
                               rtol=1e-5, atol=1e-6)


def hand_preprocess(image: Image.Image, side: int) -> torch.Tensor:
    """PIL bilinear resize to side x side, [0, 1], ImageNet mean/std: (1, 3, side, side)."""
    array = np.asarray(image.resize((side, side), Image.Resampling.BILINEAR), np.float32) / 255
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    return torch.from_numpy(((array - mean) / std).transpose(2, 0, 1).copy())[None]


def test_scale_2_is_the_original_image_resized(model):
    rng = np.random.default_rng(21)
    originals = [Image.fromarray(rng.integers(0, 256, (45, 70, 3), dtype=np.uint8)),
                 Image.fromarray(rng.integers(0, 256, (64, 30, 3), dtype=np.uint8))]
    kept = [np.asarray(o).copy() for o in originals]
    classifier = Classifier(module=model, input_size=(16, 16))
    batch = classifier.preprocess_batch(originals)
    stages = RCAM3(classifier, config=TINY).stages(batch, sources=originals)
    for row, original in enumerate(originals):
        x2 = hand_preprocess(original, 32)
        with torch.no_grad():
            features = model.features(x2)[0]  # (6, 8, 8), the CAM layer's output
            p2 = model(x2)[0].softmax(0)
        cls = int(stages.classes[row])
        cam2 = np.einsum("k,khw->hw", model.fc.weight[cls].detach().numpy(), features.numpy())
        np.testing.assert_allclose(stages.cam2[row], cam2, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(stages.p2[row], float(p2[cls]), rtol=1e-5)
        np.testing.assert_array_equal(np.asarray(original), kept[row])  # not modified
    # the 224 tensor upsampled (scale2_input="tensor", or no originals) sees less detail
    upsampled = RCAM3(classifier, config=replace(TINY, scale2_input="tensor")).stages(
        batch, sources=originals)
    without = RCAM3(classifier, config=TINY).stages(batch)
    np.testing.assert_array_equal(upsampled.cam2, without.cam2)
    assert not np.allclose(upsampled.cam2, stages.cam2, atol=1e-3)
    with pytest.raises(InputError, match="sources"):
        RCAM3(classifier, config=TINY)(batch, sources=originals[:1])
    with pytest.raises(InputError, match="sources"):
        RCAM3(classifier, config=TINY)(batch, sources=[np.zeros((4, 4, 3))] * 2)


class Staged(nn.Module):
    """Stages of blocks, as EfficientNet: stage1 (2 blocks at 8x8), stage2 (1 block at 8x8,
    then one at 4x4), head at 4x4."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=2, padding=1)  # 16 -> 8
        self.stage1 = nn.Sequential(nn.Conv2d(4, 5, 3, padding=1), nn.Conv2d(5, 3, 1))
        self.stage2 = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1),
                                    nn.Conv2d(2, 6, 3, stride=2, padding=1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, NUM_CLASSES)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.stage2(self.stage1(self.stem(images)))).flatten(1))


def test_shape_groups_gather_every_block_of_the_size_and_pca_runs_over_them():
    staged = seeded(Staged)
    sample = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    # 8x8 maps: the stem (no children) and the blocks of stage1 and of stage2 at 8x8
    assert shape_layer_groups(staged, sample, "stage2.1", ("stage1",)) == (
        ("stem", "stage1.0", "stage1.1", "stage2.0"),)
    config = RCAMConfig(scales=(16, 32), shape_layers=("stage1",), shape_group="size")
    stages = RCAM1(staged, layer="stage2.1", config=config).stages(sample)
    with torch.no_grad():
        stem = staged.stem(sample)
        block1 = staged.stage1[0](stem)
        block2 = staged.stage1[1](block1)
        block3 = staged.stage2[0](block2)
    for row in range(2):
        stacked = torch.cat([stem, block1, block2, block3], 1)[row].numpy()  # (14, 8, 8)
        data = stacked.reshape(14, -1).T.astype(np.float64)
        data -= data.mean(0)
        _, _, vt = np.linalg.svd(data, full_matrices=False)
        first = data @ vt[0]
        first = (first - first.min()) / np.ptp(first)
        got = stages.shapes1[0][row].maps[0].reshape(-1).astype(np.float64)
        assert min(np.abs(got - first).max(), np.abs(got - (1 - first)).max()) < 1e-5
    assert stages.shapes1[0][0].loadings.shape == (3, 14)


def test_the_paper_preset_and_its_option():
    paper = PRESETS["paper"]
    assert (paper.fuse_inputs, paper.variogram_fit, paper.sigma_as) == ("raw", "cressie",
                                                                       "window")
    assert paper.radius is None and paper.radius_scale == 1.0
    assert (paper.shape_group, paper.scale2_input, paper.scales) == ("size", "image",
                                                                     (224, 448))
    assert paper.crf_size is None  # the CRF on rCAM_3 at 224
    model = seeded(TwoStrideCNN)
    assert RCAM(model, preset="paper").config == paper
    assert RCAM(model, preset="paper", radius=2).config == replace(paper, radius=2)
    assert RCAM(model, preset="default").config == RCAMConfig()
    with pytest.raises(InputError, match="preset"):
        RCAM(model, preset="nope")
    with pytest.raises(InputError, match="preset"):
        RCAM(model, preset="paper", config=TINY)


def test_repeated_images_share_their_work_and_give_per_class_maps(model, images):
    method = RCAM3(model, config=TINY)
    batch = method(images[:1].repeat(3, 1, 1, 1), target=[0, 3, 1])
    for row, cls in enumerate([0, 3, 1]):
        alone = method(images[:1], target=cls)
        np.testing.assert_allclose(batch.maps[row], alone.maps[0], atol=1e-6)
    top2 = method(images, target="top2")
    assert top2.maps.shape == (4, 16, 16) and top2.image_index.tolist() == [0, 0, 1, 1]


def test_inputs_of_another_size_are_resized_to_the_scales(model):
    images = torch.randn(1, 3, 20, 20, generator=torch.Generator().manual_seed(5))
    result = RCAM(model, config=TINY)(images)
    assert result.maps.shape == (1, 20, 20)


def test_flat_options_override_the_config(model):
    method = RCAM(model, scales="16,32", shape_layers="features.relu2, features.relu1",
                  eps=0.05, crf_iterations=2)
    assert method.config.scales == (16, 32) and method.config.shape_layers == TINY_LAYERS
    assert method.config.eps == 0.05 and method.config.crf_iterations == 2
    more = RCAM(model, radius_scale=2, fuse_inputs="raw", crf_size=64, bilateral_srgb=7,
                bilateral_compat=1)
    assert more.config.radius_scale == 2 and more.config.fuse_inputs == "raw"
    assert more.config.crf_size == 64 and more.config.crf.bilateral_srgb == 7
    assert more.config.crf.bilateral_compat == 1
    assert RCAM(model, crf_size=0).config.crf_size is None


def test_callable_targets_and_bad_layers_are_rejected(model, images):
    with pytest.raises(TargetError):
        RCAM(model, config=TINY)(images, target=lambda logits: logits[:, 0])
    with pytest.raises(LayerError):
        RCAM(model, scales=(16, 32), shape_layers=("features.nope",))(images)


def test_no_hooks_left_and_model_untouched(model, images):
    model.train()
    before = copy.deepcopy(model.state_dict())
    for name in STAGE_METHODS:
        STAGE_METHODS[name](model, scales=(16, 32))(images)
    assert hooks_of(model) == 0
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())

    raising = seeded(RaisesAtScale2)
    with pytest.raises(RuntimeError, match="boom at scale 2"):
        RCAM(raising, config=TINY)(images)
    assert hooks_of(raising) == 0


def test_embedded_model_gives_rcam_maps_with_every_stage(embedded_model):
    image = embedded_model.preprocess_batch([load_image(CHELSEA)])
    method = RCAM(embedded_model)
    result = method(image)
    stages = method.last_stages
    assert stages.shape_layers == ("features.stage5", "features.stage3")
    assert stages.cam1.shape == (1, 7, 7) and stages.cam2.shape == (1, 14, 14)
    assert [s[0].maps.shape for s in stages.shapes1] == [(3, 14, 14), (3, 28, 28)]
    assert [s[0].maps.shape for s in stages.shapes2] == [(3, 28, 28), (3, 56, 56)]
    assert stages.radii1.shape == (1, 3) and stages.radii2.shape == (1, 2)
    for field in ("rcam1", "rcam2", "fused", "rcam3", "rcam"):
        assert getattr(stages, field).shape == (1, 224, 224)
    assert result.maps.shape == (1, 224, 224)
    assert 0.0 <= float(result.maps.min()) and float(result.maps.max()) <= 1.0
    assert embedded_model.class_name(int(result.classes[0])) in ("tabby", "tiger cat",
                                                                  "Egyptian cat")
    assert hooks_of(embedded_model.module) == 0


# ------------------------------------------------------------------------------ rCAM in boxes


def test_rcam_in_box_returns_a_map_the_size_of_the_box(model):
    classifier = Classifier(module=model, input_size=(16, 16))
    rgb = np.random.default_rng(6).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    box = (5.5, 3.2, 30.0, 27.9)
    heat = rcam_in_box(classifier, rgb, box, config=TINY)
    assert heat.shape == (25, 25) and heat.dtype == np.float32  # rows 3..27, columns 5..29
    assert 0.0 <= heat.min() and heat.max() <= 1.0
    clipped = rcam_in_box(classifier, Image.fromarray(rgb), (40, 30, 60, 50), config=TINY,
                          stage="rcam1")
    assert clipped.shape == (10, 10)
    canvas = rcam_boxes(classifier, rgb, np.array([box, (40, 30, 60, 50)]), config=TINY)
    assert canvas.shape == (40, 50)
    np.testing.assert_allclose(canvas[3:28, 5:30], heat, atol=1e-4)  # batched vs alone
    assert not canvas[:3].any() and not canvas[28:30, :40].any()
    assert not rcam_boxes(classifier, rgb, np.zeros((0, 4)), config=TINY).any()
    with pytest.raises(InputError):
        rcam_in_box(classifier, rgb, (60, 0, 70, 10), config=TINY)
    with pytest.raises(InputError):
        rcam_in_box(classifier, rgb, box, margin=-1.0, config=TINY)


def test_evaluate_gives_rcam_the_original_image_for_scale_2(embedded_model):
    from wsolkit.apps.evaluate import EvaluateSettings, evaluate
    from wsolkit.data import open_dataset
    from wsolkit.eval.protocol import protocol_map

    davis = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis"
    dataset = open_dataset(davis)
    evaluation = evaluate(dataset, EvaluateSettings(method="rcam2", limit=1), embedded_model)
    sample = list(dataset)[0]
    image = load_image(sample.path)  # an 854x480 frame: I_2 has detail the 224 tensor lacks
    batch = embedded_model.preprocess_batch([image])
    from_image = RCAM2(embedded_model)(batch, sources=[image]).raw[0].numpy()
    from_tensor = RCAM2(embedded_model)(batch).raw[0].numpy()
    np.testing.assert_allclose(evaluation.images[0].heatmap, protocol_map(from_image),
                               atol=1e-5)
    assert np.abs(protocol_map(from_tensor) - protocol_map(from_image)).max() > 0.01


def test_rcam_options_are_the_config_fields_checked_at_the_boundary():
    from dataclasses import fields

    from wsolkit.maps import make_method
    from wsolkit.maps.options import option_defaults
    from wsolkit.maps.rcam_config import OPTIONS

    model = seeded(TwoStrideCNN)
    config_fields = {f.name for f in fields(RCAMConfig)}
    crf_fields = {f.name for f in fields(CRFParams)}
    # every option names a config field, or a field of its CRF kernel
    assert all(name in config_fields or name in crf_fields for name in OPTIONS)
    accepted = option_defaults(RCAM)
    assert set(OPTIONS) | {"layer", "fc", "upsample", "config", "preset"} == set(accepted)
    method = make_method("rcam", model, eps=0.5, radius=0, bilateral_srgb=7.0)
    assert method.config.eps == 0.5 and method.config.radius is None
    assert method.config.crf.bilateral_srgb == 7.0
    with pytest.raises(InputError, match="option eps='x' of rcam: expected a number"):
        make_method("rcam", model, eps="x")
    with pytest.raises(InputError, match="option 'window' is unknown to rcam"):
        make_method("rcam", model, window=3)
    with pytest.raises(TypeError, match="window"):
        RCAM(model, window=3)
