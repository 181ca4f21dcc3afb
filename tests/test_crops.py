"""Heatmaps of box crops (wsolkit.maps.crops) and the windows they are cut from."""

import numpy as np
import pytest
from brightness import SIZE, brightness_classifier

from wsolkit.errors import InputError
from wsolkit.maps import get_method
from wsolkit.maps.crops import crop_heatmaps
from wsolkit.refine.boxes import box_window, expand_box, expand_boxes


def test_box_window_by_hand():
    # width 20, height 40: 0.1 of them is 2 and 4 px per side; the image is 50 high
    assert box_window((10, 20, 30, 60), 0.1, (50, 100)) == (8, 16, 32, 50)
    # fractional edges cover every pixel they touch: floor(4.5 - 0.75), ceil(7.5 + 0.75)
    assert box_window((4.5, 0, 7.5, 2), 0.25, (10, 10)) == (3, 0, 9, 3)
    assert box_window((-30, -30, -10, -10), 0.1, (10, 10))[2:] == (0, 0)  # outside: empty


def test_expand_box_is_one_row_of_expand_boxes_in_float64():
    box = np.array([100.2, 3.3, 141.0, 9.9])
    one = expand_box(box, 0.25)
    assert one.dtype == np.float64
    np.testing.assert_allclose(one, [100.2 - 10.2, 3.3 - 1.65, 141.0 + 10.2, 9.9 + 1.65])
    np.testing.assert_allclose(expand_boxes(box[None], 0.25)[0], one, rtol=1e-6)


def _image_with_white_left_half(height, width):
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 2] = 255
    return image


def test_crop_at_input_size_gives_the_brightness_map():
    # objectness of the brightness model is the brightness, min-max scaled: 1 on white, 0 on
    # black; a crop of exactly the input size is neither resized in nor out
    classifier = brightness_classifier()
    method = get_method("objectness")(classifier)
    image = np.zeros((100, 120, 3), np.uint8)
    image[30:50, 40:60] = 255
    x0, y0 = 20, 10
    crop = image[y0:y0 + SIZE, x0:x0 + SIZE]
    (heat,) = crop_heatmaps(method, classifier, [crop])
    expected = np.zeros((SIZE, SIZE), np.float32)
    expected[30 - y0:50 - y0, 40 - x0:60 - x0] = 1.0
    assert heat.shape == (SIZE, SIZE) and heat.dtype == np.float32
    np.testing.assert_allclose(heat, expected, atol=1e-6)


def test_maps_are_resized_back_to_each_crop():
    classifier = brightness_classifier()
    method = get_method("objectness")(classifier)
    crops = [_image_with_white_left_half(32, 40), _image_with_white_left_half(80, 16)]
    heats = crop_heatmaps(method, classifier, crops)
    assert [h.shape for h in heats] == [(32, 40), (80, 16)]
    for heat, crop in zip(heats, crops, strict=True):
        half = crop.shape[1] // 2
        # two pixels away from the step the bilinear round trip is exact
        np.testing.assert_allclose(heat[:, : half - 2], 1.0, atol=1e-6)
        np.testing.assert_allclose(heat[:, half + 2:], 0.0, atol=1e-6)
        assert heat.min() >= 0.0 and heat.max() <= 1.0
    unsized = crop_heatmaps(method, classifier, crops, resize=False)
    assert [h.shape for h in unsized] == [(SIZE, SIZE)] * 2
    one_by_one = crop_heatmaps(method, classifier, crops, batch_size=1)
    for a, b in zip(heats, one_by_one, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_bad_crops_raise():
    classifier = brightness_classifier()
    method = get_method("objectness")(classifier)
    with pytest.raises(InputError, match="non-empty"):
        crop_heatmaps(method, classifier, [np.zeros((0, 5, 3), np.uint8)])
    with pytest.raises(InputError, match="batch_size"):
        crop_heatmaps(method, classifier, [np.zeros((5, 5, 3), np.uint8)], batch_size=0)
