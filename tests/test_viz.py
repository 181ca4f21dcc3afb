import os

import numpy as np
import pytest
import torch
from PIL import Image

from wsolkit.errors import InputError
from wsolkit.viz import draw_boxes, overlay_heatmap, save_png


def gray_image(height=40, width=50, level=100):
    return np.full((height, width, 3), level, dtype=np.uint8)


# ---------------------------------------------------------------- overlay


def test_overlay_shape_dtype_and_input_untouched():
    image = gray_image()
    heat = np.linspace(0, 1, 40 * 50, dtype=np.float32).reshape(40, 50)
    image_before, heat_before = image.copy(), heat.copy()
    out = overlay_heatmap(image, heat)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert out is not image
    np.testing.assert_array_equal(image, image_before)
    np.testing.assert_array_equal(heat, heat_before)


def test_overlay_colors_are_rgb():
    image = np.zeros((2, 2, 3), dtype=np.uint8)
    heat = np.array([[0.0, 0.0], [1.0, 1.0]], dtype=np.float32)
    out = overlay_heatmap(image, heat, alpha=1.0, colormap="jet")
    # jet: 0 -> dark blue, 1 -> dark red (RGB order)
    np.testing.assert_array_equal(out[0, 0], [0, 0, 128])
    np.testing.assert_array_equal(out[1, 0], [128, 0, 0])


def test_overlay_alpha_blend():
    image = gray_image(2, 2, 200)
    heat = np.ones((2, 2), dtype=np.float32)
    np.testing.assert_array_equal(overlay_heatmap(image, heat, alpha=0.0), image)
    out = overlay_heatmap(image, heat, alpha=0.5)
    # 0.5 * (200, 200, 200) + 0.5 * (128, 0, 0)
    np.testing.assert_array_equal(out[0, 0], [164, 100, 100])


def test_overlay_resizes_heatmap_and_accepts_torch():
    image = gray_image(40, 60)
    out = overlay_heatmap(image, torch.rand(10, 15), colormap="VIRIDIS")
    assert out.shape == (40, 60, 3)


def test_overlay_errors():
    image = gray_image()
    heat = np.zeros((40, 50), np.float32)
    with pytest.raises(InputError, match=r"^colormap must be one of"):
        overlay_heatmap(image, heat, colormap="nope")
    with pytest.raises(InputError, match=r"^alpha must be a number in \[0, 1\]"):
        overlay_heatmap(image, heat, alpha=1.5)
    with pytest.raises(InputError, match=r"^image must be an \(H, W, 3\) uint8 RGB array"):
        overlay_heatmap(image.astype(np.float32), heat)
    with pytest.raises(InputError, match=r"^heatmap contains NaN or inf"):
        overlay_heatmap(image, np.full((40, 50), np.nan))
    with pytest.raises(InputError, match=r"^heatmap values must lie in \[0, 1\]"):
        overlay_heatmap(image, heat + 3)


# ---------------------------------------------------------------- boxes


def test_draw_boxes_border_pixels_and_input_untouched():
    image = gray_image(40, 50, 0)
    boxes = np.array([[10, 5, 20, 15]], dtype=np.float32)
    image_before, boxes_before = image.copy(), boxes.copy()
    out = draw_boxes(image, boxes, thickness=1)
    np.testing.assert_array_equal(image, image_before)
    np.testing.assert_array_equal(boxes, boxes_before)
    green = [0, 255, 0]
    # corners at (x0, y0) and (x1 - 1, y1 - 1)
    for x, y in [(10, 5), (19, 5), (10, 14), (19, 14), (15, 5), (10, 10)]:
        np.testing.assert_array_equal(out[y, x], green)
    # just outside the exclusive edges and in the interior: untouched
    for x, y in [(20, 10), (15, 15), (15, 10), (9, 10)]:
        np.testing.assert_array_equal(out[y, x], [0, 0, 0])


def test_draw_boxes_labels_scores_and_non_ascii():
    image = gray_image(120, 160, 0)
    boxes = torch.tensor([[40.0, 50.0, 100.0, 110.0], [5.0, 0.0, 30.0, 20.0]])
    out = draw_boxes(
        image, boxes, labels=["chat noir \u00e9", 3], scores=np.array([0.87, 0.5]),
        color=(255, 0, 0),
    )
    assert out.shape == image.shape and out.dtype == np.uint8
    # label background is drawn above the first box
    assert (out[30:50, 40:100] != 0).any()
    assert not image.any()


def test_draw_boxes_empty_and_default_thickness():
    image = gray_image(600, 900, 0)
    assert np.array_equal(draw_boxes(image, np.zeros((0, 4))), image)
    out = draw_boxes(image, np.array([[100, 100, 200, 200]]))
    # default thickness for a 900-wide image is 3: the line spreads around the edge
    assert (out[100, 150] == [0, 255, 0]).all()
    assert (out[101, 150] == [0, 255, 0]).all()


def test_draw_boxes_errors():
    image = gray_image()
    boxes = np.array([[1, 1, 5, 5]])
    with pytest.raises(InputError, match=r"^boxes must have shape \(K, 4\)"):
        draw_boxes(image, np.zeros((2, 3)))
    with pytest.raises(InputError, match=r"^labels must have 1 entries"):
        draw_boxes(image, boxes, labels=["a", "b"])
    with pytest.raises(InputError, match=r"^scores must have 1 entries"):
        draw_boxes(image, boxes, scores=[0.1, 0.2])
    with pytest.raises(InputError, match=r"^color must be three integers"):
        draw_boxes(image, boxes, color=(0, 300, 0))
    with pytest.raises(InputError, match=r"^thickness must be a positive integer"):
        draw_boxes(image, boxes, thickness=0)
    with pytest.raises(InputError, match=r"^boxes must be finite"):
        draw_boxes(image, np.array([[1, 1, np.nan, 5]]))


# ---------------------------------------------------------------- save_png


def test_save_png_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(13, 17, 3), dtype=np.uint8)
    path = tmp_path / "out.png"
    save_png(path, image)
    with Image.open(path) as loaded:
        assert loaded.format == "PNG" and loaded.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(loaded), image)
    assert os.listdir(tmp_path) == ["out.png"]

    # overwrite in place, str path
    save_png(str(path), image[::-1])
    with Image.open(path) as loaded:
        np.testing.assert_array_equal(np.asarray(loaded), image[::-1])
    assert os.listdir(tmp_path) == ["out.png"]


def test_save_png_missing_directory(tmp_path):
    path = tmp_path / "missing" / "out.png"
    with pytest.raises(InputError, match=r"^cannot write .*missing.*out\.png"):
        save_png(path, gray_image())
    assert not (tmp_path / "missing").exists()


def test_save_png_bad_image(tmp_path):
    with pytest.raises(InputError, match=r"^image for .*out\.png must be"):
        save_png(tmp_path / "out.png", np.zeros((4, 4, 3), np.float32))
    assert os.listdir(tmp_path) == []


def test_save_png_target_is_directory_cleans_temp(tmp_path):
    (tmp_path / "taken.png").mkdir()
    with pytest.raises(InputError, match=r"^cannot write .*taken\.png"):
        save_png(tmp_path / "taken.png", gray_image())
    assert os.listdir(tmp_path) == ["taken.png"]
