"""What the training commands (``finetune``, ``train-head``, ``train-fcam``) share about a run.

Each trains on a dataset's image-level labels, writes a checkpoint after every epoch and can
resume from it: the checks of those files and labels, and the epoch log's numbers, live here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsolkit.data.sample import Sample
from wsolkit.errors import InputError

__all__ = [
    "check_checkpoint",
    "check_resumed_settings",
    "dataset_source",
    "image_labels",
    "percent",
]


def dataset_source(dataset: Sequence[Sample]) -> str:
    """How messages name a dataset: its annotation file, else its folder, else ``dataset``."""
    return str(getattr(dataset, "annotation_file", None) or getattr(dataset, "root", "dataset"))


def check_checkpoint(path: Path, resume: bool, out: str = "out=DIR") -> None:
    """Resuming needs the checkpoint ``path``; a new run must not overwrite one.

    ``out`` names the parameter(s) that place the checkpoint, for the message.

    Raises:
        InputError: ``resume`` without the file, or the file exists without ``resume``.
    """
    if resume and not path.is_file():
        raise InputError(f"resume=True: {path} not found")
    if not resume and path.exists():
        raise InputError(f"{path} exists: pass resume=True to continue it or choose another "
                         f"{out}")


def image_labels(dataset: Sequence[Sample], samples: list[Sample], source: str
                 ) -> tuple[list[str], np.ndarray]:
    """Class names and ``(N, C)`` bool multi-hot targets of the samples' image-level labels.

    The names are the dataset's ``class_names`` when it has them, else ``class 0`` ..
    ``class <largest label>``.

    Raises:
        InputError: no sample has a label, or a label is outside the class names.
    """
    if not any(sample.labels for sample in samples):
        raise InputError(f"{source}: no image-level labels to train on")
    names = getattr(dataset, "class_names", None)
    if names:
        names = list(names)
    else:
        names = [f"class {i}" for i in range(max(max(s.labels) for s in samples if s.labels) + 1)]
    targets = np.zeros((len(samples), len(names)), bool)
    for row, sample in enumerate(samples):
        for label in sample.labels:
            if not 0 <= label < len(names):
                raise InputError(f"{sample.image_id}: label {label} is outside "
                                 f"0..{len(names) - 1}")
            targets[row, label] = True
    return names, targets


def check_resumed_settings(path: Path, saved: dict[str, Any], expected: dict[str, Any],
                           defaults: dict[str, Any] | None = None) -> None:
    """A resumed run must use the settings its checkpoint was made with (``epochs`` aside).

    Args:
        path: the checkpoint, for the message.
        saved: the checkpoint's settings.
        expected: this run's settings.
        defaults: values of settings added since a checkpoint was written (it ran with them).

    Raises:
        InputError: naming the first differing setting.
    """
    defaults = defaults or {}
    for key, value in expected.items():
        if saved.get(key, defaults.get(key)) != value:
            raise InputError(f"resume=True: {path} was made with {key}="
                             f"{saved.get(key)!r}, not {value!r}")


def percent(value: float | None) -> str:
    """A fraction for the epoch log: ``12.3%``, or ``n/a`` when it was not measured."""
    return "n/a" if value is None else f"{100 * value:.1f}%"
