"""Jobs on Ray Data: the same per-batch cores as the local engine, on a cluster.

``ray.data.read_binary_files`` reads the files in parallel read tasks, a stateless
``map_batches`` step decodes and preprocesses them with the core's own
:class:`~wsolkit.apps.engine.Decoder`, and a pool of actors (``ActorPoolStrategy``), each
holding the model once, runs the core (:class:`~wsolkit.apps.localize_core.LocalizeCore`,
:class:`~wsolkit.apps.segment_core.SegmentCore`) on each batch. The driver streams the rows
into the same atomic JSON Lines shards as the local engine, so outputs, resume and failed
rows are the same. Ray is an optional extra (``pip install 'wsolkit[ray]'``), imported only
here. See docs/scale.md.
"""

from __future__ import annotations

import copy
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from wsolkit.apps.engine import (
    ROWS_PREFIX,
    DecodedImage,
    Decoder,
    JobOptions,
    JobReport,
    finish_summary,
    start_summary,
)
from wsolkit.apps.localize_core import LocalizeCore, LocalizeSettings
from wsolkit.data.atomic import make_out_dir
from wsolkit.data.shards import ShardWriter
from wsolkit.errors import DependencyError, InputError
from wsolkit.models.classifier import Classifier


@dataclass
class RayOptions:
    """Where and how wide the Ray job runs.

    Attributes:
        address: cluster address (``auto``: the running cluster); None starts Ray locally.
        actors: model actors (each loads the model once and runs whole batches).
        actor_cpus: CPUs reserved per actor; None: 1 on machines with more than 4 cores, else
            0.5 (a whole CPU per actor on 2 cores leaves the read and decode tasks none, and
            the dataset stalls).
        actor_threads: torch intra-op threads per actor (None: ``max(1, int(actor_cpus))``).
        object_store_memory: bytes of object store when Ray is started here (None: Ray's).
        progress_bars: show Ray Data's own progress bars.
    """

    address: str | None = None
    actors: int = 1
    actor_cpus: float | None = None
    actor_threads: int | None = None
    object_store_memory: int | None = None
    progress_bars: bool = False


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401  (the Data library comes with the [data] extra)
    except ImportError as error:
        raise DependencyError(
            f"engine='ray' needs Ray Data ({error.name or 'ray'} is missing): "
            "pip install 'wsolkit[ray]'"
        ) from None
    return ray


def default_actor_cpus() -> float:
    """CPUs per actor by default: 1 on machines with more than 4 cores, else 0.5."""
    return 1.0 if (os.cpu_count() or 1) > 4 else 0.5


def decode_batch(batch: dict[str, np.ndarray], decoder: Decoder) -> dict[str, np.ndarray]:
    """Ray step: file bytes to preprocessed tensors (failed files keep their reason).

    The decoded RGB pixels travel too (``pixels``) when the core keeps pixels or sources;
    full-size tensors (of different shapes) travel as an object column.
    """
    items = [decoder.bytes(bytes(data), str(path))
             for data, path in zip(batch["bytes"], batch["path"], strict=True)]
    shape = (3, *decoder.classifier.input_size)
    out = {
        "path": np.array([item.path for item in items], dtype=object),
        "width": np.array([item.width for item in items], np.int64),
        "height": np.array([item.height for item in items], np.int64),
        "error": np.array([item.error or "" for item in items], dtype=object),
    }
    tensors = [item.tensor.numpy() if item.tensor is not None else np.zeros(shape, np.float32)
               for item in items]
    out["tensor"] = _objects(tensors) if decoder.full_size else np.stack(tensors)
    if decoder.keep_pixels or decoder.keep_source:
        out["pixels"] = _objects([item.pixels if item.pixels is not None else
                                  None if item.source is None else np.asarray(item.source)
                                  for item in items])
    return out


def _objects(values: list) -> np.ndarray:
    column = np.empty(len(values), dtype=object)
    for index, value in enumerate(values):
        column[index] = value
    return column


def _items(batch: dict[str, np.ndarray], decoder: Decoder) -> list[DecodedImage]:
    """The decoded items of a Ray batch, as the local engine's workers give them."""
    pixels = batch.get("pixels")
    if pixels is None:
        pixels = [None] * len(batch["path"])
    items = []
    for path, tensor, width, height, error, rgb in zip(
            batch["path"], batch["tensor"], batch["width"], batch["height"], batch["error"],
            pixels, strict=True):
        if error:
            items.append(DecodedImage(str(path), None, int(width), int(height), str(error)))
            continue
        items.append(DecodedImage(
            str(path), torch.from_numpy(np.ascontiguousarray(tensor)), int(width), int(height),
            pixels=rgb if decoder.keep_pixels else None,
            source=Image.fromarray(rgb) if decoder.keep_source else None))
    return items


class CoreActor:
    """Ray actor: builds the core (and so loads the model) once, runs it on each batch."""

    def __init__(self, make_core: Callable[..., Any], classifier: Classifier, settings: Any,
                 device: str, threads: int) -> None:
        torch.set_num_threads(threads)
        classifier.module.to(device)
        self.core = make_core(classifier, settings)
        self.decoder = self.core.decoder()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Decoded batch -> one pickled row per image (rows may hold arrays)."""
        rows = [pickle.dumps(row) for row, _ in self.core(_items(batch, self.decoder))]
        return {"row": _objects(rows)}


def localize_files_ray(
    classifier: Classifier,
    paths: Sequence[Path],
    out_dir: Path,
    settings: LocalizeSettings,
    progress: Callable[[int], None] | None = None,
    job: JobOptions | None = None,
    ray: RayOptions | None = None,
) -> JobReport:
    """As :func:`wsolkit.apps.localize_files`, on Ray Data; same rows, shards and resume.

    Overlays are not drawn by this engine (``job.overlays`` must be ``"none"``); rows arrive
    in the order batches finish, not input order.

    Args:
        classifier: the model; sent once to every actor, which moves it to its device (CUDA
            when the cluster has GPUs, one GPU per actor).
        paths: image files, readable from every node of the cluster.
        out_dir: output folder on the driver.
        settings: method, target, thresholds, batch size.
        progress: called with the number of images finished.
        job: shard size (workers and overlays belong to the local engine).
        ray: address, actors, CPUs per actor (defaults: :class:`RayOptions`).

    Raises:
        DependencyError: Ray Data is not installed.
        InputError: bad options, or ``out_dir`` holds rows made with other settings.
    """
    return run_ray(LocalizeCore, classifier, paths, out_dir, settings, settings.batch_size,
                   progress, job, ray)


def segment_files_ray(
    classifier: Classifier,
    paths: Sequence[Path],
    out_dir: Path,
    settings: Any,
    progress: Callable[[int], None] | None = None,
    job: JobOptions | None = None,
    ray: RayOptions | None = None,
) -> JobReport:
    """As :func:`wsolkit.apps.segment_core.segment_files`, on Ray Data; the same rows.

    Each actor runs the model and GrabCut of its batches (more actors: more GrabCut in
    parallel); no mask files, overlays or saved maps (the actors may run elsewhere). Arguments
    as :func:`localize_files_ray`, with ``settings`` a
    :class:`~wsolkit.apps.segment.SegmentSettings`.
    """
    from wsolkit.apps.segment_core import SegmentCore

    if job is not None and job.mask_files:
        raise InputError("engine='ray' writes no mask files: use the local engine for "
                         "mask files")
    return run_ray(SegmentCore, classifier, paths, out_dir, settings, settings.batch_size,
                   progress, job, ray)


def run_ray(make_core: Callable[..., Any], classifier: Classifier, paths: Sequence[Path],
            out_dir: Path, settings: Any, batch_size: int,
            progress: Callable[[int], None] | None = None, job: JobOptions | None = None,
            ray: RayOptions | None = None) -> JobReport:
    """Run the core ``make_core(classifier, settings)`` over files on Ray Data, into shards."""
    job, options = job or JobOptions(), ray or RayOptions()
    if job.overlays not in ("none", 0) or job.save_maps:
        raise InputError("engine='ray' draws no overlays and saves no maps: use the local "
                         "engine for overlays and saved maps")
    job.check()
    if options.actors < 1:
        raise InputError(f"actors={options.actors}: must be at least 1")
    actor_cpus = default_actor_cpus() if options.actor_cpus is None else options.actor_cpus
    if actor_cpus <= 0:
        raise InputError(f"actor_cpus={actor_cpus}: must be above 0")
    core = make_core(classifier, settings)  # bad method/layer options fail here, not in an actor
    _ray()  # missing Ray fails before anything is written
    make_out_dir(out_dir)
    summary = start_summary(out_dir, classifier, core.describe())
    writer = ShardWriter(out_dir, prefix=ROWS_PREFIX, shard_size=job.shard_size)
    report = JobReport(resumed=len(writer.done))
    todo = [str(p) for p in paths if str(p) not in writer.done]
    if progress is not None and len(todo) < len(paths):
        progress(len(paths) - len(todo))
    layer = None
    try:
        if todo:
            # Ray gets absolute paths (its workers may run elsewhere); rows name them as given
            given = {os.path.abspath(path): path for path in todo}
            with ray_session(options):
                for row in ray_rows(make_core, classifier, settings, list(given), batch_size,
                                     options, actor_cpus, progress):
                    row = _as_given(row, given)
                    if row["status"] != "ok":
                        report.failures.append((row["image"], row["error"]))
                    writer.add(row)
                    report.written += 1
            layer = settings.layer or _layer(core, classifier)
    finally:
        writer.flush()
        finish_summary(out_dir, summary, layer, writer, report, len(paths))
    return report


class ray_session:  # noqa: N801  (used as a context manager, like a function)
    """Start Ray here (local mode, or connect to ``address``) unless it runs already."""

    def __init__(self, options: RayOptions) -> None:
        self.options, self.started = options, False

    def __enter__(self) -> Any:
        ray = _ray()
        if not ray.is_initialized():
            address = self.options.address
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False,
                     object_store_memory=None if address else self.options.object_store_memory)
            self.started = True
        return ray

    def __exit__(self, *exc: object) -> None:
        if self.started:
            _ray().shutdown()


def ray_rows(make_core: Callable[..., Any], classifier: Classifier, settings: Any,
             paths: list[str], batch_size: int, options: RayOptions, actor_cpus: float,
             progress: Callable[[int], None] | None = None) -> Iterator[Any]:
    """The actors' rows (one per image, in the order batches finish) for absolute paths."""
    ray = _ray()
    from ray.data import ActorPoolStrategy, DataContext

    DataContext.get_current().enable_progress_bars = options.progress_bars
    gpus = ray.cluster_resources().get("GPU", 0) > 0
    threads = options.actor_threads or max(1, int(actor_cpus))
    decoder = make_core(classifier, settings).decoder()
    dataset = (
        ray.data.read_binary_files(paths, include_paths=True)
        .map_batches(decode_batch, fn_kwargs={"decoder": decoder}, batch_size=batch_size,
                     batch_format="numpy")
        .map_batches(CoreActor,
                     fn_constructor_args=(make_core, _on_cpu(classifier), settings,
                                          "cuda" if gpus else "cpu", threads),
                     batch_size=batch_size, batch_format="numpy",
                     compute=ActorPoolStrategy(size=options.actors),
                     num_cpus=actor_cpus, num_gpus=1 if gpus else None)
    )
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for data in batch["row"]:
            yield pickle.loads(data)
        if progress is not None:
            progress(len(batch["row"]))


def _layer(core: Any, classifier: Classifier) -> str:
    """The actors' hooked layer, found the same way on the driver."""
    return core.method.default_layer(
        torch.zeros(1, 3, *classifier.input_size, device=classifier.device))


def _as_given(row: dict, given: dict[str, str]) -> dict:
    """The row naming its image (and, in an error, the file) as the caller gave the path."""
    path = given.get(row["image"], row["image"])
    if path != row["image"]:
        if row.get("error", "").startswith(row["image"] + ":"):
            row["error"] = path + row["error"][len(row["image"]):]
        row["image"] = path
    return row


def _on_cpu(classifier: Classifier) -> Classifier:
    """A CPU copy to ship to the actors (the driver's model may sit on a GPU)."""
    if classifier.device.type == "cpu":
        return classifier
    return replace(classifier, module=copy.deepcopy(classifier.module).cpu(), _detected=None)
