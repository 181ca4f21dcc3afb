import numpy as np
import pytest

from wsolkit.errors import InputError
from wsolkit.eval import PointingAP, PointingGame, peak, peaks, point_hits

H, W = 80, 90
BOX = np.array([[20.0, 30.0, 40.0, 50.0]], np.float32)  # columns 20..39, rows 30..49


def spot(x, y, height=H, width=W, value=1.0):
    m = np.zeros((height, width), np.float32)
    m[y, x] = value
    return m


def hit(x, y, tolerance=15, region="box", boxes=BOX):
    metric = PointingGame(tolerance=tolerance, region=region)
    return metric.update(spot(x, y), boxes)


@pytest.mark.parametrize(
    "x, y, expected",
    [
        (5, 40, True),  # exactly 15 pixels left of column 20: on the border, inside
        (4, 40, False),  # one pixel further
        (54, 40, True),  # 15 pixels right of column 39
        (55, 40, False),
        (30, 15, True),  # 15 pixels above row 30
        (30, 14, False),
        (30, 64, True),  # 15 pixels below row 49
        (30, 65, False),
        (5, 15, True),  # the grown box has square corners
        (25, 35, True),
    ],
)
def test_tolerance_border_box_region(x, y, expected):
    assert hit(x, y) is expected


@pytest.mark.parametrize(
    "x, y, expected",
    [(20, 30, True), (39, 49, True), (19, 30, False), (40, 49, False), (30, 29, False),
     (30, 50, False)],
)
def test_zero_tolerance_is_strictly_inside(x, y, expected):
    assert hit(x, y, tolerance=0) is expected


@pytest.mark.parametrize(
    "x, y, expected",
    [
        (6, 40, True),  # distance 14 < 15
        (5, 40, False),  # distance 15 is not < 15 (TorchRay)
        (10, 20, True),  # corner: 10^2 + 10^2 = 200 < 225
        (9, 20, True),  # 121 + 100 = 221 < 225
        (9, 19, False),  # 121 + 121 = 242
        (5, 15, False),  # inside the grown box, outside the disk rule
    ],
)
def test_disk_region_follows_torchray(x, y, expected):
    assert hit(x, y, region="disk") is expected


def test_point_hits_fractional_box_uses_pixel_centers():
    box = [[2.6, 0.0, 5.4, 10.0]]  # pixel centers 3.5 and 4.5 are inside, 2.5 and 5.5 not
    got = point_hits([[2, 1], [3, 1], [4, 1], [5, 1]], box, tolerance=0)
    assert got[:, 0].tolist() == [False, True, True, False]


def test_first_maximum_in_raster_order():
    m = np.zeros((10, 12), np.float32)
    m[5, 1] = 0.7  # earlier column, later row
    m[2, 7] = 0.7  # first in raster order
    assert peak(m) == (pytest.approx(0.7), 7, 2)
    metric = PointingGame(tolerance=0)
    assert metric.update(m, np.array([[7, 2, 8, 3]])) is True
    assert metric.update(m, np.array([[1, 5, 2, 6]])) is False
    assert metric.compute() == {"accuracy": 50.0, "hits": 1, "count": 2}


def test_peaks_matches_peak():
    rng = np.random.default_rng(0)
    maps = rng.integers(0, 4, size=(5, 6, 7)).astype(np.float32)  # many ties
    values, points = peaks(maps)
    assert points.dtype == np.int64 and points.shape == (5, 2)
    for c in range(5):
        v, x, y = peak(maps[c])
        assert (values[c], points[c, 0], points[c, 1]) == (v, x, y)


def test_images_without_gt_are_skipped():
    metric = PointingGame()
    assert metric.update(spot(30, 40), BOX) is True
    assert metric.update(spot(0, 0), np.zeros((0, 4))) is None
    assert metric.update(spot(0, 0), BOX) is False
    assert metric.compute() == {"accuracy": 50.0, "hits": 1, "count": 2}


def test_class_accuracy_mean():
    metric = PointingGame()
    metric.update(spot(30, 40), BOX, class_id=3)
    metric.update(spot(0, 0), BOX, class_id=3)
    metric.update(spot(30, 40), BOX, class_id=1)
    out = metric.compute()
    assert out["accuracy"] == pytest.approx(200 / 3)
    assert out["class_accuracy"] == {1: 100.0, 3: 50.0}
    assert out["mean_class_accuracy"] == 75.0
    with pytest.raises(InputError, match="class_id must be given for every pair or for none"):
        metric.update(spot(0, 0), BOX)


def test_pointing_game_reset_and_inputs_unchanged():
    torch = pytest.importorskip("torch")
    metric = PointingGame()
    m, boxes = spot(30, 40), BOX.copy()
    metric.update(m, boxes)
    np.testing.assert_array_equal(m, spot(30, 40))
    np.testing.assert_array_equal(boxes, BOX)
    metric.reset()
    with pytest.raises(InputError, match="no image with a GT box"):
        metric.compute()
    assert metric.update(torch.from_numpy(spot(0, 0)), torch.from_numpy(BOX)) is False
    assert metric.compute()["count"] == 1


def three_images(metric):
    # image 1: class 0 at [10, 10, 20, 20]; class 0 hits, class 1 (absent) points elsewhere
    metric.update([0.9, 0.6], [[15, 15], [100, 100]], [[10, 10, 20, 20]], [0])
    # image 2: classes 0 and 1; class 0 misses, class 1 hits
    metric.update(
        [0.5, 0.8], [[200, 200], [5, 5]], [[50, 50, 60, 60], [0, 0, 10, 10]], [0, 1]
    )
    # image 3: class 1 only; class 0 points inside the class-1 box (still a FP), class 1 hits
    metric.update([0.7, 0.4], [[105, 105], [105, 105]], [[100, 100, 110, 110]], [1])


def test_pointing_ap_by_hand():
    metric = PointingAP(num_classes=2)
    three_images(metric)
    out = metric.compute()
    # class 0 (2 positives): TP 0.9, FP 0.7, FP 0.5 -> AP = 1 * 1/2
    # class 1 (2 positives): TP 0.8, FP 0.6, TP 0.4 -> AP = (1 + 2/3) / 2
    assert out["AP"][0] == pytest.approx(50.0)
    assert out["AP"][1] == pytest.approx(100 * 5 / 6)
    assert out["mAP"] == pytest.approx((50.0 + 100 * 5 / 6) / 2)
    assert out["count"] == 3


def test_pointing_ap_tolerance_and_absent_class():
    metric = PointingAP(num_classes=3, tolerance=18)
    # 18 px left of column 10 hits; class 2 never appears and is left out
    metric.update([0.5, 0.1, 0.9], [[-8, 15], [0, 0], [0, 0]], [[10, 10, 20, 20]], [0])
    metric.update([0.6, 0.2, 0.9], [[-9, 15], [0, 0], [0, 0]], [[10, 10, 20, 20]], [0])
    out = metric.compute()
    # class 0: FP 0.6, TP 0.5 -> AP = 1/2 * 1/2
    assert out["AP"] == {0: pytest.approx(25.0)}
    assert out["mAP"] == pytest.approx(25.0)


def test_pointing_ap_reset_and_inputs_unchanged():
    metric = PointingAP(num_classes=2)
    scores, points = np.array([0.9, 0.1]), np.array([[15, 15], [0, 0]])
    boxes, labels = np.array([[10.0, 10, 20, 20]]), np.array([0])
    copies = [x.copy() for x in (scores, points, boxes, labels)]
    metric.update(scores, points, boxes, labels)
    for x, c in zip((scores, points, boxes, labels), copies, strict=True):
        np.testing.assert_array_equal(x, c)
    assert metric.compute()["mAP"] == 100.0
    metric.reset()
    with pytest.raises(InputError, match="no images"):
        metric.compute()
    metric.update(scores, points, np.zeros((0, 4)), np.zeros(0, np.int64))
    with pytest.raises(InputError, match="no image with a GT box"):
        metric.compute()


def test_peaks_feed_pointing_ap():
    maps = np.zeros((2, 30, 30), np.float32)
    maps[0, 15, 15] = 0.8
    maps[1, 2, 3] = 0.3
    metric = PointingAP(num_classes=2, tolerance=0)
    metric.update(*peaks(maps), np.array([[10, 10, 20, 20], [0, 0, 4, 4]]), np.array([0, 1]))
    assert metric.compute()["AP"] == {0: 100.0, 1: 100.0}


@pytest.mark.parametrize(
    "heatmap, boxes, match",
    [
        (np.zeros((2, 3, 4)), BOX, r"heatmap must be 2-D \(H, W\), got shape \(2, 3, 4\)"),
        (np.zeros((0, 4)), BOX, r"heatmap must not be empty, got shape \(0, 4\)"),
        (np.full((3, 4), np.nan), BOX, "heatmap contains NaN"),
        (np.array([["a", "b"]]), BOX, "heatmap must hold real numbers"),
        (np.zeros((3, 4)), np.zeros((1, 3)), r"gt_boxes must have shape \(K, 4\)"),
        (np.zeros((3, 4)), np.array([[0, 0, np.inf, 1]]), "gt_boxes must be finite"),
    ],
)
def test_pointing_game_bad_inputs(heatmap, boxes, match):
    with pytest.raises(InputError, match=match):
        PointingGame().update(heatmap, boxes)


@pytest.mark.parametrize(
    "args, match",
    [
        (([0.1], [[0, 0], [0, 0]], BOX, [0]), r"class_scores must have shape \(2,\)"),
        (([0.1, 0.2], [[0, 0]], BOX, [0]), r"points must have shape \(2, 2\)"),
        (([0.1, 0.2], [[0, 0], [0, 0]], BOX, [0, 1]), r"gt_labels must have shape \(1,\)"),
        (([0.1, 0.2], [[0, 0], [0, 0]], BOX, [2]), r"gt_labels must be class indices in \[0, 2\)"),
        (([0.1, np.nan], [[0, 0], [0, 0]], BOX, [0]), "class_scores must be finite"),
        (([0.1, 0.2], [[0, 0], [0, np.nan]], BOX, [0]), "points must be finite"),
    ],
)
def test_pointing_ap_bad_inputs(args, match):
    with pytest.raises(InputError, match=match):
        PointingAP(num_classes=2).update(*args)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"tolerance": -1}, "tolerance must be finite and >= 0"),
        ({"tolerance": 0, "region": "disk"}, "tolerance must be finite and > 0 for region='disk'"),
        ({"region": "circle"}, "region must be one of"),
        ({"tolerance": "x"}, "tolerance must be a number of pixels"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(InputError, match=match):
        PointingGame(**kwargs)
    with pytest.raises(InputError, match=match):
        PointingAP(2, **kwargs)
