import numpy as np
import pytest

from wsolkit.errors import InputError
from wsolkit.eval import DetectionAP, average_precision, box_iou

A = [10.0, 10.0, 50.0, 50.0]
B = [100.0, 100.0, 140.0, 160.0]
FAR = [300.0, 300.0, 320.0, 320.0]


def arr(boxes):
    return np.array(boxes, dtype=np.float32).reshape(-1, 4)


def ints(values):
    return np.array(values, dtype=np.int64)


def add(metric, boxes, scores, labels, gt, gt_labels, ignore=None):
    metric.update(
        arr(boxes), np.array(scores, np.float32), ints(labels), arr(gt), ints(gt_labels), ignore
    )


def voc_ap_reference(rec, prec, use_07_metric):
    """The devkit's voc_ap, written as loops."""
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = max([p for r, p in zip(rec, prec, strict=True) if r >= t], default=0.0)
            ap += p / 11.0
        return ap
    mrec = [0.0, *rec, 1.0]
    mpre = [0.0, *prec, 0.0]
    for i in range(len(mpre) - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    changes = [i for i in range(len(mrec) - 1) if mrec[i + 1] != mrec[i]]
    return sum((mrec[i + 1] - mrec[i]) * mpre[i + 1] for i in changes)


def test_box_iou_matches_loop():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50, size=(7, 2))
    a = np.concatenate([xy, xy + rng.uniform(0, 30, size=(7, 2))], axis=1)
    xy = rng.uniform(0, 50, size=(5, 2))
    b = np.concatenate([xy, xy + rng.uniform(0, 30, size=(5, 2))], axis=1)
    b[0] = a[0]  # identical pair
    b[1] = [1, 1, 1, 1]  # empty box
    expected = np.zeros((7, 5))
    for i in range(7):
        for j in range(5):
            w = max(0.0, min(a[i, 2], b[j, 2]) - max(a[i, 0], b[j, 0]))
            h = max(0.0, min(a[i, 3], b[j, 3]) - max(a[i, 1], b[j, 1]))
            inter = w * h
            union = (a[i, 2] - a[i, 0]) * (a[i, 3] - a[i, 1]) + (b[j, 2] - b[j, 0]) * (
                b[j, 3] - b[j, 1]
            ) - inter
            expected[i, j] = inter / union if union > 0 else 0.0
    iou = box_iou(a, b)
    assert iou.shape == (7, 5)
    np.testing.assert_allclose(iou, expected, rtol=1e-12)
    assert iou[0, 0] == pytest.approx(1.0)
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 5)
    assert box_iou([[0, 0, 0, 0]], [[0, 0, 0, 0]])[0, 0] == 0.0


def test_box_iou_uses_edges_without_plus_one():
    # columns 0..1 vs 1..2 (edges): intersection 1 column of 2 rows, union 3 * 2
    assert box_iou([[0, 0, 2, 2]], [[1, 0, 3, 2]])[0, 0] == pytest.approx(2 / 6)


def test_average_precision_matches_devkit_loops():
    rng = np.random.default_rng(1)
    for trial in range(20):
        n = int(rng.integers(1, 15))
        scores = rng.permutation(n).astype(float)  # distinct, so the rank order is unambiguous
        tp = rng.random(n) < 0.5
        npos = int(tp.sum() + rng.integers(0, 3)) or 1
        order = np.argsort(-scores)
        cum = np.cumsum(tp[order])
        rec = (cum / npos).tolist()
        prec = (cum / np.arange(1, n + 1)).tolist()
        for use_07 in (False, True):
            expected = voc_ap_reference(rec, prec, use_07)
            got = average_precision(scores, tp, npos, use_07)
            assert got == pytest.approx(expected, abs=1e-12), (trial, use_07)
    assert average_precision([], [], 3) == 0.0


def test_perfect_detections_give_100():
    metric = DetectionAP(num_classes=3)
    add(metric, [A, B], [0.9, 0.2], [0, 1], [B, A], [1, 0])
    add(metric, [B], [0.5], [0], [B], [0])
    out = metric.compute()
    assert out == {"mAP": 100.0, "AP": {0: 100.0, 1: 100.0}, "count": 2}


def fp_above_tp(use_07_metric):
    # class 0, one GT per image; ranked: TP (0.9), FP (0.8), TP (0.7)
    metric = DetectionAP(num_classes=1, use_07_metric=use_07_metric)
    add(metric, [A], [0.9], [0], [A], [0])
    add(metric, [FAR, B], [0.8, 0.7], [0, 0], [B], [0])
    return metric.compute()


def test_fp_ranked_above_tp_all_points():
    # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1: envelope 1 and 2/3 at the two TPs
    out = fp_above_tp(False)
    assert out["AP"][0] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert out["mAP"] == pytest.approx(100 * 5 / 6)


def test_fp_ranked_above_tp_11_point():
    # recall >= t for t in 0..0.5 (6 points): best precision 1; t in 0.6..1 (5 points): 2/3
    out = fp_above_tp(True)
    assert out["AP"][0] == pytest.approx(100 * (6 * 1 + 5 * 2 / 3) / 11)


def test_duplicate_detection_is_fp():
    metric = DetectionAP(num_classes=1)
    shifted = [12.0, 10.0, 52.0, 50.0]  # IoU with A = 38 / 42
    add(metric, [A, shifted], [0.9, 0.8], [0, 0], [A], [0])  # TP, duplicate
    add(metric, [B], [0.7], [0], [B], [0])  # TP
    assert metric.compute()["AP"][0] == pytest.approx(100 * 5 / 6)


def test_duplicate_follows_devkit_best_gt_rule():
    # The second detection's best GT (A) is already matched: FP, although it also overlaps the
    # unmatched GT A2 with IoU >= 0.5 (the devkit does not try the next GT).
    a2 = [14.0, 10.0, 54.0, 50.0]
    det2 = [12.0, 10.0, 52.0, 50.0]  # IoU 38/42 with A and with A2 (first max: A)
    assert box_iou([det2], [A, a2])[0].tolist() == pytest.approx([38 / 42, 38 / 42])
    metric = DetectionAP(num_classes=1)
    add(metric, [A, det2], [0.9, 0.8], [0, 0], [A, a2], [0, 0])
    # TP then FP, recall 1/2: AP = 1 * 1/2
    assert metric.compute()["AP"][0] == pytest.approx(50.0)


def test_detection_of_ignored_gt_is_neither_tp_nor_fp():
    metric = DetectionAP(num_classes=1)
    ignore = np.array([False, True])
    # ranked: on the ignored B (dropped), FP, TP on A -> precision 1/2 at recall 1
    add(metric, [B, FAR, A], [0.9, 0.85, 0.8], [0, 0, 0], [A, B], [0, 0], ignore)
    assert metric.compute()["AP"][0] == pytest.approx(50.0)
    # without the flag B is a GT: TP, FP, TP over 2 positives
    metric = DetectionAP(num_classes=1)
    add(metric, [B, FAR, A], [0.9, 0.85, 0.8], [0, 0, 0], [A, B], [0, 0])
    assert metric.compute()["AP"][0] == pytest.approx(100 * 5 / 6)


def test_ignored_gt_not_in_recall_denominator():
    metric = DetectionAP(num_classes=2)
    add(metric, [A], [0.9], [0], [A, B], [0, 0], np.array([False, True]))
    add(metric, [], [], [], [B], [1], np.array([True]))  # class 1: only ignored GT
    out = metric.compute()
    assert out["AP"] == {0: 100.0}  # not 50: B is not to be found
    assert out["mAP"] == 100.0


def test_empty_predictions_give_zero():
    metric = DetectionAP(num_classes=2)
    add(metric, [], [], [], [A, B], [0, 1])
    for use_07 in (False, True):
        metric.use_07_metric = use_07
        assert metric.compute() == {"mAP": 0.0, "AP": {0: 0.0, 1: 0.0}, "count": 1}


def test_classes_without_gt_are_left_out_of_map():
    metric = DetectionAP(num_classes=3)
    add(metric, [A, B, FAR], [0.9, 0.8, 0.99], [0, 2, 2], [A], [0])
    out = metric.compute()
    assert out["AP"] == {0: 100.0}
    assert out["mAP"] == 100.0


def test_iou_threshold_is_inclusive():
    det = [10.0, 10.0, 30.0, 50.0]  # IoU with A = 800 / 1600 = 0.5 exactly
    metric = DetectionAP(num_classes=1, iou_threshold=0.5)
    add(metric, [det], [1.0], [0], [A], [0])
    assert metric.compute()["mAP"] == 100.0
    metric = DetectionAP(num_classes=1, iou_threshold=0.51)
    add(metric, [det], [1.0], [0], [A], [0])
    assert metric.compute()["mAP"] == 0.0


def test_reset_clears():
    metric = DetectionAP(num_classes=1)
    add(metric, [FAR], [0.9], [0], [A], [0])
    assert metric.compute()["mAP"] == 0.0
    metric.reset()
    with pytest.raises(InputError, match="no images"):
        metric.compute()
    add(metric, [A], [0.9], [0], [A], [0])
    assert metric.compute() == {"mAP": 100.0, "AP": {0: 100.0}, "count": 1}


def test_inputs_not_modified_and_torch_accepted():
    torch = pytest.importorskip("torch")
    inputs = [arr([B, A]), np.array([0.2, 0.9]), ints([0, 0]), arr([A, B]), ints([0, 0]),
              np.array([False, True])]
    copies = [x.copy() for x in inputs]
    metric = DetectionAP(num_classes=1)
    metric.update(*inputs)
    out = metric.compute()
    for x, c in zip(inputs, copies, strict=True):
        np.testing.assert_array_equal(x, c)
    metric.reset()
    metric.update(*(torch.from_numpy(x) for x in inputs))
    assert metric.compute() == out


def test_no_gt_at_all_raises():
    metric = DetectionAP(num_classes=1)
    add(metric, [A], [0.9], [0], [], [])
    with pytest.raises(InputError, match="no non-ignored ground-truth"):
        metric.compute()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"pred_boxes": np.zeros((2, 3))}, r"pred_boxes must have shape \(K, 4\)"),
        ({"pred_scores": np.zeros(3)}, r"pred_scores must have shape \(2,\)"),
        ({"pred_labels": ints([0])}, r"pred_labels must have shape \(2,\)"),
        ({"pred_labels": np.array([0.0, 1.0])}, "pred_labels must hold integer"),
        ({"pred_labels": ints([0, 3])}, r"pred_labels must be class indices in \[0, 3\)"),
        ({"gt_boxes": np.zeros(4)}, r"gt_boxes must have shape \(K, 4\)"),
        ({"gt_boxes": arr([[5, 0, 1, 1]])}, "gt_boxes must be x0, y0, x1, y1 with x0 <= x1"),
        ({"gt_labels": ints([0, 1])}, r"gt_labels must have shape \(1,\)"),
        ({"gt_ignore": np.array([True, False])}, r"gt_ignore must have shape \(1,\)"),
        ({"gt_ignore": np.array([2])}, "gt_ignore must hold booleans"),
        ({"pred_scores": np.array([0.5, np.nan])}, "pred_scores must be finite"),
    ],
)
def test_bad_inputs_raise(kwargs, match):
    args = {
        "pred_boxes": arr([A, B]),
        "pred_scores": np.array([0.5, 0.4]),
        "pred_labels": ints([0, 1]),
        "gt_boxes": arr([A]),
        "gt_labels": ints([0]),
        "gt_ignore": None,
    }
    args.update(kwargs)
    metric = DetectionAP(num_classes=3)
    with pytest.raises(InputError, match=match):
        metric.update(**args)
    with pytest.raises(InputError, match="no images"):
        metric.compute()  # nothing was added


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_classes": 0}, "num_classes must be a positive int"),
        ({"num_classes": 2.0}, "num_classes must be a positive int"),
        ({"num_classes": 2, "iou_threshold": 0}, r"iou_threshold must be in \(0, 1\]"),
        ({"num_classes": 2, "iou_threshold": 1.5}, r"iou_threshold must be in \(0, 1\]"),
    ],
)
def test_bad_options_raise(kwargs, match):
    with pytest.raises(InputError, match=match):
        DetectionAP(**kwargs)


def test_box_iou_bad_shape_raises():
    with pytest.raises(InputError, match=r"boxes_b must have shape \(K, 4\)"):
        box_iou(np.zeros((1, 4)), np.zeros((4,)))
