"""Fine-tune a classifier on a localization dataset's image-level labels with adaptation layers.

After Bency et al. (ECCV 2016, sec. 3.2 and 4.1): the last layer is replaced by two adaptation
layers (:mod:`wsolkit.models.adaptation`), the network is trained with the cross-entropy
``-1/K sum_k [p_k log q_k + (1 - p_k) log(1 - q_k)]`` (eq. 1), the new layers learn faster than
the pretrained ones (``head_lr`` vs ``lr``; ``lr=0`` freezes the backbone), and
under-represented classes are oversampled (:mod:`wsolkit.train.sampling`) with noise and
rotation augmentation (:mod:`wsolkit.train.augment`). The paper's outputs ``q`` are a softmax
(``output="softmax"``) trained by SGD, learning rate 1e-3 divided by 10 every 20000 batches of
50 (:meth:`FinetuneSettings.paper`); our default is sigmoid outputs (independent per class, as
multi-label sets need) with AdamW and a constant learning rate.

Outputs in the ``out`` folder, each written atomically after every epoch:

- ``model.pt``: the fine-tuned classifier, for ``wsolkit.load_model(path)`` or ``--model path``
  (class names, preprocessing and default layers included);
- ``checkpoint.pt``: model and optimizer state, finished epochs, split, history; what
  ``resume=True`` continues from;
- ``metrics.json``: validation mAP before and after, per-epoch loss and mAP, settings.

Reproducibility: every epoch draws its order, augmentation and dropout from generators seeded by
``(seed, epoch)`` (the caller's global RNG state is left as found), so resuming after epoch k
gives the same parameters as an uninterrupted run (bit for bit on the CPU). A run interrupted
inside an epoch resumes from the end of the last finished epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsolkit.data.atomic import make_out_dir, write_json_atomic, write_torch_atomic
from wsolkit.data.images import load_image
from wsolkit.data.sample import Sample
from wsolkit.errors import ImageError, InputError
from wsolkit.eval.classification import multilabel_map
from wsolkit.models.adaptation import with_adaptation_head
from wsolkit.models.classifier import Classifier
from wsolkit.models.loading import read_torch_file, save_classifier
from wsolkit.train.augment import Augment
from wsolkit.train.finetune_loop import (  # _criterion: re-exported for its tests
    _criterion,  # noqa: F401
    _ImageSource,
    _optimizer,
    _train_epoch,
    _trainable_prefixes,
    _validate,
)
from wsolkit.train.runs import (
    check_checkpoint,
    check_resumed_settings,
    dataset_source,
    image_labels,
    percent,
)
from wsolkit.train.sampling import repeat_factors, split_train_val

__all__ = ["FinetuneSettings", "finetune", "multilabel_map"]

OUTPUTS = ("sigmoid", "softmax")
PRESETS = ("default", "paper")
CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
METRICS = "metrics.json"
_FORMAT = 1


@dataclass(frozen=True)
class FinetuneSettings:
    """Everything that decides the result of a fine-tuning run.

    Attributes:
        epochs: Number of passes over the (oversampled) training images.
        batch_size: Images per optimizer step.
        lr: Learning rate of the pretrained layers; 0 freezes them (kept in eval mode).
        head_lr: Learning rate of the new adaptation layers.
        hidden: Width of the hidden adaptation layer (0: a single linear layer).
        dropout: Dropout after the hidden adaptation layer.
        optimizer: ``adam`` (AdamW) or ``sgd`` (momentum 0.9).
        lr_step: Divide both learning rates by 10 every ``lr_step`` batches (0: constant).
        output: ``sigmoid`` (independent class probabilities, eq. 1 as multi-label binary
            cross-entropy) or ``softmax`` (the paper's output layer: eq. 1 on softmax
            probabilities; the model then reports softmax probabilities).
        weight_decay: Weight decay of both parameter groups.
        val_fraction: Fraction of the images held out for validation, chosen by ``seed``.
        seed: Seeds the split, the head initialization, sampling, augmentation and dropout.
        balance: Oversampling exponent in [0, 1] (0: off, 1: equal class counts).
        max_repeat: Largest oversampling factor of one image per epoch.
        rotation: Largest random rotation in degrees.
        flip: Probability of a horizontal flip.
        noise: Standard deviation of the white noise (RGB values in [0, 1]).
        train_layers: With ``lr > 0``, only these backbone modules (by name) are trained; empty:
            the whole backbone.
        limit: Use only the first ``limit`` images of the dataset.
    """

    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-4
    head_lr: float = 1e-3
    hidden: int = 512
    dropout: float = 0.5
    optimizer: str = "adam"
    lr_step: int = 0
    output: str = "sigmoid"
    weight_decay: float = 1e-4
    val_fraction: float = 0.2
    seed: int = 0
    balance: float = 0.5
    max_repeat: float = 3.0
    rotation: float = 30.0
    flip: float = 0.5
    noise: float = 0.03
    train_layers: tuple[str, ...] = field(default=())
    limit: int | None = None

    def check(self) -> None:
        """Raise :class:`InputError` naming the first out-of-range setting."""
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1; got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1; got {self.batch_size}"),
            (self.lr >= 0 and math.isfinite(self.lr), f"lr must be >= 0; got {self.lr}"),
            (self.head_lr > 0 and math.isfinite(self.head_lr),
             f"head_lr must be > 0; got {self.head_lr}"),
            (self.hidden >= 0, f"hidden must be >= 0 (0: one linear layer); got {self.hidden}"),
            (0 <= self.dropout < 1, f"dropout must be in [0, 1); got {self.dropout}"),
            (self.optimizer in ("adam", "sgd"),
             f"optimizer must be adam or sgd; got {self.optimizer!r}"),
            (self.lr_step >= 0, f"lr_step must be >= 0 (0: constant); got {self.lr_step}"),
            (self.output in OUTPUTS,
             f"output must be {' or '.join(OUTPUTS)}; got {self.output!r}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0; got {self.weight_decay}"),
            (0 <= self.val_fraction < 1,
             f"val_fraction must be in [0, 1); got {self.val_fraction}"),
            (self.seed >= 0, f"seed must be >= 0; got {self.seed}"),
            (0 <= self.balance <= 1, f"balance must be in [0, 1]; got {self.balance}"),
            (self.max_repeat >= 1, f"max_repeat must be >= 1; got {self.max_repeat}"),
            (self.limit is None or self.limit >= 1, f"limit must be >= 1; got {self.limit}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)
        Augment(self.rotation, self.flip, self.noise)  # raises on a bad value

    @classmethod
    def paper(cls, **overrides: Any) -> FinetuneSettings:
        """Bency et al.'s training settings (sec. 3.2, 4.1), ``overrides`` on top.

        SGD, learning rate 1e-3 divided by 10 every 20000 batches, 50 images per batch, softmax
        output layer. The paper gives no momentum, weight decay or backbone learning rate:
        those stay ours (0.9, 1e-4, ``lr``).
        """
        values = {"optimizer": "sgd", "head_lr": 1e-3, "lr_step": 20000, "batch_size": 50,
                  "output": "softmax"}
        values.update(overrides)
        return cls(**values)

    def resume_key(self) -> dict[str, Any]:
        """The settings a resumed run must share with its checkpoint (all but ``epochs``)."""
        key = asdict(self)
        key.pop("epochs")
        key["train_layers"] = list(self.train_layers)
        return key


def finetune(
    classifier: Classifier,
    dataset: Sequence[Sample],
    out: str | Path,
    settings: FinetuneSettings | None = None,
    resume: bool = False,
    quiet: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Fine-tune ``classifier`` with adaptation layers on the image-level labels of ``dataset``.

    The caller's classifier is left as found (the new model is a copy); see the module
    docstring for the recipe and the files written to ``out``.

    Args:
        classifier: The pretrained classifier (e.g. ``wsolkit.load_model()``).
        dataset: A dataset reader (``wsolkit.data.open_dataset``) or a sequence of samples;
            its ``class_names`` name the new classes when it has them.
        out: Output folder (created).
        settings: Training settings (defaults: :class:`FinetuneSettings`).
        resume: Continue from ``out/checkpoint.pt`` (same settings but ``epochs``, same data).
        quiet: No progress bar.
        log: Called with a one-line summary after each epoch.

    Returns:
        The content of ``metrics.json``.

    Raises:
        InputError: bad settings, no labels, no readable image, an existing checkpoint
            without ``resume`` (or a missing or mismatching one with it), an unwritable ``out``.

    Images that cannot be read are left out before the split and listed in the ``failures``
    of the returned metrics (one line each, naming the file).
    """
    settings = settings or FinetuneSettings()
    settings.check()
    out = Path(out)
    checkpoint_path = out / CHECKPOINT
    check_checkpoint(checkpoint_path, resume)
    make_out_dir(out)

    source = dataset_source(dataset)
    samples, failures = _readable(list(dataset)[: settings.limit], source)
    class_names, targets = image_labels(dataset, samples, source)
    train_idx, val_idx = split_train_val(len(samples), settings.val_fraction, settings.seed)
    model, head_name = with_adaptation_head(
        classifier, class_names, settings.hidden, settings.dropout, settings.seed
    )
    model.multi_label = settings.output == "sigmoid"
    trainable = _trainable_prefixes(model.module, head_name, settings)
    optimizer = _optimizer(model.module, head_name, trainable, settings)
    images = _ImageSource(model, samples)
    state = {
        "format": _FORMAT,
        "base_model": classifier.name,
        "settings": settings.resume_key(),
        "class_names": list(class_names),
        "train_ids": [samples[i].image_id for i in train_idx],
        "val_ids": [samples[i].image_id for i in val_idx],
        "failures": failures,
    }

    if resume:
        saved = _load_checkpoint(checkpoint_path, state)
        model.module.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        start, history = int(saved["epoch"]), list(saved["history"])
        before = saved["val_map_before"]
    else:
        start, history = 0, []
        before = _validate(model, images, val_idx, targets)[0]

    factors = repeat_factors(
        [samples[i].labels for i in train_idx], len(class_names),
        settings.balance, settings.max_repeat,
    )
    augment = Augment(settings.rotation, settings.flip, settings.noise)
    for epoch in range(start, settings.epochs):
        began = time.perf_counter()
        loss = _train_epoch(
            model, images, train_idx, targets, factors, augment, optimizer, head_name,
            trainable, settings, epoch, quiet,
        )
        val_map, per_class = _validate(model, images, val_idx, targets)
        history.append({
            "epoch": epoch + 1,
            "loss": loss,
            "val_map": val_map,
            "seconds": round(time.perf_counter() - began, 2),
        })
        write_torch_atomic(checkpoint_path, {
            **state,
            "epoch": epoch + 1,
            "model": model.module.state_dict(),
            "optimizer": optimizer.state_dict(),
            "history": history,
            "val_map_before": before,
        })
        save_classifier(model, out / MODEL)
        metrics = _metrics(dataset, classifier, settings, state, before, history,
                           (val_map, per_class), targets[val_idx], start)
        write_json_atomic(out / METRICS, metrics)
        if log is not None:
            log(f"epoch {epoch + 1}/{settings.epochs}: loss {loss:.4f}, val mAP "
                f"{percent(val_map)} (before fine-tuning {percent(before)})")
    if start >= settings.epochs:  # nothing left to train: still write the outputs
        save_classifier(model, out / MODEL)
        metrics = _metrics(dataset, classifier, settings, state, before, history,
                           _validate(model, images, val_idx, targets), targets[val_idx], start)
        write_json_atomic(out / METRICS, metrics)
    return metrics


def _readable(samples: list[Sample], source: str) -> tuple[list[Sample], list[str]]:
    """The samples whose image decodes, and a one-line message for each one that does not."""
    kept, failures = [], []
    for sample in samples:
        try:
            load_image(sample.path)
        except ImageError as error:
            failures.append(str(error))
        else:
            kept.append(sample)
    if samples and not kept:
        raise InputError(f"{source}: none of the {len(samples)} images can be read "
                         f"(first: {failures[0]})")
    return kept, failures


def _load_checkpoint(path: Path, expected: dict[str, Any]) -> dict[str, Any]:
    saved = read_torch_file(path, "checkpoint (resume=True)", InputError)
    if not isinstance(saved, dict) or saved.get("format") != _FORMAT:
        raise InputError(f"resume=True: {path} is not a wsolkit finetune checkpoint")
    if saved["base_model"] != expected["base_model"]:
        raise InputError(f"resume=True: {path} fine-tunes {saved['base_model']!r}, "
                         f"not {expected['base_model']!r}")
    check_resumed_settings(path, saved["settings"], expected["settings"],
                           FinetuneSettings().resume_key())
    for key in ("class_names", "train_ids", "val_ids"):
        if saved[key] != expected[key]:
            raise InputError(f"resume=True: the dataset's {key.replace('_', ' ')} differ from "
                             f"those of {path}")
    return saved


def _metrics(
    dataset: Sequence[Sample], base: Classifier, settings: FinetuneSettings,
    state: dict[str, Any], before: float | None, history: list[dict[str, Any]],
    validation: tuple[float | None, list], val_targets: np.ndarray, resumed_from: int,
) -> dict[str, Any]:
    after, per_class = validation
    evaluated = [c for c, ap in enumerate(per_class) if ap is not None]
    # Expected AP of a random ranking is about the fraction of positives: the chance level.
    chance = (float(np.mean([val_targets[:, c].mean() for c in evaluated]))
              if evaluated else None)
    return {
        "dataset": dataset_source(dataset),
        "base_model": base.name,
        "classes": len(state["class_names"]),
        "train_images": len(state["train_ids"]),
        "val_images": len(state["val_ids"]),
        "val_classes_evaluated": len(evaluated),
        "val_map_before": before,
        "val_map_after": after,
        "val_map_chance": chance,
        "val_ap_per_class": {state["class_names"][c]: per_class[c] for c in evaluated},
        "epochs": history,
        "train_seconds": round(sum(h["seconds"] for h in history), 2),
        "resumed_from_epoch": resumed_from or None,
        "model_file": MODEL,
        "settings": {**asdict(settings), "train_layers": list(settings.train_layers)},
        "train_ids": state["train_ids"],
        "val_ids": state["val_ids"],
        "failures": state["failures"],
    }
