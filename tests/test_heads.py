"""WILDCAT/ex-CAM head: pooling and sequential dropout against hand computations; init."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import FEATURE_CHANNELS, NUM_CLASSES, TinyCNN, seeded

from wsolkit.errors import InputError
from wsolkit.models.wildcat import WildcatHead, sequential_dropout, wildcat_pool

# One 2x3 map: values 1 5 3 / 2 -4 0.
MAP = torch.tensor([[[[1.0, 5.0, 3.0], [2.0, -4.0, 0.0]]]])


def test_pool_thesis_form_matches_hand_computation() -> None:
    # 6 positions, k = 0.2 -> round(1.2) = 1: top {5}, bottom {-4}; 5 + 0.6 * -4 = 2.6.
    assert wildcat_pool(MAP, 0.2, 0.2, 0.6).item() == pytest.approx(2.6)
    # k+ = 0.5 -> 3 positions {5, 3, 2}, k- = 2 (an integer count) -> {-4, 0}.
    assert wildcat_pool(MAP, 0.5, 2, 0.7).item() == pytest.approx(10 / 3 + 0.7 * -2)


def test_pool_official_form_halves_the_sum() -> None:
    assert wildcat_pool(MAP, 0.2, 0.2, 0.6, halve=True).item() == pytest.approx(1.3)
    assert wildcat_pool(MAP, 0.5, 2, 0.7, halve=True).item() == pytest.approx(
        (10 / 3 - 1.4) / 2)


def test_pool_without_bottom_term_is_top_mean() -> None:
    assert wildcat_pool(MAP, 2, 0, 0.6).item() == pytest.approx(4.0)  # mean of {5, 3}
    assert wildcat_pool(MAP, 1.0, 0, 0.6).item() == pytest.approx(5.0)  # k = 1: one position


def test_pool_gradient_reaches_only_pooled_positions() -> None:
    maps = MAP.clone().requires_grad_(True)
    wildcat_pool(maps, 0.2, 0.2, 0.6).backward()
    expected = torch.zeros_like(MAP)
    expected[0, 0, 0, 1] = 1.0  # the top position (5)
    expected[0, 0, 1, 1] = 0.6  # the bottom position (-4), weighted by alpha
    assert torch.equal(maps.grad, expected)


# One class, M = 3 maps of 1x3 positions; masks at delta 0.5 are [F > 0].
F1, F2, F3 = [2.0, -2.0, -1.0], [3.0, 1.0, -1.0], [5.0, 7.0, 4.0]


def _maps() -> torch.Tensor:
    return torch.tensor([F1, F2, F3]).view(1, 1, 3, 1, 3)


def test_dropout_intent_matches_hand_computation() -> None:
    # M1 = [1 0 0], M2 = [1 1 0]: F1 kept; F2 * (1 - M1); F3 * (1 - M1)(1 - M2).
    out = sequential_dropout(_maps(), 0.5, "intent").view(3, 3)
    assert torch.equal(out, torch.tensor([F1, [0.0, 1.0, -1.0], [0.0, 0.0, 4.0]]))


def test_dropout_literal_matches_thesis_formulas() -> None:
    # F1 * (1 - M1); F2 * M1 M2; F3 * M1 M2 M3 (M3 = [1 1 1]).
    out = sequential_dropout(_maps(), 0.5, "literal").view(3, 3)
    assert torch.equal(out, torch.tensor([[0.0, -2.0, -1.0], [3.0, 0.0, 0.0],
                                          [5.0, 0.0, 0.0]]))


def test_dropout_threshold_delta_is_on_the_sigmoid() -> None:
    # delta 0.9: sigmoid(F) > 0.9 <=> F > ln 9 = 2.197: M1 = [0 0 0], M2 = [1 0 0].
    assert math.log(9) > 2.0
    out = sequential_dropout(_maps(), 0.9, "intent").view(3, 3)
    assert torch.equal(out, torch.tensor([F1, F2, [0.0, 7.0, 4.0]]))


def test_dropout_masks_are_constants_in_the_gradient() -> None:
    maps = _maps().requires_grad_(True)
    sequential_dropout(maps, 0.5, "intent").sum().backward()
    # d(sum)/dF_j = keep_j exactly: no gradient flows through the thresholded masks.
    expected = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    assert torch.equal(maps.grad.view(3, 3), expected)


def test_dropout_only_in_training_mode() -> None:
    torch.manual_seed(0)
    plain = WildcatHead(4, 3, maps=4)
    excam = WildcatHead(4, 3, maps=4, dropout="intent")
    excam.load_state_dict(plain.state_dict())
    features = torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(1))
    plain.eval(), excam.eval()
    assert torch.equal(plain(features), excam(features))
    excam.train()
    conv = plain.conv(features).view(2, 3, 4, 5, 5)
    by_hand = []  # intent dropout written out per class and map
    for c in range(3):
        keep = torch.ones(2, 5, 5)
        maps = []
        for j in range(4):
            maps.append(conv[:, c, j] * keep)
            keep = keep * (conv[:, c, j] <= 0).float()
        by_hand.append(torch.stack(maps, 1).mean(1))
    assert torch.allclose(excam.class_maps(features), torch.stack(by_hand, 1), atol=1e-6)
    assert not torch.allclose(excam(features), plain(features))


def test_bad_dropout_mode_is_an_input_error() -> None:
    with pytest.raises(InputError, match="dropout='both'"):
        WildcatHead(4, 3, dropout="both")


def test_class_maps_are_the_mean_of_each_class_maps() -> None:
    torch.manual_seed(0)
    head = WildcatHead(4, 3, maps=2).eval()
    features = torch.randn(1, 4, 3, 3)
    weight, bias = head.conv.weight[:, :, 0, 0], head.conv.bias
    channels = torch.einsum("ok,khw->ohw", weight, features[0]) + bias[:, None, None]
    # Channel c * M + m is map m of class c (class-major, as WILDCAT's ClassWisePool).
    expected = (channels[0::2] + channels[1::2]) / 2
    assert torch.allclose(head.class_maps(features)[0], expected, atol=1e-6)


def test_init_from_linear_reproduces_the_classifier_logits() -> None:
    model = seeded(TinyCNN)
    head = WildcatHead(FEATURE_CHANNELS, NUM_CLASSES, maps=8).eval()
    head.init_from_linear(model.fc, noise=0.0)
    images = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = model(images)
        maps = head.class_maps(model.features(images))
    # Spatial mean of each class map = linear layer on average-pooled features = the logits.
    assert torch.allclose(maps.mean((2, 3)), logits, atol=1e-5)


def test_init_noise_is_seeded_and_keeps_the_top1() -> None:
    model = seeded(TinyCNN)
    images = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    heads = []
    for _ in range(2):
        head = WildcatHead(FEATURE_CHANNELS, NUM_CLASSES, maps=8).eval()
        head.init_from_linear(model.fc, noise=0.01, seed=5)
        heads.append(head)
    assert torch.equal(heads[0].conv.weight, heads[1].conv.weight)
    # The M copies of a class differ (noise breaks their symmetry) ...
    assert not torch.equal(heads[0].conv.weight[0], heads[0].conv.weight[1])
    with torch.no_grad():
        features = model.features(images)
        gap = heads[0].class_maps(features).mean((2, 3))
        # ... and spatially uniform features pool to (1 + alpha) x the mean: same ranking.
        uniform = features.mean((2, 3), keepdim=True).expand_as(features)
        pooled = heads[0](uniform)
        logits = model(images)
    assert torch.equal(gap.argmax(1), logits.argmax(1))
    assert torch.allclose(pooled, 1.6 * heads[0].class_maps(uniform).mean((2, 3)), atol=1e-5)
    assert torch.equal(pooled.argsort(1), logits.argsort(1))


def test_unreadable_head_file_is_a_one_line_error_naming_it(tmp_path):
    from wsolkit.errors import ModelError
    from wsolkit.models.wildcat import read_head

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="junk.pt: not a readable head file") as error:
        read_head(junk)
    assert "\n" not in str(error.value)
    assert junk.read_bytes() == b"not a torch file"  # input left as found
