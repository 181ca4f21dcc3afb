"""The examples in the docstrings of the public entry points run, and say what they show."""

import doctest
import importlib

import pytest

MODULES = [
    "wsolkit.maps",  # heatmaps
    "wsolkit.maps.registry",  # make_method
    "wsolkit.refine.components",  # localize
    "wsolkit.eval.box_accuracy",  # BoxAccuracy
    "wsolkit.eval.pixel",  # PixelMetrics
    "wsolkit.eval.pointing",  # PointingGame
    "wsolkit.eval.detection",  # DetectionAP
    "wsolkit.checks",
    "wsolkit.cli.options",  # flag_message
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no example"
    assert result.failed == 0
