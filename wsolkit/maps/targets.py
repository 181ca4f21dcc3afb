"""Which class score a heatmap explains: class indices, top-k, ground truth, or a callable."""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from wsolkit.errors import TargetError

ScoreFn = Callable[[torch.Tensor], torch.Tensor]

_TOPK = re.compile(r"top(\d+)$")


@dataclass(frozen=True)
class Targets:
    """Resolved targets: one (image, class) pair per output map.

    Attributes:
        classes: (M,) class index per map, -1 when a callable gives the score.
        image_index: (M,) index of the input image each map belongs to.
        score_fn: the user's callable, or None for class targets.
    """

    classes: torch.Tensor
    image_index: torch.Tensor
    score_fn: ScoreFn | None = None

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Target score per row of ``logits`` (the class logit, or the callable's output)."""
        if self.score_fn is None:
            return logits.gather(1, self.classes.to(logits.device)[:, None]).squeeze(1)
        scores = self.score_fn(logits)
        if not isinstance(scores, torch.Tensor) or scores.shape != (logits.shape[0],):
            shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores)
            raise TargetError(
                f"target callable must return one score per image, shape ({logits.shape[0]},), "
                f"got {shape}"
            )
        return scores


TargetSpec = int | str | Sequence[int] | torch.Tensor | ScoreFn | Targets


def resolve_targets(
    target: TargetSpec, logits: torch.Tensor, labels: Sequence[int] | torch.Tensor | None = None
) -> Targets:
    """Turn a target specification into per-map class indices.

    Args:
        target: ``"top1"``, ``"topK"`` (K maps per image, best class first), ``"gt"`` (uses
            ``labels``), a class index for every image, one index per image, or a callable
            mapping (N, classes) logits to (N,) scores, or a :class:`Targets` of (image, class)
            rows (e.g. every class of every image), checked and used as given.
        logits: (N, classes) logits of the images.
        labels: ground-truth class per image, for ``target="gt"``.

    Raises:
        TargetError: invalid specification or class index out of range.
    """
    count, num_classes = logits.shape
    images = torch.arange(count)
    if isinstance(target, Targets):
        return _check_rows(target, count, num_classes)
    if callable(target) and not isinstance(target, torch.Tensor):
        return Targets(torch.full((count,), -1, dtype=torch.long), images, target)
    if isinstance(target, str):
        if target == "gt":
            if labels is None:
                raise TargetError("target 'gt' needs labels=... (one class index per image)")
            return _explicit(labels, count, num_classes, "labels")
        match = _TOPK.match(target)
        if not match or int(match.group(1)) < 1:
            raise TargetError(
                f"unknown target {target!r}: use top1, topK, gt, a class index or a callable"
            )
        k = int(match.group(1))
        if k > num_classes:
            raise TargetError(f"target {target!r} asks for more classes than the {num_classes}")
        classes = logits.detach().topk(k, dim=1).indices.cpu()
        return Targets(classes.reshape(-1), images.repeat_interleave(k))
    single = isinstance(target, numbers.Integral) or (
        isinstance(target, torch.Tensor) and target.ndim == 0
    )
    if single and not isinstance(target, bool):  # one class for every image (also numpy ints)
        return _explicit([target] * count, count, num_classes, "target")
    return _explicit(target, count, num_classes, "target")


def _check_rows(targets: Targets, count: int, num_classes: int) -> Targets:
    classes = torch.as_tensor(targets.classes).reshape(-1)
    index = torch.as_tensor(targets.image_index).reshape(-1)
    if (classes.is_floating_point() or index.is_floating_point() or len(classes) != len(index)
            or len(index) == 0):
        raise TargetError("Targets need as many integer classes as image indices (at least one)")
    if int(index.min()) < 0 or int(index.max()) >= count:
        raise TargetError(f"Targets image index {int(index.max())} out of range for {count} images")
    if targets.score_fn is None and (int(classes.min()) < 0 or int(classes.max()) >= num_classes):
        raise TargetError(f"Targets class index out of range: the model has {num_classes} classes")
    return Targets(classes.long().cpu(), index.long().cpu(), targets.score_fn)


def _explicit(
    values: Sequence[int] | torch.Tensor, count: int, num_classes: int, what: str
) -> Targets:
    try:
        classes = torch.as_tensor(values).reshape(-1)
    except (TypeError, ValueError) as error:
        raise TargetError(f"{what} must be class indices, got {type(values).__name__}") from error
    if classes.is_floating_point() or classes.dtype == torch.bool:
        raise TargetError(f"{what} must be integer class indices, got {classes.dtype}")
    if classes.numel() != count:
        raise TargetError(f"{what} gives {classes.numel()} classes for {count} images")
    bad = classes[(classes < 0) | (classes >= num_classes)]
    if bad.numel():
        raise TargetError(
            f"{what} class index {int(bad[0])} out of range: the model has {num_classes} classes"
        )
    return Targets(classes.long().cpu(), torch.arange(count))
