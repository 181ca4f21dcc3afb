"""The localization job on Ray Data: the same per-batch core as the local engine, on a cluster.

``ray.data.read_binary_files`` reads the files in parallel read tasks, a stateless
``map_batches`` step decodes and preprocesses them with the local engine's decoder, and a pool
of actors (``ActorPoolStrategy``), each holding the model once, runs
:class:`~wsolkit.apps.localize_core.LocalizeCore` on each batch. The driver streams the rows
into the same atomic JSON Lines shards as the local engine, so outputs, resume and failed
rows are the same. Ray is an optional extra (``pip install 'wsolkit[ray]'``), imported only
here. See docs/scale.md.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from wsolkit.apps.localize import (
    ROWS_PREFIX,
    JobOptions,
    LocalizeReport,
    finish_summary,
    start_summary,
)
from wsolkit.apps.localize_core import (
    DecodedImage,
    LocalizeCore,
    LocalizeSettings,
    decode_bytes,
    preprocessor,
)
from wsolkit.data.atomic import make_out_dir
from wsolkit.data.shards import ShardWriter
from wsolkit.errors import DependencyError, InputError
from wsolkit.maps import get_method
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


def decode_batch(batch: dict[str, np.ndarray], classifier: Classifier,
                 keep_source: bool = False) -> dict[str, np.ndarray]:
    """Ray step: file bytes to preprocessed tensors (failed files keep their reason).

    With ``keep_source`` the decoded RGB pixels travel too (``source``), for methods that
    re-read the image (``HeatmapMethod.uses_sources``).
    """
    items = [decode_bytes(bytes(data), str(path), classifier, keep_source=keep_source)
             for data, path in zip(batch["bytes"], batch["path"], strict=True)]
    shape = (3, *classifier.input_size)
    extra = {}
    if keep_source:
        sources = np.empty(len(items), dtype=object)
        for index, item in enumerate(items):
            sources[index] = None if item.source is None else np.asarray(item.source)
        extra["source"] = sources
    return {**extra,
        "path": np.array([item.path for item in items], dtype=object),
        "tensor": np.stack([item.tensor.numpy() if item.tensor is not None
                            else np.zeros(shape, np.float32) for item in items]),
        "width": np.array([item.width for item in items], np.int64),
        "height": np.array([item.height for item in items], np.int64),
        "error": np.array([item.error or "" for item in items], dtype=object),
    }


class LocalizeActor:
    """Ray actor: loads the model once, runs :class:`LocalizeCore` on each batch."""

    def __init__(self, classifier: Classifier, settings: LocalizeSettings, device: str,
                 threads: int) -> None:
        torch.set_num_threads(threads)
        classifier.module.to(device)
        self.core = LocalizeCore(classifier, settings)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Decoded batch -> one JSON row per image."""
        sources = batch.get("source")
        if sources is None:
            sources = [None] * len(batch["path"])
        items = [
            DecodedImage(str(path), None, int(width), int(height), str(error))
            if error else
            DecodedImage(str(path), torch.from_numpy(np.ascontiguousarray(tensor)), int(width),
                         int(height),
                         source=None if source is None else Image.fromarray(source))
            for path, tensor, width, height, error, source in zip(
                batch["path"], batch["tensor"], batch["width"], batch["height"], batch["error"],
                sources, strict=True)
        ]
        rows = [json.dumps(row) for row, _ in self.core(items)]
        return {"row": np.array(rows, dtype=object)}


def localize_files_ray(
    classifier: Classifier,
    paths: Sequence[Path],
    out_dir: Path,
    settings: LocalizeSettings,
    progress: Callable[[int], None] | None = None,
    job: JobOptions | None = None,
    ray: RayOptions | None = None,
) -> LocalizeReport:
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
    job, options = job or JobOptions(), ray or RayOptions()
    if job.overlays not in ("none", 0) or job.save_maps:
        raise InputError("engine='ray' draws no overlays and saves no maps: use the local "
                         "engine for overlays and saved maps")
    if options.actors < 1:
        raise InputError(f"actors={options.actors}: must be at least 1")
    actor_cpus = default_actor_cpus() if options.actor_cpus is None else options.actor_cpus
    if actor_cpus <= 0:
        raise InputError(f"actor_cpus={actor_cpus}: must be above 0")
    LocalizeCore(classifier, settings)  # bad method/layer options fail here, not in an actor
    ray_module = _ray()
    make_out_dir(out_dir)
    summary = start_summary(out_dir, classifier, settings)
    writer = ShardWriter(out_dir, prefix=ROWS_PREFIX, shard_size=job.shard_size)
    report = LocalizeReport(resumed=len(writer.done))
    todo = [str(p) for p in paths if str(p) not in writer.done]
    if progress is not None and len(todo) < len(paths):
        progress(len(paths) - len(todo))
    started = not ray_module.is_initialized()
    if started:
        ray_module.init(address=options.address, include_dashboard=False,
                        log_to_driver=False, configure_logging=False,
                        object_store_memory=None if options.address else
                        options.object_store_memory)
    layer = None
    try:
        if todo:
            layer = _run(ray_module, classifier, todo, settings, options, actor_cpus, writer,
                         report, progress)
    finally:
        writer.flush()
        finish_summary(out_dir, summary, layer, writer, report, len(paths))
        if started:
            ray_module.shutdown()
    return report


def _run(ray: Any, classifier: Classifier, todo: list[str], settings: LocalizeSettings,
         options: RayOptions, actor_cpus: float, writer: ShardWriter, report: LocalizeReport,
         progress: Callable[[int], None] | None) -> str | None:
    from ray.data import ActorPoolStrategy, DataContext

    DataContext.get_current().enable_progress_bars = options.progress_bars
    gpus = ray.cluster_resources().get("GPU", 0) > 0
    threads = options.actor_threads or max(1, int(actor_cpus))
    cpu_model = preprocessor(classifier)
    sources = get_method(settings.method).uses_sources
    cpu_copy = _on_cpu(classifier)
    # Ray is given absolute paths (its workers may run elsewhere); rows name the paths as given.
    given = {os.path.abspath(path): path for path in todo}
    dataset = (
        ray.data.read_binary_files(list(given), include_paths=True)
        .map_batches(decode_batch, fn_kwargs={"classifier": cpu_model, "keep_source": sources},
                     batch_size=settings.batch_size, batch_format="numpy")
        .map_batches(LocalizeActor,
                     fn_constructor_args=(cpu_copy, settings, "cuda" if gpus else "cpu",
                                          threads),
                     batch_size=settings.batch_size, batch_format="numpy",
                     compute=ActorPoolStrategy(size=options.actors),
                     num_cpus=actor_cpus, num_gpus=1 if gpus else None)
    )
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for text in batch["row"]:
            row = _as_given(json.loads(text), given)
            if row["status"] != "ok":
                report.failures.append((row["image"], row["error"]))
            writer.add(row)
            report.written += 1
        if progress is not None:
            progress(len(batch["row"]))
    if settings.layer is not None:
        return settings.layer
    # the actors' hooked layer, found the same way on the driver (a one-image probe)
    core = LocalizeCore(classifier, settings)
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
