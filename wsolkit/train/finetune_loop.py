"""The training loop of :func:`wsolkit.train.finetune.finetune`.

Which parameters train, the optimizer and its step schedule, the loss (eq. 1 of Bency et al.),
the training images, one epoch, and validation.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch import nn

from wsolkit.data.images import load_image
from wsolkit.data.sample import Sample
from wsolkit.errors import InputError
from wsolkit.eval.classification import multilabel_map
from wsolkit.models.adaptation import head_parameter_names
from wsolkit.models.classifier import Classifier
from wsolkit.models.layers import get_layer
from wsolkit.train.augment import Augment
from wsolkit.train.sampling import class_balanced_epoch

if TYPE_CHECKING:
    from wsolkit.train.finetune import FinetuneSettings

# Decoded training images are kept in memory (at the model's input size) up to this many.
_CACHE_LIMIT = 5000

def _trainable_prefixes(
    module: nn.Module, head_name: str, settings: FinetuneSettings
) -> tuple[str, ...]:
    """Module-name prefixes of the trained parameters (the head always; backbone per lr)."""
    if settings.lr == 0:
        if settings.train_layers:
            raise InputError("train_layers needs a positive lr= (lr=0 freezes the backbone)")
        return (head_name,)
    if not settings.train_layers:
        return ("",)  # everything
    for name in settings.train_layers:
        get_layer(module, name)  # raises LayerError naming a typo
    return (head_name, *settings.train_layers)


def _is_trained(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(p == "" or name == p or name.startswith(f"{p}.") for p in prefixes)


def _optimizer(
    module: nn.Module, head_name: str, trainable: tuple[str, ...], settings: FinetuneSettings
) -> torch.optim.Optimizer:
    head = head_parameter_names(module, head_name)
    groups = [
        {"params": [p for n, p in module.named_parameters()
                    if n not in head and _is_trained(n, trainable)], "lr": settings.lr},
        {"params": [p for n, p in module.named_parameters() if n in head],
         "lr": settings.head_lr},
    ]
    groups = [g for g in groups if g["params"]]
    if settings.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=settings.head_lr, momentum=0.9,
                               weight_decay=settings.weight_decay)
    return torch.optim.AdamW(groups, lr=settings.head_lr, weight_decay=settings.weight_decay)


@contextlib.contextmanager
def _training_mode(
    module: nn.Module, head_name: str, trainable: tuple[str, ...]
) -> Iterator[None]:
    """Train mode and gradients for the trained modules only; restored on exit."""
    frozen = [p for n, p in module.named_parameters()
              if not _is_trained(n, trainable) and p.requires_grad]
    for param in frozen:
        param.requires_grad_(False)
    if "" in trainable:
        module.train()
    else:
        module.eval()
        for name in trainable:
            get_layer(module, name).train()
    try:
        yield
    finally:
        module.eval()
        for param in frozen:
            param.requires_grad_(True)


class _ImageSource:
    """Decoded images at the model's input size, kept in memory for small datasets."""

    def __init__(self, classifier: Classifier, samples: list[Sample]) -> None:
        self.classifier = classifier
        self.samples = samples
        self.cache: dict[int, Image.Image] | None = {} if len(samples) <= _CACHE_LIMIT else None
        self.fill = tuple(int(round(255 * m)) for m in classifier.mean)

    def image(self, index: int) -> Image.Image:
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        height, width = self.classifier.input_size
        image = load_image(self.samples[index].path)
        image = image.resize((width, height), Image.Resampling.BILINEAR)
        if self.cache is not None:
            self.cache[index] = image
        return image

    def batch(
        self, indices: Sequence[int], augment: Augment | None = None,
        rng: np.random.Generator | None = None,
    ) -> torch.Tensor:
        tensors = []
        for index in indices:
            image = self.image(int(index))
            if augment is not None:
                image = augment.image(image, rng, self.fill)
            tensor = self.classifier.preprocess(image)
            if augment is not None:
                tensor = augment.tensor(tensor, rng, self.classifier.std)
            tensors.append(tensor)
        return torch.stack(tensors).to(self.classifier.device)


def _train_epoch(
    model: Classifier, images: _ImageSource, train_idx: np.ndarray, targets: np.ndarray,
    factors: np.ndarray, augment: Augment, optimizer: torch.optim.Optimizer, head_name: str,
    trainable: tuple[str, ...], settings: FinetuneSettings, epoch: int, quiet: bool,
) -> float:
    from tqdm import tqdm

    rng = np.random.default_rng([settings.seed, epoch])
    torch_seed = int(np.random.SeedSequence([settings.seed, epoch, 1]).generate_state(1)[0])
    order = train_idx[class_balanced_epoch(factors, rng)]
    criterion = _criterion(settings.output)
    schedule = _StepSchedule(optimizer, settings.lr_step)
    total, seen = 0.0, 0
    bar = tqdm(total=len(order), unit="img", desc=f"epoch {epoch + 1}/{settings.epochs}",
               disable=quiet, file=sys.stderr, leave=False)
    device = model.device
    devices = [device.index or 0] if device.type == "cuda" else []
    with bar, torch.random.fork_rng(devices=devices), _training_mode(
        model.module, head_name, trainable
    ):
        torch.manual_seed(torch_seed)
        for start in range(0, len(order), settings.batch_size):
            batch = order[start:start + settings.batch_size]
            inputs = images.batch(batch, augment, rng)
            labels = torch.from_numpy(targets[batch].astype(np.float32)).to(inputs.device)
            loss = criterion(model.module(inputs), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(batch)
            seen += len(batch)
            bar.update(len(batch))
            bar.set_postfix(loss=f"{total / seen:.4f}")
    return total / max(seen, 1)


def _criterion(output: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Eq. 1, ``-1/K sum_k [p_k log q_k + (1 - p_k) log(1 - q_k)]``, mean over the batch."""
    if output == "sigmoid":
        return nn.BCEWithLogitsLoss()

    def softmax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        log_q = logits.log_softmax(dim=1)
        # log(1 - q) without cancellation: log(-expm1(log q)), q < 1 kept away from 1
        log_not_q = torch.log(-torch.expm1(log_q.clamp(max=-1e-7)))
        return -(labels * log_q + (1 - labels) * log_not_q).mean()

    return softmax_cross_entropy


class _StepSchedule:
    """Learning rates divided by 10 every ``step`` optimizer steps (0: constant).

    The count of finished steps and the starting rate live in the optimizer's parameter
    groups, so they are saved in the checkpoint and a resumed run continues the schedule.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        self.optimizer = optimizer
        self.size = step
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group.setdefault("batches", 0)

    def step(self) -> None:
        for group in self.optimizer.param_groups:
            group["batches"] += 1
            if self.size:
                group["lr"] = group["initial_lr"] * 0.1 ** (group["batches"] // self.size)


def _validate(
    model: Classifier, images: _ImageSource, val_idx: np.ndarray, targets: np.ndarray,
    batch_size: int = 16,
) -> tuple[float | None, list]:
    if len(val_idx) == 0:
        return None, []
    training = model.module.training
    model.module.eval()
    scores = []
    try:
        with torch.no_grad():
            for start in range(0, len(val_idx), batch_size):
                inputs = images.batch(val_idx[start:start + batch_size])
                scores.append(model.probabilities(model.module(inputs)).cpu().numpy())
    finally:
        model.module.train(training)
    return multilabel_map(np.concatenate(scores), targets[val_idx])
