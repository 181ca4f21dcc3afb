"""WILDCAT and ex-CAM heads: multi-map class heads with top-k/bottom-k spatial pooling.

WILDCAT (Durand et al., CVPR 2017): a 1x1 convolution turns the backbone's last feature map into
``M`` maps per class (``M * C`` channels, class-major: channel ``c * M + m``); *class-wise
pooling* averages each class's ``M`` maps into one class map; *spatial pooling* scores a class
map by the mean of its ``k+`` highest values plus ``alpha`` times the mean of its ``k-`` lowest
(a ``k < 1`` means ``round(k * h * w)`` positions, at least one).

The official code divides that sum by 2 (``(top + alpha * bottom) / 2``); the ex-CAM thesis
(Sec. 3.3) writes it without. wsolkit uses the thesis form (``halve=False``) by default: the
ex-CAM paper is the one implemented here, and a constant factor only rescales the logits, which
the 1x1 convolution absorbs; ``halve=True`` gives the official form.

ex-CAM (thesis Sec. 3.3, 4.2): during training only, each class's ``M`` maps go through an
*intra-class sequential dropout* before class-wise pooling, with masks
``M_j = [sigmoid(F_j) > delta]`` used as constants (no gradient through them):

- ``intent`` (default): ``F_1`` unchanged, ``F_j := (1 - M_1) ... (1 - M_{j-1}) F_j``: each map
  sees only what the previous maps of its class did not find important, so the class's maps
  spread over the object (the thesis's words: "drop the important part of the previous maps").
- ``literal``: the thesis's formulas as printed, ``F_1 := (1 - M_1) F_1`` and
  ``F_j := M_1 ... M_j F_j`` (which keep, not drop, the previous maps' important parts).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from wsolkit.errors import InputError, LayerError, ModelError
from wsolkit.models.layers import get_layer
from wsolkit.models.loading import read_torch_file

__all__ = [
    "DROPOUTS",
    "ClassWisePool",
    "HeadModel",
    "SequentialDropout",
    "WildcatHead",
    "WildcatPool",
    "build_head",
    "check_head_fits",
    "head_record",
    "read_head",
    "sequential_dropout",
    "wildcat_pool",
]

DROPOUTS = ("intent", "literal")


def _count(k: float, positions: int) -> int:
    """Positions pooled for ``k``: ``round(k * positions)`` if ``k < 1`` (at least 1), else k."""
    if k <= 0:
        return 0
    if k < 1:
        return max(1, min(positions, round(k * positions)))
    return min(positions, int(k))


def wildcat_pool(
    maps: torch.Tensor, kmax: float = 0.2, kmin: float | None = None, alpha: float = 0.6,
    halve: bool = False,
) -> torch.Tensor:
    """WILDCAT spatial pooling of (N, C, h, w) maps into (N, C) scores.

    Args:
        maps: the class maps.
        kmax: highest positions averaged (a fraction of ``h * w`` if below 1).
        kmin: lowest positions averaged (default: ``kmax``); 0 turns the bottom term off.
        alpha: weight of the bottom mean.
        halve: divide the sum by 2 as WILDCAT's official code does (the thesis does not).
    """
    kmin = kmax if kmin is None else kmin
    flat = maps.flatten(2)
    positions = flat.shape[-1]
    n_max, n_min = _count(kmax, positions), _count(kmin, positions)
    score = flat.topk(n_max, dim=-1).values.mean(-1)
    if n_min > 0 and alpha != 0:
        score = score + alpha * flat.topk(n_min, dim=-1, largest=False).values.mean(-1)
        if halve:
            score = score / 2
    return score


def sequential_dropout(maps: torch.Tensor, delta: float = 0.5,
                       mode: str = "intent") -> torch.Tensor:
    """ex-CAM intra-class sequential dropout of (N, C, M, h, w) maps (see the module doc)."""
    if mode not in DROPOUTS:
        raise InputError(f"dropout={mode!r}: use one of {', '.join(DROPOUTS)}")
    # The masks are constants: thresholding has no gradient, and the thesis treats them so.
    masks = (torch.sigmoid(maps.detach()) > delta).to(maps.dtype)
    if mode == "intent":
        # keep_j = prod_{i<j} (1 - M_i); keep_1 = 1.
        dropped = torch.cumprod(1 - masks, dim=2)
        keep = torch.cat([torch.ones_like(masks[:, :, :1]), dropped[:, :, :-1]], dim=2)
    else:
        # keep_1 = 1 - M_1; keep_j = M_1 ... M_j for j >= 2.
        keep = torch.cumprod(masks, dim=2)
        keep = torch.cat([1 - masks[:, :, :1], keep[:, :, 1:]], dim=2)
    return maps * keep


class SequentialDropout(nn.Module):
    """ex-CAM's dropout as a module: active in training mode only, identity in eval mode."""

    def __init__(self, delta: float = 0.5, mode: str = "intent") -> None:
        super().__init__()
        if mode not in DROPOUTS:
            raise InputError(f"dropout={mode!r}: use one of {', '.join(DROPOUTS)}")
        if not 0 < delta < 1:
            raise InputError(f"delta={delta!r}: must be in (0, 1)")
        self.delta, self.mode = delta, mode

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """Apply the dropout to (N, C, M, h, w) maps in training mode."""
        return sequential_dropout(maps, self.delta, self.mode) if self.training else maps

    def extra_repr(self) -> str:
        """Settings shown by ``repr``."""
        return f"delta={self.delta}, mode={self.mode!r}"


class ClassWisePool(nn.Module):
    """Mean of each class's ``M`` maps: (N, C, M, h, w) -> (N, C, h, w), the class maps.

    Its output is what the ``wildcat`` and ``excam`` heatmap methods hook.
    """

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """Average over the map axis."""
        return maps.mean(2)


class WildcatPool(nn.Module):
    """:func:`wildcat_pool` as a module."""

    def __init__(self, kmax: float = 0.2, kmin: float | None = None, alpha: float = 0.6,
                 halve: bool = False) -> None:
        super().__init__()
        self.kmax, self.kmin, self.alpha, self.halve = kmax, kmin, alpha, halve

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """Pool (N, C, h, w) class maps into (N, C) scores."""
        return wildcat_pool(maps, self.kmax, self.kmin, self.alpha, self.halve)

    def extra_repr(self) -> str:
        """Settings shown by ``repr``."""
        return f"kmax={self.kmax}, kmin={self.kmin}, alpha={self.alpha}, halve={self.halve}"


class WildcatHead(nn.Module):
    """1x1 conv to ``M * C`` maps, optional ex-CAM dropout, class-wise and spatial pooling.

    Args:
        in_channels: channels of the backbone feature map.
        num_classes: classes ``C``.
        maps: maps per class ``M`` (8 in both papers).
        kmax, kmin, alpha, halve: spatial pooling (:func:`wildcat_pool`); the ex-CAM values
            ``k+ = k- = 0.2``, ``alpha = 0.6`` by default.
        dropout: ``None`` (WILDCAT), ``"intent"`` or ``"literal"`` (ex-CAM).
        delta: threshold of the dropout masks on ``sigmoid(F_j)``.

    Submodules: ``conv``, ``dropout`` (identity for WILDCAT), ``classwise`` (outputs the class
    maps), ``spatial``. ``forward`` maps (N, K, h, w) features to (N, C) scores.
    """

    def __init__(
        self, in_channels: int, num_classes: int, maps: int = 8, kmax: float = 0.2,
        kmin: float | None = None, alpha: float = 0.6, halve: bool = False,
        dropout: str | None = None, delta: float = 0.5,
    ) -> None:
        super().__init__()
        if maps < 1 or num_classes < 1 or in_channels < 1:
            raise InputError(f"maps={maps}, num_classes={num_classes}, in_channels="
                             f"{in_channels}: each must be at least 1")
        if kmax <= 0:
            raise InputError(f"kmax={kmax}: must be > 0")
        self.num_classes, self.maps = num_classes, maps
        self.conv = nn.Conv2d(in_channels, num_classes * maps, kernel_size=1)
        self.dropout = nn.Identity() if dropout is None else SequentialDropout(delta, dropout)
        self.classwise = ClassWisePool()
        self.spatial = WildcatPool(kmax, kmin, alpha, halve)

    def class_maps(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) class maps of (N, K, h, w) features (dropout in training mode)."""
        maps = self.conv(features)
        n, _, h, w = maps.shape
        maps = self.dropout(maps.view(n, self.num_classes, self.maps, h, w))
        return self.classwise(maps)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C) scores (logits for a sigmoid) of (N, K, h, w) features."""
        return self.spatial(self.class_maps(features))

    @torch.no_grad()
    def init_from_linear(self, linear: nn.Linear, noise: float = 0.01, seed: int = 0) -> None:
        """Copy each class's row of ``linear`` to its ``M`` maps, plus seeded Gaussian noise.

        With ``noise=0`` the mean of a class map over positions equals the linear layer's logit
        of the globally average-pooled features, so the head starts at the classifier's ranking.
        ``noise`` is relative to the standard deviation of ``linear``'s weights; it breaks the
        symmetry of the ``M`` maps so that they can specialize.
        """
        if linear.out_features != self.num_classes or linear.in_features != self.conv.in_channels:
            raise InputError(
                f"linear layer {linear.in_features}->{linear.out_features} does not fit a head "
                f"{self.conv.in_channels}->{self.num_classes}"
            )
        weight = linear.weight.detach().float().repeat_interleave(self.maps, dim=0)
        generator = torch.Generator().manual_seed(seed)
        scale = noise * float(linear.weight.float().std())
        weight = weight + scale * torch.randn(weight.shape, generator=generator)
        self.conv.weight.copy_(weight[:, :, None, None].to(self.conv.weight))
        bias = (linear.bias.detach().float() if linear.bias is not None
                else torch.zeros(self.num_classes))
        self.conv.bias.copy_(bias.repeat_interleave(self.maps).to(self.conv.bias))


class HeadModel(nn.Module):
    """A backbone's feature layer followed by a :class:`WildcatHead`: images -> (N, C) scores.

    The features are the output of ``layer`` of ``backbone``. When ``layer`` is the last child
    of an ``nn.Sequential`` (the embedded model's ``features.head``) that stack runs alone;
    otherwise the whole backbone runs with a hook on ``layer`` that lives for one forward pass.
    The class maps are the output of ``head.classwise``.
    """

    def __init__(self, backbone: nn.Module, layer: str, head: WildcatHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.layer = layer
        self.head = head
        get_layer(backbone, layer)  # raises LayerError naming a typo
        parent, _, last = layer.rpartition(".")
        stack = get_layer(backbone, parent) if parent else None
        self._stack = parent if (isinstance(stack, nn.Sequential) and len(stack)
                                 and list(stack._modules)[-1] == last) else None

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, K, h, w) backbone features at ``layer``."""
        if self._stack is not None:
            return get_layer(self.backbone, self._stack)(images)
        found: list[torch.Tensor] = []
        handle = get_layer(self.backbone, self.layer).register_forward_hook(
            lambda _m, _i, output: found.append(output))
        try:
            self.backbone(images)
        finally:
            handle.remove()
        if len(found) != 1 or not isinstance(found[0], torch.Tensor) or found[0].ndim != 4:
            raise LayerError(f"layer {self.layer!r} must run once and output (N, K, h, w)")
        return found[0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C) head scores of an image batch."""
        return self.head(self.features(images))


# ---- head files -------------------------------------------------------------------------------

HEAD_FORMAT = "wsolkit-head-1"
_ARCH_KEYS = ("maps", "kmax", "kmin", "alpha", "halve", "dropout", "delta")


def head_record(head: WildcatHead, kind: str, backbone: str, layer: str,
                class_names: list[str], extra: dict | None = None) -> dict:
    """What a head file holds: the head's weights (fp16) and everything needed to rebuild it."""
    spatial, dropout = head.spatial, head.dropout
    arch = {
        "maps": head.maps, "kmax": spatial.kmax, "kmin": spatial.kmin, "alpha": spatial.alpha,
        "halve": spatial.halve,
        "dropout": dropout.mode if isinstance(dropout, SequentialDropout) else None,
        "delta": dropout.delta if isinstance(dropout, SequentialDropout) else 0.5,
    }
    # fp16 halves the file (1280 x 8000 weights: 20.5 MB); the maps are computed in float32.
    state = {k: v.detach().half().cpu() for k, v in head.state_dict().items()}
    return {"format": HEAD_FORMAT, "kind": kind, "backbone": backbone, "layer": layer,
            "in_channels": head.conv.in_channels, "class_names": list(class_names),
            **arch, "state_dict": state, **(extra or {})}


def read_head(path: str | Path) -> dict:
    """Read a head file written by ``wsolkit train-head``.

    Raises:
        ModelError: missing file, unreadable file or not a head file.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: head file not found")
    record = read_torch_file(path, "head file")
    if not isinstance(record, dict) or record.get("format") != HEAD_FORMAT:
        raise ModelError(f"{path}: not a wsolkit head file (made by 'wsolkit train-head')")
    return record


def build_head(record: dict, training_dropout: bool = True) -> WildcatHead:
    """The float32 :class:`WildcatHead` of a head record (see :func:`head_record`)."""
    head = WildcatHead(
        record["in_channels"], len(record["class_names"]), record["maps"], record["kmax"],
        record["kmin"], record["alpha"], record["halve"],
        record["dropout"] if training_dropout else None, record["delta"],
    )
    head.load_state_dict({k: v.float() for k, v in record["state_dict"].items()})
    return head.eval()


def check_head_fits(record: dict, path: str | Path, backbone: str, channels: int,
                    num_classes: int | None) -> None:
    """Raise :class:`ModelError` if a head record was made for another backbone or classes."""
    if record["backbone"] != backbone or record["in_channels"] != channels:
        raise ModelError(
            f"{path}: head trained on {record['backbone']!r} ({record['in_channels']} channels "
            f"at {record['layer']!r}), not on {backbone!r} ({channels} channels)"
        )
    heads_classes = len(record["class_names"])
    if num_classes is not None and heads_classes != num_classes:
        raise ModelError(f"{path}: head has {heads_classes} classes, the model {num_classes}; "
                         "train a head for this model's classes with 'wsolkit train-head'")
