import numpy as np
import pytest

from wsolkit.errors import InputError
from wsolkit.eval import BoxAccuracy
from wsolkit.eval.box_accuracy import (
    box_iou_inclusive,
    boxes_from_scoremap,
    normalize_scoremap,
    resize_boxes,
)

SIZE = (224, 224)


def edges(boxes):
    """Inclusive-corner boxes (as the hand-worked cases are written) -> wsolkit edges."""
    out = np.array(boxes)
    out[..., 2:] += 1
    return out


def rect_map(x0, y0, x1, y1, value=1.0, base=None):
    """224x224 map with `value` on pixel columns x0..x1 and rows y0..y1 (inclusive)."""
    m = np.zeros((224, 224), np.float32) if base is None else base
    m[y0 : y1 + 1, x0 : x1 + 1] = value
    return m


def test_rect_map_box_follows_protocol():
    # boundingRect gives x, y, w, h; the protocol box is x, y, x + w, y + h (clipped to 223).
    m = rect_map(50, 60, 149, 139)
    boxes, counts, largest = boxes_from_scoremap(normalize_scoremap(m), np.array([0.0, 0.5]))
    np.testing.assert_array_equal(boxes, [[50, 60, 150, 140], [50, 60, 150, 140]])
    np.testing.assert_array_equal(counts, [1, 1])
    np.testing.assert_array_equal(largest, [0, 1])
    # a blob touching the right/bottom border is clipped to 223
    boxes, _, _ = boxes_from_scoremap(normalize_scoremap(rect_map(200, 210, 223, 223)), [0.5])
    np.testing.assert_array_equal(boxes, [[200, 210, 223, 223]])


def test_gt_equal_to_blob_gives_100():
    metric = BoxAccuracy()
    metric.update(rect_map(50, 60, 149, 139), edges([[50, 60, 149, 139]]), SIZE)
    out = metric.compute()
    # IoU = (100 * 80) / (101 * 81) at every threshold: a hit for all IoU levels.
    assert out["MaxBoxAcc"] == 100.0
    assert out["MaxBoxAccV2"] == 100.0
    assert out["best_threshold"] == 0.0
    assert out["count"] == 1
    assert set(out["curve"]) == {30, 50, 70}
    assert len(out["curve"][50]) == 100 and all(v == 100.0 for v in out["curve"][70])
    assert "top1_loc" not in out


def test_gt_far_from_blob_gives_0():
    metric = BoxAccuracy()
    metric.update(rect_map(10, 10, 60, 60), edges([[150, 150, 220, 220]]), SIZE)
    out = metric.compute()
    assert out["MaxBoxAcc"] == 0.0
    assert out["MaxBoxAccV2"] == 0.0


@pytest.mark.parametrize(
    "gt_y1, iou, v1, v2",
    [
        # predicted box [0, 0, 99, 99]: inclusive area 100 * 100 = 10000
        (49, 5000 / 10000, 100.0, (100 + 100 + 0) / 3),  # exactly 0.5 counts (>=)
        (48, 4900 / 10000, 0.0, (100 + 0 + 0) / 3),
    ],
)
def test_iou_at_one_half_by_hand(gt_y1, iou, v1, v2):
    m = rect_map(0, 0, 98, 98)  # boundingRect w = h = 99 -> box [0, 0, 99, 99]
    gt = np.array([[0, 0, 99, gt_y1]])
    boxes, _, _ = boxes_from_scoremap(normalize_scoremap(m), [0.5])
    np.testing.assert_array_equal(boxes, [[0, 0, 99, 99]])
    assert box_iou_inclusive(boxes, gt)[0, 0] == iou
    metric = BoxAccuracy()
    metric.update(m, edges(gt), SIZE)
    out = metric.compute()
    assert out["MaxBoxAcc"] == v1
    assert out["MaxBoxAccV2"] == pytest.approx(v2)


def test_inclusive_iou_by_hand():
    a = np.array([[0, 0, 9, 9], [5, 5, 5, 5]])
    b = np.array([[5, 0, 14, 9], [20, 20, 29, 29]])
    iou = box_iou_inclusive(a, b)
    # [0,0,9,9] vs [5,0,14,9]: inter 5 * 10 = 50, union 100 + 100 - 50 = 150
    assert iou[0, 0] == pytest.approx(50 / 150)
    assert iou[0, 1] == 0.0
    # the single pixel (5, 5) lies inside [5,0,14,9]: inter 1, union 100
    assert iou[1, 0] == pytest.approx(1 / 100)


def test_two_blobs_v1_misses_v2_hits():
    m = rect_map(10, 10, 109, 109)  # large blob, area 100 x 100
    rect_map(150, 150, 179, 179, base=m)  # small blob, 30 x 30
    gt = np.array([[150, 150, 179, 179]])  # GT is the small blob only
    metric = BoxAccuracy()
    metric.update(m, edges(gt), SIZE)
    out = metric.compute()
    assert out["MaxBoxAcc"] == 0.0  # the largest contour is the big blob at every threshold
    assert out["MaxBoxAccV2"] == 100.0  # IoU 900 / 961 with the small blob's box
    v1_only = BoxAccuracy(multi_contour_v2=False)
    v1_only.update(m, edges(gt), SIZE)
    assert v1_only.compute()["MaxBoxAccV2"] == 0.0


def test_threshold_sweep_and_best_threshold():
    # big blob at 0.5 (uint8 127), small GT blob at 1.0 (uint8 255). At t the pixels kept are
    # those > int(t * 255): the big blob is gone from t = 0.50 (int(127.5) = 127) on.
    m = rect_map(10, 10, 109, 109, value=0.5)
    rect_map(150, 150, 179, 179, base=m)
    metric = BoxAccuracy()
    metric.update(m, edges([[150, 150, 179, 179]]), SIZE)
    out = metric.compute()
    curve = np.array(out["curve_v1"])
    np.testing.assert_array_equal(curve[:50], 0.0)
    np.testing.assert_array_equal(curve[50:], 100.0)
    assert out["MaxBoxAcc"] == 100.0
    assert out["best_threshold"] == pytest.approx(0.5)


def test_box_rescaling_from_448_image():
    np.testing.assert_array_equal(
        resize_boxes(np.array([[100, 120, 299, 279]]), (448, 448), 224), [[50, 60, 149, 139]]
    )
    # x scales with the width, y with the height; coordinates are truncated, not rounded
    np.testing.assert_array_equal(
        resize_boxes(np.array([[100, 50, 301, 149]]), (448, 224), 224), [[50, 50, 150, 149]]
    )
    m = rect_map(50, 60, 149, 139)
    gt_448 = np.array([[100, 120, 299, 279]], dtype=np.float32)
    metric = BoxAccuracy()
    metric.update(m, edges(gt_448), (448, 448))
    assert metric.compute()["MaxBoxAcc"] == 100.0
    # the same boxes read as 224 x 224 pixels do not match the blob
    metric = BoxAccuracy()
    metric.update(m, edges(gt_448), (224, 224))
    assert metric.compute()["MaxBoxAcc"] == 0.0


def test_map_at_image_resolution_is_resized():
    # the map is given at the 448 x 448 image size; it is resized to 224 before thresholding
    m = np.zeros((448, 448), np.float32)
    m[120:280, 100:300] = 1.0
    metric = BoxAccuracy()
    metric.update(m, edges([[100, 120, 299, 279]]), (448, 448))
    assert metric.compute()["MaxBoxAcc"] == 100.0


def test_low_resolution_map():
    m = np.zeros((7, 7), np.float32)
    m[1:4, 1:4] = 1.0
    metric = BoxAccuracy()
    metric.update(m, edges([[32, 32, 127, 127]]), SIZE)
    assert metric.compute()["MaxBoxAcc"] == 100.0


@pytest.mark.parametrize("value", [0.0, 0.3, 1.0, np.nan])
def test_constant_or_nan_map_gives_zero_box(value):
    m = np.full((224, 224), value, np.float32)
    assert not normalize_scoremap(m).any()
    boxes, counts, largest = boxes_from_scoremap(normalize_scoremap(m), np.arange(0, 1, 0.1))
    np.testing.assert_array_equal(boxes, np.zeros((10, 4)))
    np.testing.assert_array_equal(counts, np.ones(10))
    np.testing.assert_array_equal(largest, np.arange(10))
    metric = BoxAccuracy()
    metric.update(m, edges([[0, 0, 10, 10]]), SIZE)  # IoU 1 / 121 with [0, 0, 0, 0]
    assert metric.compute()["MaxBoxAcc"] == 0.0


def test_normalize_does_not_modify_input():
    m = np.linspace(0.2, 0.6, 224 * 224, dtype=np.float32).reshape(224, 224)
    before = m.copy()
    out = normalize_scoremap(m)
    np.testing.assert_array_equal(m, before)
    assert out.min() == 0.0 and out.max() == 1.0


def test_accumulates_over_images_and_best_gt_box():
    metric = BoxAccuracy()
    hit = rect_map(50, 60, 149, 139)
    # two GT boxes: the far one does not matter, the best pair counts
    metric.update(hit, edges([[200, 200, 220, 220], [50, 60, 149, 139]]), SIZE)
    metric.update(hit, edges([[0, 0, 20, 20]]), SIZE)
    metric.update(hit, edges([[50, 60, 149, 139]]), SIZE)
    metric.update(hit, edges([[180, 0, 223, 30]]), SIZE)
    out = metric.compute()
    assert out["count"] == 4
    assert out["MaxBoxAcc"] == 50.0
    assert out["MaxBoxAccV2"] == 50.0


def test_top1_loc():
    metric = BoxAccuracy()
    hit = rect_map(50, 60, 149, 139)
    gt_hit, gt_miss = np.array([[50, 60, 149, 139]]), np.array([[0, 0, 20, 20]])
    metric.update(hit, edges(gt_hit), SIZE, correct_class=True)
    metric.update(hit, edges(gt_hit), SIZE, correct_class=False)
    metric.update(hit, edges(gt_miss), SIZE, correct_class=True)
    metric.update(hit, edges(gt_hit), SIZE, correct_class=True)
    out = metric.compute()
    assert out["MaxBoxAcc"] == 75.0
    assert out["gt_known_loc"] == 75.0
    assert out["top1_loc"] == 50.0


def test_correct_class_for_some_images_only_is_rejected():
    metric = BoxAccuracy()
    m, gt = rect_map(50, 60, 149, 139), np.array([[50, 60, 149, 139]])
    metric.update(m, edges(gt), SIZE, correct_class=True)
    with pytest.raises(InputError, match="correct_class"):
        metric.update(m, edges(gt), SIZE)
    metric = BoxAccuracy()
    metric.update(m, edges(gt), SIZE)
    with pytest.raises(InputError, match="correct_class"):
        metric.update(m, edges(gt), SIZE, correct_class=False)


def test_reset_clears():
    metric = BoxAccuracy()
    m = rect_map(50, 60, 149, 139)
    metric.update(m, edges([[50, 60, 149, 139]]), SIZE, correct_class=True)
    metric.reset()
    with pytest.raises(InputError, match="no images"):
        metric.compute()
    metric.update(m, edges([[0, 0, 20, 20]]), SIZE)  # no correct_class now: allowed
    out = metric.compute()
    assert out["count"] == 1 and out["MaxBoxAcc"] == 0.0 and "top1_loc" not in out


def test_thresholds_are_configurable():
    metric = BoxAccuracy(cam_curve_interval=0.001, iou_thresholds=(50,))
    assert len(metric.thresholds) == 1000
    metric.update(rect_map(50, 60, 149, 139), edges([[50, 60, 149, 139]]), SIZE)
    out = metric.compute()
    assert list(out["curve"]) == [50] and len(out["curve_v1"]) == 1000
    assert out["MaxBoxAccV2"] == 100.0


def test_inputs_not_modified_and_torch_accepted():
    torch = pytest.importorskip("torch")
    m = rect_map(50, 60, 149, 139)
    gt = edges(np.array([[100, 120, 299, 279]], dtype=np.float32))
    m_before, gt_before = m.copy(), gt.copy()
    metric = BoxAccuracy()
    metric.update(m, gt, (448, 448))
    metric.update(torch.from_numpy(m), torch.from_numpy(gt), (448, 448))
    np.testing.assert_array_equal(m, m_before)
    np.testing.assert_array_equal(gt, gt_before)
    assert metric.compute()["MaxBoxAcc"] == 100.0


@pytest.mark.parametrize(
    "heatmap, boxes, size, match",
    [
        (np.zeros((2, 224, 224)), [[0, 0, 1, 1]], SIZE, "heatmap"),
        (np.full((224, 224), 1.5), [[0, 0, 1, 1]], SIZE, r"\[0, 1\]"),
        (np.full((224, 224), -0.1), [[0, 0, 1, 1]], SIZE, r"\[0, 1\]"),
        (np.zeros((224, 224)), np.zeros((0, 4)), SIZE, "gt_boxes"),
        (np.zeros((224, 224)), [[0, 0, 1]], SIZE, "gt_boxes"),
        (np.zeros((224, 224)), [[5, 0, 1, 1]], SIZE, "gt_boxes"),
        (np.zeros((224, 224)), [[3, 0, 3, 1]], SIZE, "gt_boxes"),  # zero width in edges
        (np.zeros((224, 224)), [[0, 0, 1, 1]], (0, 224), "image_size"),
        (np.zeros((224, 224)), [[0, 0, 1, 1]], (224,), "image_size"),
    ],
)
def test_bad_input(heatmap, boxes, size, match):
    with pytest.raises(InputError, match=match):
        BoxAccuracy().update(heatmap, np.asarray(boxes), size)


@pytest.mark.parametrize(
    "kwargs", [{"cam_curve_interval": 0}, {"cam_curve_interval": 2}, {"iou_thresholds": ()}]
)
def test_bad_options(kwargs):
    with pytest.raises(InputError):
        BoxAccuracy(**kwargs)
