"""ImageNet mosaics: a multi-object benchmark built from a single-object classification set.

:func:`build_mosaics` tiles images of *distinct* classes of a wsolevaluation-format set (any
dataset whose images carry exactly one class label) into ``grid x grid`` images and writes a
COCO instance file beside them::

    OUT/images/r<repeat>_<index>.jpg
    OUT/instances.json

Each source image is resized (stretched) to a ``tile x tile`` square and placed in one cell, so
a GT box ``x0, y0, x1, y1`` (edges) of a ``W x H`` source in row ``r``, column ``c`` becomes
``c * tile + x0 * tile / W``, ``r * tile + y0 * tile / H``, ... in the mosaic. The COCO file has

- ``categories``: all classes of the source's ``class_names.txt`` in class-index order, with
  ids ``1..C`` (so ``wsolkit.data.open_dataset(OUT/instances.json)`` gives class index
  ``id - 1``, the model's class index for ImageNet sets);
- ``annotations``: every GT box of every tile, shifted and scaled into the mosaic (``iscrowd``
  copies the source's ignore flag);
- a source image without boxes (``imagenet-sample``) gets ONE annotation covering its whole
  tile with ``iscrowd: 1`` (and ``"image_label": true``). The COCO reader counts crowd
  annotations in ``Sample.labels`` but marks them ``box_ignore``, so the tile's class is an
  image-level label that is never scored as a box (detections on a crowd region are neither
  true nor false positives; ``pointing_ap`` takes the class as present);
- per image, ``tiles``: the source image id, class and cell of each tile (provenance).

One *draw* uses every source image at most once: the images are shuffled with a generator
seeded by ``(seed, repeat)`` and taken in that order, each mosaic taking the next image whose
class it does not hold yet; images left over when no complete mosaic can be formed are
dropped. ``repeats`` draws give more mosaics from the same set.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from wsolkit.data.atomic import make_out_dir, write_bytes_atomic, write_json_atomic
from wsolkit.data.images import load_image
from wsolkit.data.sample import Sample
from wsolkit.errors import InputError, WSOLError

__all__ = ["MosaicReport", "build_mosaics", "plan_mosaics"]

JPEG_QUALITY = 95


@dataclass
class MosaicReport:
    """What :func:`build_mosaics` wrote.

    Attributes:
        annotation_file: the ``instances.json`` written.
        images: number of mosaics written.
        annotations: number of annotations (boxes and image-level crowd regions).
        unused: source images left out of every draw (incomplete last mosaics).
        failures: ``(image id, message)`` of source images that could not be read; their
            mosaics are skipped.
    """

    annotation_file: Path
    images: int = 0
    annotations: int = 0
    unused: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)


def _check_settings(grid: int, tile: int, repeats: int, seed: int) -> None:
    for name, value, low in (("grid", grid, 1), ("tile", tile, 8), ("repeats", repeats, 1),
                             ("seed", seed, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise InputError(f"{name}={value!r}: must be an integer >= {low}")


def _single_labels(samples: Sequence[Sample], source: object) -> list[int]:
    labels = []
    for sample in samples:
        if len(sample.labels) != 1:
            raise InputError(f"{source}: image {sample.image_id!r} has {len(sample.labels)} "
                             "class labels; mosaics need exactly one per image")
        labels.append(sample.labels[0])
    return labels


def plan_mosaics(labels: Sequence[int], cells: int, seed: int, repeat: int) -> list[list[int]]:
    """Group sample indices into mosaics of ``cells`` distinct classes for one draw.

    Args:
        labels: class of each source image.
        cells: images per mosaic (``grid * grid``).
        seed: the draw's seed.
        repeat: the draw's number (each repeat shuffles differently).

    Returns:
        Lists of ``cells`` sample indices in cell order (row-major), no class twice in one.
    """
    order = np.random.default_rng([seed, repeat]).permutation(len(labels)).tolist()
    mosaics = []
    while len(order) >= cells:
        chosen: list[int] = []
        held: set[int] = set()
        for index in order:
            if labels[index] not in held:
                chosen.append(index)
                held.add(labels[index])
                if len(chosen) == cells:
                    break
        if len(chosen) < cells:
            break
        taken = set(chosen)
        order = [index for index in order if index not in taken]
        mosaics.append(chosen)
    return mosaics


def build_mosaics(
    dataset: Sequence[Sample],
    out: str | Path,
    grid: int = 2,
    seed: int = 0,
    repeats: int = 1,
    tile: int = 224,
    class_names: Sequence[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> MosaicReport:
    """Tile images of distinct classes into mosaics and write them with a COCO file.

    Args:
        dataset: single-label source set (``wsolkit.data.open_dataset`` of a wsolevaluation
            folder); read only.
        out: output folder; ``images/`` and ``instances.json`` are written in it.
        grid: mosaics are ``grid x grid`` tiles.
        seed: seed of the draws.
        repeats: number of draws (each uses every source image at most once).
        tile: side of a tile in pixels (a mosaic is ``grid * tile`` square).
        class_names: category names in class-index order; default: the dataset's
            ``class_names``.
        progress: called with 1 after each mosaic.

    Returns:
        A :class:`MosaicReport`.

    Raises:
        InputError: bad settings, a source without class names or without exactly one label
            per image, fewer distinct classes than ``grid * grid``, or an unwritable ``out``.
    """
    _check_settings(grid, tile, repeats, seed)
    source = getattr(dataset, "root", "dataset")
    samples = list(dataset)
    names = list(class_names) if class_names is not None else getattr(dataset, "class_names",
                                                                      None)
    if not names:
        raise InputError(f"{source}: no class names (class_names.txt) for the mosaic categories")
    labels = _single_labels(samples, source)
    bad = [c for c in labels if not 0 <= c < len(names)]
    if bad:
        raise InputError(f"{source}: class index {bad[0]} has no name among {len(names)} "
                         "class names")
    cells = grid * grid
    classes = len(set(labels))
    if classes < cells:
        raise InputError(f"{source}: {classes} distinct class(es), but a {grid}x{grid} mosaic "
                         f"needs {cells}")
    folder = make_out_dir(out, "out")
    image_dir = make_out_dir(folder / "images", "out")
    report = MosaicReport(folder / "instances.json")
    images: list[dict] = []
    annotations: list[dict] = []
    used: set[int] = set()
    for repeat in range(repeats):
        for number, chosen in enumerate(plan_mosaics(labels, cells, seed, repeat)):
            used.update(chosen)
            name = f"r{repeat}_{number:05d}.jpg"
            try:
                mosaic, tiles = _compose(samples, labels, chosen, grid, tile)
            except WSOLError as error:
                report.failures.append((samples[chosen[0]].image_id, str(error)))
                continue
            image_id = len(images) + 1
            write_bytes_atomic(image_dir / name, _jpeg(mosaic))
            images.append({"id": image_id, "file_name": name, "width": grid * tile,
                           "height": grid * tile, "tiles": tiles})
            for ann in _annotations(samples, chosen, labels, grid, tile, tiles):
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
            if progress is not None:
                progress(1)
    report.images, report.annotations = len(images), len(annotations)
    report.unused = len(samples) - len(used)
    write_json_atomic(report.annotation_file, {
        "info": {"description": f"{grid}x{grid} mosaics of {source}", "grid": grid,
                 "tile": tile, "seed": seed, "repeats": repeats},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)],
    })
    return report


def _compose(samples: Sequence[Sample], labels: Sequence[int], chosen: Sequence[int], grid: int,
             tile: int) -> tuple[Image.Image, list[dict]]:
    """The mosaic image and, per tile, its source, class, cell and source size."""
    mosaic = Image.new("RGB", (grid * tile, grid * tile))
    tiles = []
    for cell, index in enumerate(chosen):
        sample = samples[index]
        image = load_image(sample.path)
        row, col = divmod(cell, grid)
        mosaic.paste(image.resize((tile, tile), Image.Resampling.BICUBIC),
                     (col * tile, row * tile))
        tiles.append({"source": sample.image_id, "class": labels[index], "cell": [row, col],
                      "source_size": list(image.size)})
    return mosaic, tiles


def _annotations(samples: Sequence[Sample], chosen: Sequence[int], labels: Sequence[int],
                 grid: int, tile: int, tiles: list[dict]) -> list[dict]:
    """COCO annotations (without ids) of the tiles of one mosaic."""
    found = []
    for index, info in zip(chosen, tiles, strict=True):
        sample = samples[index]
        row, col = info["cell"]
        width, height = info["source_size"]
        category = labels[index] + 1
        if not len(sample.boxes):
            found.append({"category_id": category, "iscrowd": 1, "image_label": True,
                          "bbox": [col * tile, row * tile, tile, tile], "area": tile * tile})
            continue
        ignore = (sample.box_ignore if len(sample.box_ignore) == len(sample.boxes)
                  else np.zeros(len(sample.boxes), bool))
        sx, sy = tile / width, tile / height
        for (x0, y0, x1, y1), crowd in zip(sample.boxes.tolist(), ignore.tolist(), strict=True):
            # clip to the tile: a box may not spill into the neighbouring cell
            x0, x1 = (min(max(v, 0.0), width) * sx for v in (x0, x1))
            y0, y1 = (min(max(v, 0.0), height) * sy for v in (y0, y1))
            w, h = x1 - x0, y1 - y0
            if w <= 0 or h <= 0:
                continue
            bbox = [round(col * tile + x0, 3), round(row * tile + y0, 3), round(w, 3),
                    round(h, 3)]
            found.append({"category_id": category, "iscrowd": int(crowd), "bbox": bbox,
                          "area": round(w * h, 3)})
    return found


def _jpeg(image: Image.Image) -> bytes:
    handle = io.BytesIO()
    image.save(handle, format="JPEG", quality=JPEG_QUALITY)
    return handle.getvalue()
