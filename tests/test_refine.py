import math

import cv2
import numpy as np
import pytest
import torch

from wsolkit.errors import InputError
from wsolkit.refine import (
    Localization,
    boxes_from_mask,
    component_masks,
    largest_component,
    localize,
    localize_stack,
    resize_map,
    scale_boxes,
    threshold_map,
    threshold_value,
)

# ---------------------------------------------------------------- threshold


TINY = np.array([[0.0, 0.2, 0.4], [0.6, 0.8, 1.0]], dtype=np.float32)


def test_fixed_threshold():
    mask = threshold_map(TINY, "fixed", 0.6)
    assert mask.dtype == np.bool_
    np.testing.assert_array_equal(mask, [[False, False, False], [True, True, True]])
    assert threshold_value(TINY, "fixed", 0.6) == 0.6


def test_fraction_threshold_uses_max():
    heat = TINY * 0.5  # max 0.5; fraction 0.5 -> t = 0.25
    assert threshold_value(heat, "fraction", 0.5) == pytest.approx(0.25)
    np.testing.assert_array_equal(
        threshold_map(heat, "fraction", 0.5), [[False, False, False], [True, True, True]]
    )
    # default method is fraction with value 0.5
    np.testing.assert_array_equal(threshold_map(heat), threshold_map(heat, "fraction", 0.5))


def test_mean_threshold():
    heat = np.array([[0.0, 0.0], [0.2, 0.6]])  # mean 0.2
    assert threshold_value(heat, "mean") == pytest.approx(0.2)
    np.testing.assert_array_equal(threshold_map(heat, "mean"), [[False, False], [True, True]])
    assert threshold_value(heat, "mean", 2.0) == pytest.approx(0.4)
    np.testing.assert_array_equal(
        threshold_map(heat, "mean", 2.0), [[False, False], [False, True]]
    )


def test_threshold_is_inclusive():
    heat = np.array([[0.5, 0.49]])
    np.testing.assert_array_equal(threshold_map(heat, "fixed", 0.5), [[True, False]])


def test_otsu_separates_bimodal_modes():
    rng = np.random.default_rng(0)
    low = rng.normal(0.2, 0.03, size=(20, 20))
    high = rng.normal(0.8, 0.03, size=(20, 20))
    heat = np.clip(np.concatenate([low, high], axis=1), 0, 1)
    mask = threshold_map(heat, "otsu")
    assert not mask[:, :20].any()
    assert mask[:, 20:].all()
    # Otsu's variance is flat across the empty gap; like cv2 it takes the first maximum
    t = threshold_value(heat, "otsu")
    assert heat[:, :20].max() < t <= heat[:, 20:].min()


def test_otsu_matches_cv2_on_uint8_data():
    rng = np.random.default_rng(1)
    levels = np.concatenate(
        [rng.integers(10, 90, size=300), rng.integers(150, 240, size=200), [0, 255]]
    ).astype(np.uint8).reshape(2, -1)
    cv_t, cv_mask = cv2.threshold(levels, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    heat = levels.astype(np.float32) / 255.0
    np.testing.assert_array_equal(threshold_map(heat, "otsu"), cv_mask > 0)
    assert threshold_value(heat, "otsu") == (cv_t + 1) / 256


def test_otsu_constant_map_is_empty():
    heat = np.full((4, 5), 0.7)
    assert not threshold_map(heat, "otsu").any()
    assert threshold_value(heat, "otsu") == math.inf
    assert not threshold_map(np.zeros((3, 3)), "otsu").any()


def test_threshold_torch_in_torch_out_matches_numpy():
    heat = torch.tensor(TINY)
    for method in ("fixed", "fraction", "mean", "otsu"):
        mask = threshold_map(heat, method)
        assert isinstance(mask, torch.Tensor)
        assert mask.dtype == torch.bool
        np.testing.assert_array_equal(mask.numpy(), threshold_map(TINY, method))


def test_threshold_does_not_modify_input():
    heat = TINY.copy()
    tensor = torch.tensor(TINY)
    for method in ("fixed", "fraction", "mean", "otsu"):
        threshold_map(heat, method)
        threshold_map(tensor, method)
    np.testing.assert_array_equal(heat, TINY)
    np.testing.assert_array_equal(tensor.numpy(), TINY)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "median"}, r"^method must be one of"),
        ({"method": "fixed", "value": 1.5}, r"^value must lie in \[0, 1\]"),
        ({"method": "fraction", "value": -0.1}, r"^value must lie in \[0, 1\]"),
        ({"method": "mean", "value": -1.0}, r"^value must be finite and >= 0"),
        ({"method": "fixed", "value": float("nan")}, r"^value must be a real number"),
        ({"method": "fixed", "value": "0.5"}, r"^value must be a real number"),
    ],
)
def test_threshold_bad_arguments(kwargs, match):
    with pytest.raises(InputError, match=match):
        threshold_map(TINY, **kwargs)
    with pytest.raises(InputError, match=match):
        threshold_value(TINY, **kwargs)


def test_threshold_bad_heatmaps():
    with pytest.raises(InputError, match=r"^heatmap must be 2-D"):
        threshold_map(np.zeros((1, 3, 3)))
    with pytest.raises(InputError, match=r"^heatmap must be 2-D"):
        threshold_map(torch.zeros(3))
    with pytest.raises(InputError, match=r"^heatmap contains NaN"):
        threshold_map(np.array([[0.1, np.nan]]))
    with pytest.raises(InputError, match=r"^heatmap values must lie in \[0, 1\]"):
        threshold_map(np.array([[0.1, 2.0]]))
    with pytest.raises(InputError, match=r"^heatmap must be a numpy array or torch tensor"):
        threshold_map([[0.1, 0.2]])
    with pytest.raises(InputError, match=r"^heatmap must not be empty"):
        threshold_map(np.zeros((0, 3)))


# ---------------------------------------------------------------- components


def block_mask():
    mask = np.zeros((10, 10), dtype=bool)
    mask[4:6, 3:6] = True  # rows 4..5, columns 3..5 (3 wide, 2 high)
    return mask


def two_blobs():
    """Big blob (6 px, low heat) top-left, small blob (2 px, high heat) bottom-right."""
    mask = np.zeros((8, 8), dtype=bool)
    mask[0:2, 0:3] = True
    mask[6, 6:8] = True
    heat = np.zeros((8, 8), dtype=np.float32)
    heat[0:2, 0:3] = [[0.2, 0.3, 0.4], [0.3, 0.4, 0.5]]  # mean 0.35
    heat[6, 6:8] = [0.8, 1.0]  # mean 0.9
    return mask, heat


def test_single_block_box():
    boxes, scores = boxes_from_mask(block_mask())
    assert boxes.dtype == np.float32 and scores.dtype == np.float32
    np.testing.assert_array_equal(boxes, [[3, 4, 6, 6]])
    np.testing.assert_allclose(scores, [6 / 100])


def test_largest_vs_all():
    mask, heat = two_blobs()
    boxes, scores = boxes_from_mask(mask, heat, mode="largest")
    np.testing.assert_array_equal(boxes, [[0, 0, 3, 2]])
    np.testing.assert_allclose(scores, [0.35], rtol=1e-6)

    boxes, scores = boxes_from_mask(mask, heat, mode="all")
    np.testing.assert_array_equal(boxes, [[6, 6, 8, 7], [0, 0, 3, 2]])  # by score
    np.testing.assert_allclose(scores, [0.9, 0.35], rtol=1e-6)

    boxes, scores = boxes_from_mask(mask, mode="all")  # area fraction, descending
    np.testing.assert_array_equal(boxes, [[0, 0, 3, 2], [6, 6, 8, 7]])
    np.testing.assert_allclose(scores, [6 / 64, 2 / 64])


def test_diagonal_pixels_are_one_component():
    mask = np.eye(4, dtype=bool)
    boxes, _ = boxes_from_mask(mask, mode="all")
    np.testing.assert_array_equal(boxes, [[0, 0, 4, 4]])


def test_full_mask_is_one_box():
    boxes, scores = boxes_from_mask(np.ones((3, 5), dtype=bool), mode="all")
    np.testing.assert_array_equal(boxes, [[0, 0, 5, 3]])
    np.testing.assert_allclose(scores, [1.0])


def test_empty_mask():
    for mode in ("largest", "all"):
        boxes, scores = boxes_from_mask(np.zeros((5, 5), dtype=bool), mode=mode)
        assert boxes.shape == (0, 4) and boxes.dtype == np.float32
        assert scores.shape == (0,) and scores.dtype == np.float32
    assert component_masks(np.zeros((5, 5), dtype=bool), "all") == []
    assert not largest_component(np.zeros((5, 5), dtype=bool)).any()


def test_boxes_from_torch_inputs_return_numpy():
    mask, heat = two_blobs()
    boxes, scores = boxes_from_mask(torch.from_numpy(mask), torch.from_numpy(heat), "all")
    assert isinstance(boxes, np.ndarray) and isinstance(scores, np.ndarray)
    np.testing.assert_array_equal(boxes, [[6, 6, 8, 7], [0, 0, 3, 2]])


def test_component_masks_and_largest():
    mask, _ = two_blobs()
    parts = component_masks(mask, "all")
    assert len(parts) == 2
    assert parts[0].dtype == np.bool_
    assert parts[0].sum() == 6 and parts[1].sum() == 2
    np.testing.assert_array_equal(parts[0] | parts[1], mask)
    only = component_masks(mask)
    assert len(only) == 1
    np.testing.assert_array_equal(only[0], parts[0])
    np.testing.assert_array_equal(largest_component(mask), parts[0])

    tensor_parts = component_masks(torch.from_numpy(mask), "all")
    assert all(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in tensor_parts)
    largest = largest_component(torch.from_numpy(mask))
    assert isinstance(largest, torch.Tensor)
    np.testing.assert_array_equal(largest.numpy(), parts[0])


def test_components_do_not_modify_input():
    mask, heat = two_blobs()
    mask_before, heat_before = mask.copy(), heat.copy()
    boxes_from_mask(mask, heat, "all")
    component_masks(mask, "all")
    largest_component(mask)
    localize(heat, mode="all")
    np.testing.assert_array_equal(mask, mask_before)
    np.testing.assert_array_equal(heat, heat_before)


def test_components_errors():
    mask, heat = two_blobs()
    with pytest.raises(InputError, match=r"^mode must be one of"):
        boxes_from_mask(mask, mode="biggest")
    with pytest.raises(InputError, match=r"^mask must be 2-D"):
        boxes_from_mask(mask[None])
    with pytest.raises(InputError, match=r"^heatmap shape .* does not match mask shape"):
        boxes_from_mask(mask, heat[:4])
    with pytest.raises(InputError, match=r"^heatmap contains NaN"):
        boxes_from_mask(mask, np.full((8, 8), np.nan))
    with pytest.raises(InputError, match=r"^mode must be one of"):
        component_masks(mask, "some")
    with pytest.raises(InputError, match=r"^min_area must be an integer >= 0"):
        localize(heat, min_area=-1)


def test_localize():
    _, heat = two_blobs()
    # fixed 0.2 keeps both blobs (all values in them are >= 0.2)
    result = localize(heat, "fixed", 0.2, mode="all")
    assert isinstance(result, Localization)
    np.testing.assert_array_equal(result.boxes, [[6, 6, 8, 7], [0, 0, 3, 2]])
    np.testing.assert_allclose(result.scores, [0.9, 0.35], rtol=1e-6)
    np.testing.assert_array_equal(result.mask, heat >= 0.2)

    largest = localize(heat, "fixed", 0.2)
    np.testing.assert_array_equal(largest.boxes, [[0, 0, 3, 2]])
    assert largest.mask.sum() == 6

    # min_area drops the 6-pixel blob when it exceeds its size, so nothing remains
    assert localize(heat, "fixed", 0.2, min_area=7).boxes.shape == (0, 4)
    # min_area 3 drops the 2-pixel blob in "all" mode
    kept = localize(heat, "fixed", 0.2, mode="all", min_area=3)
    np.testing.assert_array_equal(kept.boxes, [[0, 0, 3, 2]])

    # default: fraction 0.5 of max 1.0 -> only the hot blob survives
    default = localize(heat)
    np.testing.assert_array_equal(default.boxes, [[6, 6, 8, 7]])

    with pytest.raises(AttributeError):
        default.boxes = None  # frozen


def test_localize_torch_mask_type():
    _, heat = two_blobs()
    result = localize(torch.from_numpy(heat), "fixed", 0.2, mode="all")
    assert isinstance(result.mask, torch.Tensor) and result.mask.dtype == torch.bool
    assert isinstance(result.boxes, np.ndarray)
    np.testing.assert_array_equal(result.mask.numpy(), heat >= 0.2)


def _reference_components(heat: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """8-connected components by scipy's labelling: edge boxes and mean heat, best first."""
    from scipy import ndimage

    labels, count = ndimage.label(heat >= level, structure=np.ones((3, 3)))
    rows = []
    for index, (ys, xs) in enumerate(ndimage.find_objects(labels), start=1):
        mean = heat[labels == index].astype(np.float64).mean()
        rows.append((-mean, index, [xs.start, ys.start, xs.stop, ys.stop], mean))
    rows.sort(key=lambda row: (row[0], row[1]))  # score descending, then raster order
    return (np.array([r[2] for r in rows], np.float32).reshape(-1, 4),
            np.array([r[3] for r in rows], np.float32))


def test_localize_stack_matches_scipy_labelling_map_by_map():
    rng = np.random.default_rng(3)
    maps = rng.random((6, 17, 13)).astype(np.float32)
    maps[1, 0, :] = 1.0  # touches the top edge: must not join the map above
    maps[0, -1, :] = 1.0  # touches the bottom edge: must not join the map below
    maps[2] = 0.7  # one tie-free full component
    levels = np.array([0.8, 0.9, 0.5, 0.95, 0.3, 1.01])  # the last map has no foreground
    found = localize_stack(maps, levels)
    assert len(found) == 6
    total = 0
    for heat, level, (boxes, scores) in zip(maps, levels, found, strict=True):
        ref_boxes, ref_scores = _reference_components(heat, level)
        np.testing.assert_array_equal(boxes, ref_boxes)
        np.testing.assert_allclose(scores, ref_scores, rtol=1e-6)
        assert boxes.dtype == np.float32 and scores.dtype == np.float32
        total += len(boxes)
    assert total > 20 and len(found[5][0]) == 0 and len(found[2][0]) == 1


def test_localize_stack_places_blobs_of_cropped_maps_where_they_are():
    # sparse maps: each map's foreground is cropped to its own rectangle before labelling
    rng = np.random.default_rng(6)
    maps = np.zeros((5, 30, 40), np.float32)
    maps[0, 25:30, 33:40] = 0.9  # bottom-right corner
    maps[1, 0:2, 0:3] = 0.8  # top-left corner
    maps[1, 10:14, 20:22] = rng.uniform(0.6, 1.0, (4, 2))
    maps[2, 5:6, 7:8] = 1.0  # one pixel
    maps[3] = rng.random((30, 40)) * (rng.random((30, 40)) > 0.9)  # scattered
    levels = np.array([0.5, 0.5, 0.5, 0.3, 0.5])  # map 4 is empty
    for heat, level, (boxes, scores) in zip(maps, levels, localize_stack(maps, levels),
                                            strict=True):
        ref_boxes, ref_scores = _reference_components(heat, level)
        np.testing.assert_array_equal(boxes, ref_boxes)
        np.testing.assert_allclose(scores, ref_scores, rtol=1e-6)
    assert localize_stack(maps[4:], [0.5])[0][0].shape == (0, 4)


def test_localize_stack_equals_localize_all_components():
    maps = np.random.default_rng(4).random((3, 20, 20))
    found = localize_stack(torch.from_numpy(maps), torch.tensor([0.6, 0.7, 0.9]))
    for heat, level, (boxes, scores) in zip(maps, (0.6, 0.7, 0.9), found, strict=True):
        single = localize(heat, "fixed", level, mode="all")
        np.testing.assert_array_equal(boxes, single.boxes)
        np.testing.assert_array_equal(scores, single.scores)


def test_localize_stack_errors_and_input_untouched():
    maps = np.random.default_rng(5).random((2, 4, 4))
    before = maps.copy()
    localize_stack(maps, [0.5, 0.5])
    np.testing.assert_array_equal(maps, before)
    assert localize_stack(np.zeros((0, 4, 4)), []) == []
    with pytest.raises(InputError, match=r"maps must be a \(K, H, W\) stack"):
        localize_stack(maps[0], [0.5])
    with pytest.raises(InputError, match="thresholds has 1 values for 2 maps"):
        localize_stack(maps, [0.5])
    maps[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="maps contain NaN or inf"):
        localize_stack(maps, [0.5, 0.5])


# ---------------------------------------------------------------- resize


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_resize_numpy_shapes_and_range(interpolation):
    rng = np.random.default_rng(2)
    heat = (rng.random((7, 7)) > 0.5).astype(np.float32)  # step edges: bicubic overshoots
    before = heat.copy()
    out = resize_map(heat, (20, 30), interpolation)
    assert isinstance(out, np.ndarray)
    assert out.shape == (20, 30) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_array_equal(heat, before)

    stack = np.stack([heat, 1 - heat])
    out = resize_map(stack, (5, 6), interpolation)
    assert out.shape == (2, 5, 6)
    np.testing.assert_allclose(out[0], resize_map(heat, (5, 6), interpolation))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_resize_torch_shapes_and_range(interpolation):
    heat = (torch.rand(2, 7, 7, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    before = heat.clone()
    out = resize_map(heat, (20, 30), interpolation)
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, 20, 30) and out.dtype == torch.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert torch.equal(heat, before)
    assert resize_map(heat[0], (3, 4), interpolation).shape == (3, 4)


def test_resize_numpy_and_torch_agree_bilinear():
    heat = np.linspace(0, 1, 48, dtype=np.float32).reshape(6, 8)
    out_np = resize_map(heat, (12, 16))
    out_t = resize_map(torch.from_numpy(heat), (12, 16))
    np.testing.assert_allclose(out_np, out_t.numpy(), atol=1e-5)


def test_resize_does_not_clip_out_of_range_input():
    heat = np.array([[0.0, 2.0], [2.0, 0.0]], dtype=np.float64)
    out = resize_map(heat, (4, 4))
    assert out.dtype == np.float64
    assert out.max() > 1.0


def test_resize_constant_map_stays_constant():
    out = resize_map(np.full((3, 3), 0.25, np.float32), (9, 5), "bicubic")
    np.testing.assert_allclose(out, 0.25, atol=1e-6)


def test_resize_errors():
    heat = np.zeros((4, 4), np.float32)
    with pytest.raises(InputError, match=r"^interpolation must be one of"):
        resize_map(heat, (2, 2), "lanczos")
    with pytest.raises(InputError, match=r"^size must be a pair"):
        resize_map(heat, (2, 0))
    with pytest.raises(InputError, match=r"^size must be a pair"):
        resize_map(heat, 5)
    with pytest.raises(InputError, match=r"^heatmap must be \(H, W\) or \(N, H, W\)"):
        resize_map(np.zeros((1, 1, 4, 4), np.float32), (2, 2))
    with pytest.raises(InputError, match=r"^heatmap must have a floating dtype"):
        resize_map(np.zeros((4, 4), np.uint8), (2, 2))


def test_scale_boxes():
    boxes = np.array([[3, 4, 6, 6], [0, 0, 10, 20]], dtype=np.float32)
    before = boxes.copy()
    out = scale_boxes(boxes, from_size=(20, 10), to_size=(40, 5))  # H x2, W x0.5
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[1.5, 8, 3, 12], [0, 0, 5, 40]])
    np.testing.assert_array_equal(boxes, before)

    tensor = torch.tensor([[3, 4, 6, 6]])
    out_t = scale_boxes(tensor, (20, 10), (40, 5))
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float32
    np.testing.assert_allclose(out_t.numpy(), [[1.5, 8, 3, 12]])

    assert scale_boxes(np.zeros((0, 4)), (2, 2), (4, 4)).shape == (0, 4)
    with pytest.raises(InputError, match=r"^boxes must have shape \(K, 4\)"):
        scale_boxes(np.zeros((3,)), (2, 2), (4, 4))
    with pytest.raises(InputError, match=r"^to_size must be a pair"):
        scale_boxes(boxes, (2, 2), (4, -1))


def test_localize_stack_float32_thresholds_match_float64_comparison():
    from wsolkit.refine.components import _exact_levels

    rng = np.random.default_rng(7)
    levels = rng.random(50)  # float64 thresholds, mostly not float32 numbers
    near = levels.astype(np.float32)
    values = np.concatenate([near, np.nextafter(near, np.float32(0)),
                             np.nextafter(near, np.float32(2)), rng.random(200).astype(np.float32)])
    exact = _exact_levels(levels, np.dtype(np.float32))
    assert exact.dtype == np.float32
    for level, level32 in zip(levels, exact, strict=True):
        np.testing.assert_array_equal(values >= level32,
                                      values.astype(np.float64) >= level)
