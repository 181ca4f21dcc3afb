"""The shared array checks and conversions of wsolkit.checks, against hand-written cases."""

import re

import numpy as np
import pytest
import torch

from wsolkit.checks import (
    RANGE_TOLERANCE,
    check_boxes,
    check_heatmap,
    check_integer,
    check_labels,
    check_scores,
    check_unit_range,
    normalize_minmax,
    to_numpy,
)
from wsolkit.errors import InputError


def test_to_numpy_returns_the_array_itself_and_detaches_tensors():
    array = np.arange(4.0)
    assert to_numpy(array) is array
    tensor = torch.tensor([1.0, 2.0], requires_grad=True)
    out = to_numpy(tensor)
    assert isinstance(out, np.ndarray) and out.tolist() == [1.0, 2.0]


def test_to_numpy_refuses_lists_unless_array_like():
    message = r"^points must be a numpy array or torch tensor, got list$"
    with pytest.raises(InputError, match=message):
        to_numpy([[1, 2]], "points")
    assert to_numpy([[1, 2]], "points", array_like=True).tolist() == [[1, 2]]


def test_check_heatmap_returns_a_float64_copy():
    heat = np.array([[0, 1], [1, 0]], np.uint8)
    out = check_heatmap(heat)
    assert out.dtype == np.float64 and out.tolist() == [[0.0, 1.0], [1.0, 0.0]]
    out[0, 0] = 1
    assert heat[0, 0] == 0  # the input is not modified
    assert check_heatmap(torch.tensor([[True, False]])).tolist() == [[1.0, 0.0]]


@pytest.mark.parametrize(
    "value, kwargs, message",
    [
        ([[0.5]], {}, "heatmap must be a numpy array or torch tensor, got list"),
        (np.zeros((2, 2, 2)), {}, "heatmap must be 2-D (H, W), got shape (2, 2, 2)"),
        (np.zeros((2, 2)), {"ndim": 3}, "heatmap must be 3-D (C, H, W), got shape (2, 2)"),
        (np.zeros((0, 3)), {}, "heatmap must not be empty, got shape (0, 3)"),
        (np.array([["a"]]), {}, "heatmap must hold real numbers, got dtype <U1"),
        (np.array([[np.nan, 0.0]]), {}, "heatmap contains NaN or inf"),
        (np.array([[np.inf, 0.0]]), {}, "heatmap contains NaN or inf"),
        (np.array([[np.nan, 0.0]]), {"allow_inf": True}, "heatmap contains NaN"),
        (np.array([[np.inf, 0.0]]), {"allow_nan": True}, "heatmap contains inf"),
        (np.array([[-0.25, 0.5]]), {"name": "cam"},
         "cam values must lie in [0, 1], got min -0.25 and max 0.5"),
        (np.array([[0.0, 1.5]]), {}, "heatmap values must lie in [0, 1], got min 0 and max 1.5"),
    ],
)
def test_check_heatmap_messages(value, kwargs, message):
    with pytest.raises(InputError, match="^" + re.escape(message) + "$"):
        check_heatmap(value, **kwargs)


def test_check_heatmap_options_let_values_through():
    nan_map = np.array([[np.nan, 0.5]])
    assert np.isnan(check_heatmap(nan_map, allow_nan=True)[0, 0])
    assert check_heatmap([[3.0, -1.0]], array_like=True, unit_range=False).tolist() == [[3, -1]]
    assert check_heatmap(np.zeros((2, 1, 3)), ndim=3).shape == (2, 1, 3)


def test_unit_range_tolerance_bounds():
    slack = RANGE_TOLERANCE
    check_unit_range(np.array([1.0 + slack, -slack]), tolerance=slack)
    with pytest.raises(InputError, match=r"^heatmap values must lie in \[0, 1\]"):
        check_unit_range(np.array([1.0 + 3 * RANGE_TOLERANCE]), tolerance=RANGE_TOLERANCE)
    with pytest.raises(InputError, match=r"got min 0 and max 1\.001$"):
        check_unit_range(np.array([0.0, 1.001]))  # no slack by default
    check_unit_range(np.array([np.nan, 0.5]))  # NaN is skipped, not compared


@pytest.mark.parametrize(
    "value, kwargs, message",
    [
        (np.zeros((2, 3)), {}, "boxes must have shape (K, 4), got (2, 3)"),
        (np.array([["a"] * 4]), {}, "boxes must hold real numbers, got dtype <U1"),
        (np.array([[0, 0, np.inf, 1]]), {"name": "gt_boxes"}, "gt_boxes must be finite"),
        (np.array([[5.0, 0, 1, 1]]), {"ordered": True},
         "boxes must be x0, y0, x1, y1 with x0 <= x1 and y0 <= y1"),
        ([[0, 0, 1, 1]], {}, "boxes must be a numpy array or torch tensor, got list"),
    ],
)
def test_check_boxes_messages(value, kwargs, message):
    with pytest.raises(InputError, match="^" + re.escape(message) + "$"):
        check_boxes(value, **kwargs)


def test_check_boxes_accepts_empty_and_reversed_unless_ordered():
    assert check_boxes(np.zeros((0, 4), np.float32)).shape == (0, 4)
    reversed_box = check_boxes([[5, 0, 1, 1]], array_like=True)
    assert reversed_box.dtype == np.float64 and reversed_box.tolist() == [[5, 0, 1, 1]]


def test_normalize_minmax_numpy_by_hand():
    maps = np.array([[[2.0, 4.0], [3.0, 2.0]],  # min 2, span 2
                     [[7.0, 7.0], [7.0, 7.0]],  # constant -> zeros
                     [[1.0, np.nan], [0.0, 2.0]]])  # NaN -> zeros
    out = normalize_minmax(maps)
    assert out.tolist() == [[[0.0, 1.0], [0.5, 0.0]], [[0.0] * 2] * 2, [[0.0] * 2] * 2]
    assert maps[0, 0, 0] == 2.0  # input untouched
    assert normalize_minmax(np.array([[0, 4]], np.uint8)).tolist() == [[0.0, 1.0]]
    assert normalize_minmax(np.array([[1, 3]], np.float32)).dtype == np.float32


def test_normalize_minmax_torch_matches_numpy_by_hand():
    maps = torch.tensor([[[-1.0, 3.0], [1.0, 0.0]], [[5.0, 5.0], [5.0, 5.0]]])
    out = normalize_minmax(maps)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert out.tolist() == [[[0.0, 1.0], [0.5, 0.25]], [[0.0, 0.0], [0.0, 0.0]]]
    nan = normalize_minmax(torch.tensor([[float("nan"), 1.0]]))
    assert nan.tolist() == [[0.0, 0.0]]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: check_scores([0.5], "s", 2), "s must have shape (2,), got (1,)"),
        (lambda: check_scores(np.array(["a", "b"]), "s", 2),
         "s must hold real numbers, got dtype <U1"),
        (lambda: check_scores([0.5, np.nan], "s", 2), "s must be finite"),
        (lambda: check_labels([0.0, 1.0], "y", 2, 3),
         "y must hold integer class indices, got dtype float64"),
        (lambda: check_labels([0, 3], "y", 2, 3), "y must be class indices in [0, 3), got min 0, "
                                                  "max 3"),
        (lambda: check_labels([-1, 2], "y", 2, 3), "y must be class indices in [0, 3), got min -1,"
                                                   " max 2"),
    ],
)
def test_vector_check_messages(call, message):
    with pytest.raises(InputError, match="^" + re.escape(message) + "$"):
        call()


def test_vector_checks_return_typed_copies():
    scores = check_scores(torch.tensor([True, False]), "s", 2)
    assert scores.dtype == np.float64 and scores.tolist() == [1.0, 0.0]
    labels = check_labels(np.array([2, 0], np.uint8), "y", 2, 3)
    assert labels.dtype == np.int64 and labels.tolist() == [2, 0]
    assert check_labels([], "y", 0, 3).shape == (0,)  # empty needs no dtype


def test_check_integer_by_hand():
    assert check_integer(np.int64(3), "iterations", 1) == 3
    assert type(check_integer(np.int64(3), "iterations", 1)) is int
    assert check_integer(0, "min_area", 0) == 0
    for bad in (0, True, 2.0, "3", None):
        with pytest.raises(InputError, match=re.escape(f"iterations must be an integer >= 1, "
                                                       f"got {bad!r}") + "$"):
            check_integer(bad, "iterations", 1)
