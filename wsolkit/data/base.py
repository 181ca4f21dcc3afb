"""`SampleDataset`: the sequence interface every dataset reader shares.

A reader parses its metadata at construction (images and masks are not opened) and is then a
read-only sequence of :class:`~wsolkit.data.sample.Sample`: ``len(ds)``, ``ds[i]`` (negative
indices count from the end) and ``for sample in ds``. Every reader has the attributes
``root`` (the folder it reads), ``kind`` (the format name), ``class_names`` (class-index order,
or None when the format gives none) and ``image_ids`` (dataset order).
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from pathlib import Path

from wsolkit.data.sample import Sample
from wsolkit.errors import InputError

__all__ = ["SampleDataset", "text_lines"]


def text_lines(path: Path, what: str = "") -> Iterator[tuple[int, str]]:
    """``(line number, stripped line)`` of the non-blank lines of a UTF-8 metadata file.

    Args:
        path: the file.
        what: what it is, for the message (``cannot read <what> (...)``).

    Raises:
        InputError: the file cannot be read or is not UTF-8 text, naming it.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot read{' ' + what if what else ''} "
                         f"({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a UTF-8 text file") from exc
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line:
            yield number, line


class SampleDataset:
    """Base class of the dataset readers: a sequence of :class:`Sample`.

    Subclasses set ``root``, ``kind``, ``_image_ids`` and ``_class_names`` and implement
    :meth:`_sample`.

    Attributes:
        root: The folder the dataset was read from.
        kind: Format name (``"wsol"``, ``"mask_folder"``, ``"coco"``, ``"voc"``).
    """

    root: Path
    kind: str
    _image_ids: list[str]
    _class_names: list[str] | None

    @property
    def image_ids(self) -> list[str]:
        """Image ids in dataset order (a copy)."""
        return list(self._image_ids)

    @property
    def class_names(self) -> list[str] | None:
        """Class names in class-index order (a copy), or None when the format has none."""
        return None if self._class_names is None else list(self._class_names)

    def __len__(self) -> int:
        return len(self._image_ids)

    def __getitem__(self, index: int) -> Sample:
        """Return the ``index``-th sample (negative indices count from the end).

        Raises:
            IndexError: ``index`` is out of range.
        """
        i = operator.index(index)
        n = len(self._image_ids)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} is out of range for {n} images")
        return self._sample(i)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self._sample(i)

    def _sample(self, i: int) -> Sample:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, images={len(self)})"
