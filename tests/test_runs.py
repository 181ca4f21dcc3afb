"""What the training commands share (wsolkit.train.runs), checked by hand."""

from pathlib import Path

import numpy as np
import pytest

from wsolkit.data.sample import Sample
from wsolkit.errors import InputError
from wsolkit.train.runs import check_checkpoint, check_resumed_settings, image_labels, percent


def samples(*labels):
    return [Sample(f"im{i}", Path(f"im{i}.png"), tuple(ls)) for i, ls in enumerate(labels)]


class Named(list):
    class_names = ("cat", "dog", "bird")


def test_image_labels_by_hand():
    names, targets = image_labels([], samples((0, 2), (), (1,)), "set")
    assert names == ["class 0", "class 1", "class 2"]  # up to the largest label
    np.testing.assert_array_equal(targets, [[1, 0, 1], [0, 0, 0], [0, 1, 0]])
    names, targets = image_labels(Named(), samples((1,)), "set")
    assert names == ["cat", "dog", "bird"] and targets.tolist() == [[False, True, False]]


def test_image_labels_errors():
    with pytest.raises(InputError, match="^set: no image-level labels"):
        image_labels(Named(), samples((), ()), "set")
    with pytest.raises(InputError, match="im0: label 3 is outside 0..2"):
        image_labels(Named(), samples((3,)), "set")


def test_checkpoint_and_settings_checks(tmp_path):
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(InputError, match="not found"):
        check_checkpoint(path, resume=True)
    check_checkpoint(path, resume=False)
    path.write_bytes(b"")
    with pytest.raises(InputError, match="exists: pass resume=True"):
        check_checkpoint(path, resume=False)
    check_checkpoint(path, resume=True)
    check_resumed_settings(path, {"lr": 0.1}, {"lr": 0.1, "new": 2}, defaults={"new": 2})
    with pytest.raises(InputError, match="made with batch_size=8, not 16"):
        check_resumed_settings(path, {"batch_size": 8}, {"batch_size": 16})
    assert percent(None) == "n/a" and percent(0.1234) == "12.3%"
