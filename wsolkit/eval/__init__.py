"""Localization metrics (accumulating ``update`` / ``compute`` / ``reset``)."""

from wsolkit.eval.box_accuracy import BoxAccuracy

__all__ = ["BoxAccuracy"]
