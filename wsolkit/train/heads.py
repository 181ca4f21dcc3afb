"""Train a WILDCAT or ex-CAM head on a frozen backbone's cached features (multi-label BCE).

The backbone never changes, so its feature map of every training image is computed once, for a
few fixed augmentations (the image and its horizontal flip), and kept in memory as fp16
(optionally in a ``cache`` file reused by later runs on the same data). An epoch is then only
the head: minutes on a CPU for thousands of images.

Recipe: the head (:class:`wsolkit.models.wildcat.WildcatHead`) starts from the model's linear
layer when it has one for the same classes (each class's weights copied to its ``M`` maps plus
seeded noise, see ``init_from_linear``), with one common bias shift fitted so that the sigmoid
of the pooled scores starts calibrated for BCE (a softmax classifier's logits are not); the
ranking of the classes is unchanged, so training starts at the classifier's accuracy. AdamW on
the multi-label BCE of the pooled scores, one seeded random augmentation per image per epoch.

Files, written atomically after every epoch: ``out`` (the head, fp16), ``<out stem>.ckpt.pt``
(head, optimizer, history: what ``resume=True`` continues from; a resumed run equals an
uninterrupted one) and ``<out stem>.json`` (validation mAP per epoch, settings).
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wsolkit.data.atomic import write_json_atomic, write_torch_atomic
from wsolkit.data.images import load_image
from wsolkit.data.sample import Sample
from wsolkit.errors import ImageError, InputError, ModelError, WSOLError
from wsolkit.eval.classification import multilabel_map
from wsolkit.models.classifier import Classifier
from wsolkit.models.layers import find_linear
from wsolkit.models.loading import read_torch_file
from wsolkit.models.wildcat import DROPOUTS, HeadModel, WildcatHead, head_record
from wsolkit.train.runs import (
    check_checkpoint,
    check_resumed_settings,
    dataset_source,
    image_labels,
    percent,
)
from wsolkit.train.sampling import split_train_val

__all__ = ["HeadSettings", "train_head"]

_FORMAT = 1
HEADS = ("wildcat", "excam")


@dataclass(frozen=True)
class HeadSettings:
    """Everything that decides the trained head.

    Attributes:
        head: ``wildcat`` or ``excam`` (the same head plus sequential dropout in training).
        dropout: ex-CAM dropout reading, ``intent`` (default) or ``literal``.
        maps: maps per class ``M``.
        kmax, kmin, alpha, halve: WILDCAT spatial pooling (ex-CAM values by default).
        delta: threshold of the ex-CAM dropout masks.
        epochs: passes over the training images.
        batch_size: images per step.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        init: ``linear`` (from the model's linear layer; needs one for the dataset's classes)
            or ``random``.
        noise: relative noise added to the copied linear weights.
        flip: also cache the horizontally flipped image (2 augmentations instead of 1).
        val_fraction: images held out for validation (seeded split).
        seed: seeds the split, the initialization and the epoch order.
        limit: use only the first ``limit`` images.
    """

    head: str = "wildcat"
    dropout: str = "intent"
    maps: int = 8
    kmax: float = 0.2
    kmin: float = 0.2
    alpha: float = 0.6
    halve: bool = False
    delta: float = 0.5
    epochs: int = 6
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 1e-4
    init: str = "linear"
    noise: float = 0.01
    flip: bool = True
    val_fraction: float = 0.1
    seed: int = 0
    limit: int | None = None

    def check(self) -> None:
        """Raise :class:`InputError` naming the first bad setting (as a CLI flag)."""
        checks = [
            (self.head in HEADS, f"head must be one of {', '.join(HEADS)}; got {self.head!r}"),
            (self.dropout in DROPOUTS,
             f"dropout must be one of {', '.join(DROPOUTS)}; got {self.dropout!r}"),
            (self.maps >= 1, f"maps must be >= 1; got {self.maps}"),
            (self.kmax > 0 and self.kmin >= 0,
             f"kmax={self.kmax} must be > 0 and kmin={self.kmin} >= 0"),
            (0 < self.delta < 1, f"delta must be in (0, 1); got {self.delta}"),
            (self.epochs >= 1, f"epochs must be >= 1; got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1; got {self.batch_size}"),
            (self.lr > 0 and math.isfinite(self.lr), f"lr must be > 0; got {self.lr}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0; got {self.weight_decay}"),
            (self.init in ("linear", "random"), f"init must be linear or random; got "
                                                 f"{self.init!r}"),
            (self.noise >= 0, f"noise must be >= 0; got {self.noise}"),
            (0 <= self.val_fraction < 1,
             f"val_fraction must be in [0, 1); got {self.val_fraction}"),
            (self.seed >= 0, f"seed must be >= 0; got {self.seed}"),
            (self.limit is None or self.limit >= 1, f"limit must be >= 1; got {self.limit}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)

    def build(self, in_channels: int, num_classes: int) -> WildcatHead:
        """An untrained head of these settings."""
        return WildcatHead(in_channels, num_classes, self.maps, self.kmax, self.kmin, self.alpha,
                           self.halve, self.dropout if self.head == "excam" else None,
                           self.delta)


def paths(out: str | Path) -> tuple[Path, Path, Path]:
    """(head file, checkpoint, metrics) of output ``out``."""
    out = Path(out)
    return out, out.with_name(out.stem + ".ckpt.pt"), out.with_name(out.stem + ".json")


def train_head(
    classifier: Classifier,
    dataset: Sequence[Sample],
    out: str | Path,
    settings: HeadSettings | None = None,
    resume: bool = False,
    cache: str | Path | None = None,
    quiet: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train a head on the image-level labels of ``dataset`` on ``classifier``'s frozen features.

    Args:
        classifier: the backbone (its ``feature_layer``, or the detected CAM layer, feeds the head).
        dataset: a dataset reader (``wsolkit.data.open_dataset``) with image-level labels.
        out: the head file to write (e.g. ``head.pt``); checkpoint and metrics go beside it.
        settings: see :class:`HeadSettings`.
        resume: continue from the checkpoint beside ``out`` (same settings but ``epochs``).
        cache: file to keep the computed features in and reuse them from.
        quiet: no progress bar.
        log: called with a one-line summary after each epoch.

    Returns:
        The content of the metrics file.

    Raises:
        InputError: bad settings, no labels, no readable image, a checkpoint that exists
            without ``resume`` (or is missing or different with it).
        ModelError: ``init="linear"`` and the model has no linear layer for these classes.
    """
    settings = settings or HeadSettings()
    settings.check()
    head_path, ckpt_path, metrics_path = paths(out)
    if not head_path.parent.is_dir():
        raise InputError(f"out={head_path}: folder {head_path.parent} does not exist")
    check_checkpoint(ckpt_path, resume, "out=FILE")
    source = dataset_source(dataset)
    samples = list(dataset)[: settings.limit]
    class_names, targets = image_labels(dataset, samples, source)
    layer = classifier.feature_layer or classifier.cam_head(
        torch.zeros(1, 3, *classifier.input_size, device=classifier.device)).feature_layer
    features, kept, failures = cached_features(classifier, layer, samples, settings.flip, cache,
                                               quiet)
    samples, targets = [samples[i] for i in kept], targets[kept]
    if not samples:
        raise InputError(f"{source}: none of the images can be read (first: {failures[0]})")
    train_idx, val_idx = split_train_val(len(samples), settings.val_fraction, settings.seed)
    head = settings.build(features.shape[2], len(class_names))
    state = {
        "format": _FORMAT, "backbone": classifier.name, "layer": layer,
        "settings": {k: v for k, v in asdict(settings).items() if k != "epochs"},
        "class_names": list(class_names),
        "train_ids": [samples[i].image_id for i in train_idx],
    }
    if resume:
        saved = _load_checkpoint(ckpt_path, state)
        head.load_state_dict(saved["head"])
        start, history, before = int(saved["epoch"]), list(saved["history"]), saved["before"]
    else:
        _initialize(head, classifier, len(class_names), features, train_idx, targets, settings)
        start, history = 0, []
        before = _validate(head, features, val_idx, targets)
    optimizer = torch.optim.AdamW(head.parameters(), lr=settings.lr,
                                  weight_decay=settings.weight_decay)
    if resume:
        optimizer.load_state_dict(saved["optimizer"])
    for epoch in range(start, settings.epochs):
        began = time.perf_counter()
        loss = _train_epoch(head, optimizer, features, train_idx, targets, settings, epoch, quiet)
        val_map = _validate(head, features, val_idx, targets)
        history.append({"epoch": epoch + 1, "loss": loss, "val_map": val_map,
                        "seconds": round(time.perf_counter() - began, 2)})
        write_torch_atomic(ckpt_path, {
            **state, "epoch": epoch + 1, "head": head.state_dict(),
            "optimizer": optimizer.state_dict(), "history": history, "before": before})
        write_torch_atomic(head_path, head_record(
            head, settings.head, classifier.name, layer, class_names,
            {"settings": asdict(settings)}))
        if log is not None:
            log(f"epoch {epoch + 1}/{settings.epochs}: loss {loss:.4f}, val mAP "
                f"{percent(val_map)} (at initialization {percent(before)})")
        write_json_atomic(metrics_path, _metrics(source, classifier, layer, settings, class_names,
                                                 train_idx, val_idx, before, history, start,
                                                 head_path, failures))
    if start >= settings.epochs:
        write_torch_atomic(head_path, head_record(
            head, settings.head, classifier.name, layer, class_names,
            {"settings": asdict(settings)}))
    metrics = _metrics(source, classifier, layer, settings, class_names, train_idx, val_idx,
                       before, history, start, head_path, failures)
    write_json_atomic(metrics_path, metrics)
    return metrics


def _metrics(source: str, classifier: Classifier, layer: str, settings: HeadSettings,
             class_names: list[str], train_idx: np.ndarray, val_idx: np.ndarray,
             before: float | None, history: list[dict[str, Any]], start: int, head_path: Path,
             failures: list[str]) -> dict[str, Any]:
    return {
        "dataset": source, "backbone": classifier.name, "layer": layer, "head": settings.head,
        "classes": len(class_names), "train_images": len(train_idx), "val_images": len(val_idx),
        "val_map_init": before, "val_map": history[-1]["val_map"] if history else before,
        "epochs": history, "resumed_from_epoch": start or None, "head_file": head_path.name,
        "settings": asdict(settings), "failures": failures,
    }


def cached_features(
    classifier: Classifier, layer: str, samples: list[Sample], flip: bool,
    cache: str | Path | None = None, quiet: bool = True, batch_size: int = 32,
) -> tuple[torch.Tensor, list[int], list[str]]:
    """fp16 (N, A, K, h, w) features of the readable samples (A = 2 with ``flip``).

    Returns the features, the indices of the samples they belong to and a one-line message per
    unreadable image. With ``cache`` the result is stored in (and read back from) that file,
    keyed by the backbone, layer, image files and augmentations.
    """
    from tqdm import tqdm

    key = hashlib.sha256(repr((classifier.name, layer, flip, classifier.input_size,
                               [str(s.path) for s in samples])).encode()).hexdigest()
    if cache is not None and Path(cache).is_file():
        stored = torch.load(cache, map_location="cpu", weights_only=True)
        if stored.get("key") == key:
            return stored["features"], stored["kept"], stored["failures"]
    model = HeadModel(classifier.module, layer, WildcatHead(1, 1))
    training = classifier.module.training
    classifier.module.eval()
    chunks, kept, failures = [], [], []
    bar = tqdm(total=len(samples), unit="img", desc="features", disable=quiet, file=sys.stderr,
               leave=False)
    try:
        with bar, torch.inference_mode():
            for start in range(0, len(samples), batch_size):
                tensors = []
                for index in range(start, min(start + batch_size, len(samples))):
                    try:
                        image = load_image(samples[index].path)
                    except ImageError as error:
                        failures.append(str(error))
                        continue
                    tensors.append(classifier.preprocess(image))
                    kept.append(index)
                bar.update(min(batch_size, len(samples) - start))
                if not tensors:
                    continue
                batch = torch.stack(tensors).to(classifier.device)
                views = [batch, batch.flip(-1)] if flip else [batch]
                chunks.append(torch.stack([model.features(v).half().cpu() for v in views], 1))
    finally:
        classifier.module.train(training)
    features = torch.cat(chunks) if chunks else torch.zeros(0, 1, 1, 1, 1, dtype=torch.half)
    if cache is not None:
        write_torch_atomic(Path(cache), {"key": key, "features": features, "kept": kept,
                                          "failures": failures})
    return features, kept, failures


@torch.no_grad()
def _scores(head: WildcatHead, features: torch.Tensor, indices: np.ndarray,
            batch_size: int = 64) -> torch.Tensor:
    """(len(indices), C) pooled scores in eval mode (first augmentation: the image itself)."""
    training = head.training
    head.eval()
    try:
        return torch.cat([head(features[torch.as_tensor(indices[s:s + batch_size]), 0].float())
                          for s in range(0, len(indices), batch_size)])
    finally:
        head.train(training)


def _initialize(head: WildcatHead, classifier: Classifier, num_classes: int,
                features: torch.Tensor, train_idx: np.ndarray, targets: np.ndarray,
                settings: HeadSettings) -> None:
    with torch.random.fork_rng():  # conv's seeded default init (kept with init=random)
        torch.manual_seed(settings.seed)
        fresh = settings.build(head.conv.in_channels, num_classes)
    head.load_state_dict(fresh.state_dict())
    if settings.init == "linear":
        try:
            fc = find_linear(classifier.module, classifier.fc_layer, head.conv.in_channels)
        except WSOLError as error:
            raise ModelError(f"init='linear': the model has no linear head ({error}); use "
                             "init='random'") from None
        if fc.out_features != num_classes or fc.in_features != head.conv.in_channels:
            raise ModelError(
                f"init='linear': the model's linear layer has {fc.out_features} classes, the "
                f"dataset {num_classes}; use init='random' or a model of these classes")
        head.init_from_linear(fc, settings.noise, settings.seed)
    _calibrate(head, features, train_idx[:2000], targets)


@torch.no_grad()
def _calibrate(head: WildcatHead, features: torch.Tensor, indices: np.ndarray,
               targets: np.ndarray) -> None:
    """Shift every class's bias by one constant that minimizes the BCE of the initial scores.

    The pooled score moves by ``(1 + alpha) / (2 if halve else 1)`` times a bias change (its
    top and bottom means both move), so the shift is fitted on the score and divided by that.
    """
    scores = _scores(head, features, indices).double()
    labels = torch.from_numpy(targets[indices]).double()
    low, high = -100.0, 100.0
    for _ in range(60):  # bisection on d/db mean BCE = mean(sigmoid(s + b) - y), increasing in b
        mid = (low + high) / 2
        if float((torch.sigmoid(scores + mid) - labels).mean()) > 0:
            high = mid
        else:
            low = mid
    spatial = head.spatial
    factor = 1.0 + (spatial.alpha if (spatial.kmin is None or spatial.kmin > 0) else 0.0)
    factor = factor / 2 if spatial.halve and factor != 1.0 else factor
    head.conv.bias.add_((low + high) / 2 / factor)


def _train_epoch(head: WildcatHead, optimizer: torch.optim.Optimizer, features: torch.Tensor,
                 train_idx: np.ndarray, targets: np.ndarray, settings: HeadSettings,
                 epoch: int, quiet: bool) -> float:
    from tqdm import tqdm

    rng = np.random.default_rng([settings.seed, epoch])
    order = train_idx[rng.permutation(len(train_idx))]
    views = rng.integers(0, features.shape[1], len(order))
    criterion = nn.BCEWithLogitsLoss()
    total, seen = 0.0, 0
    bar = tqdm(total=len(order), unit="img", desc=f"epoch {epoch + 1}/{settings.epochs}",
               disable=quiet, file=sys.stderr, leave=False)
    head.train()
    try:
        with bar:
            for start in range(0, len(order), settings.batch_size):
                batch = order[start:start + settings.batch_size]
                inputs = features[torch.as_tensor(batch),
                                  torch.as_tensor(views[start:start + len(batch)])].float()
                labels = torch.from_numpy(targets[batch].astype(np.float32))
                loss = criterion(head(inputs), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(batch)
                seen += len(batch)
                bar.update(len(batch))
                bar.set_postfix(loss=f"{total / seen:.4f}")
    finally:
        head.eval()
    return total / max(seen, 1)


def _validate(head: WildcatHead, features: torch.Tensor, val_idx: np.ndarray,
              targets: np.ndarray) -> float | None:
    if len(val_idx) == 0:
        return None
    scores = torch.sigmoid(_scores(head, features, val_idx)).numpy()
    return multilabel_map(scores, targets[val_idx])[0]


def _load_checkpoint(path: Path, expected: dict[str, Any]) -> dict[str, Any]:
    saved = read_torch_file(path, "checkpoint (resume=True)", InputError)
    if not isinstance(saved, dict) or saved.get("format") != _FORMAT or "head" not in saved:
        raise InputError(f"resume=True: {path} is not a wsolkit train-head checkpoint")
    if saved["backbone"] != expected["backbone"] or saved["layer"] != expected["layer"]:
        raise ModelError(f"resume=True: {path} trains a head on {saved['backbone']!r} "
                         f"({saved['layer']}), not on {expected['backbone']!r}")
    if len(saved["class_names"]) != len(expected["class_names"]):
        raise ModelError(f"resume=True: {path} has {len(saved['class_names'])} classes, the "
                         f"dataset {len(expected['class_names'])}")
    check_resumed_settings(path, saved["settings"], expected["settings"])
    if saved["class_names"] != expected["class_names"] or \
            saved["train_ids"] != expected["train_ids"]:
        raise InputError(f"resume=True: the dataset differs from the one of {path}")
    return saved
