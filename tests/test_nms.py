import cv2
import numpy as np
import pytest
import torch

from wsolkit.errors import InputError
from wsolkit.eval.detection import box_iou
from wsolkit.refine.nms import box_areas, clip_boxes, expand_boxes, nms, valid_boxes


def loop_nms(boxes, scores, threshold):
    """Reference: plain greedy NMS, one pair at a time."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # sorted() is stable
    keep, removed = [], set()
    for position, i in enumerate(order):
        if i in removed:
            continue
        keep.append(i)
        for j in order[position + 1:]:
            if j not in removed and box_iou(boxes[i][None], boxes[j][None])[0, 0] > threshold:
                removed.add(j)
    return keep


def test_nms_by_hand():
    boxes = np.array([
        [0, 0, 10, 10],    # 0: best
        [1, 0, 11, 10],    # 1: IoU 90/110 = 0.818 with 0 -> removed at 0.5
        [10, 0, 20, 10],   # 2: touches 0 along an edge: IoU 0, kept
        [0, 0, 10, 5],     # 3: inside 0, IoU 0.5 -> kept at 0.5 (not > 0.5)
        [50, 50, 60, 60],  # 4: far away
    ], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.1])
    assert nms(boxes, scores, 0.5).tolist() == [0, 2, 3, 4]
    assert nms(boxes, scores, 0.49).tolist() == [0, 2, 4]
    assert nms(boxes, scores, 1.0).tolist() == [0, 1, 2, 3, 4]
    assert nms(boxes, scores, 0.0).tolist() == [0, 2, 4]


def test_nms_ties_keep_input_order_and_torch_input():
    boxes = torch.tensor([[0, 0, 4, 4], [0, 0, 4, 4], [10, 10, 12, 12]], dtype=torch.float32)
    scores = torch.tensor([0.5, 0.5, 0.5])
    assert nms(boxes, scores, 0.5).tolist() == [0, 2]


def test_nms_empty_and_bad_input():
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,)
    with pytest.raises(InputError):
        nms(np.zeros((2, 4)), np.zeros(3), 0.5)
    with pytest.raises(InputError):
        nms(np.zeros((1, 4)), np.zeros(1), 1.5)
    with pytest.raises(InputError):
        nms(np.array([[0, 0, np.nan, 1]]), np.zeros(1), 0.5)


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7])
def test_nms_matches_loop_and_opencv_on_integer_edges(threshold):
    rng = np.random.default_rng(int(threshold * 10))
    for _ in range(20):
        xy = rng.integers(0, 30, size=(40, 2))
        wh = rng.integers(1, 15, size=(40, 2))  # non-empty boxes: OpenCV's IoU differs for empty
        boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
        scores = rng.integers(1, 10, size=40).astype(np.float32) / 10  # many ties, all > 0
        ours = nms(boxes, scores, threshold).tolist()
        assert ours == loop_nms(boxes, scores, threshold)
        rects = [(int(x), int(y), int(w), int(h)) for (x, y), (w, h) in zip(xy, wh, strict=True)]
        theirs = cv2.dnn.NMSBoxes(rects, scores.tolist(), 0.0, threshold)
        assert ours == np.asarray(theirs, np.int64).reshape(-1).tolist()


def test_box_utilities():
    boxes = np.array([[-5, 2, 8, 30], [20, 20, 25, 22], [40, 40, 50, 50]], np.float32)
    clipped = clip_boxes(boxes, (24, 32))  # H=24, W=32
    assert clipped.tolist() == [[0, 2, 8, 24], [20, 20, 25, 22], [32, 24, 32, 24]]
    assert valid_boxes(boxes, (24, 32)).tolist() == [True, True, False]
    assert valid_boxes(boxes, (24, 32), min_size=3).tolist() == [True, False, False]
    assert box_areas(clipped).tolist() == [176, 10, 0]
    grown = expand_boxes(np.array([[10, 10, 20, 30]]), 0.1)
    assert np.allclose(grown, [[9, 8, 21, 32]])
    assert np.allclose(expand_boxes(np.array([[10, 10, 20, 30]]), 0.5, size=(35, 100)),
                       [[5, 0, 25, 35]])
    assert np.allclose(expand_boxes(np.array([[10, 10, 20, 30]]), -0.5), [[15, 20, 15, 20]])
    with pytest.raises(InputError):
        expand_boxes(boxes, -0.6)
    with pytest.raises(InputError):
        clip_boxes(boxes, (0, 10))
