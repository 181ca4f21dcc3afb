"""`ForwardPass`: one hooked forward pass of a batch, and the gradients methods read from it.

Rows that share an input image (expanded targets) are views of one forward pass of the distinct
images (:class:`DistinctPass`); their gradients come from one batched backward pass
(:func:`row_gradients`), or from the closed form of a pooled linear head
(:func:`linear_head_gradients`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from PIL import Image

from wsolkit.maps.targets import Targets

# Elements of one chunk of batched gradients (rows x distinct images x K x h x w): bounds the
# memory of expanded targets (256 MB of float32).
GRADIENT_CHUNK_ELEMENTS = 1 << 26


@dataclass
class DistinctPass:
    """The one forward pass of the distinct input images behind an expanded :class:`ForwardPass`.

    Attributes:
        activations: (U, K, h, w) hooked output per distinct image (the autograd leaf when the
            method needs gradients).
        logits: (U, classes) logits per distinct image (with the graph back to the leaf).
        image_index: (N,) distinct image of each row.
    """

    activations: torch.Tensor
    logits: torch.Tensor
    image_index: torch.Tensor


@dataclass
class ForwardPass:
    """One forward pass of a batch through the classifier, with the hooked layer's output.

    Attributes:
        images: (N, C, H, W) input batch, one image per row (target).
        layer: name of the hooked layer.
        activations: (N, K, h, w) output of the hooked layer.
        logits: (N, classes) model output.
        targets: the (image, class) pair each row explains.
        linear_head: the pooled linear head (global average pool + ``nn.Linear``) when the
            hooked layer feeds it: the gradient of a logit is then its weight row / (h*w) at
            every location, which :meth:`gradients` uses for many rows of one image after
            checking it against autograd (:func:`linear_head_gradients`).
        sources: the RGB PIL images the distinct input images were preprocessed from, when the
            caller gave them (index with ``targets.image_index``); methods that re-read image
            regions (``beam``) crop them instead of the input tensor.
        distinct: set when rows share input images (expanded targets such as top-k or every
            class of an image): the single forward pass of the distinct images the rows are
            views of. Then ``images``, ``activations`` and ``logits`` are gathered from it
            (zero-copy views when all rows share one image) and :meth:`gradients` and
            :meth:`weighted_sum` work on the distinct images.
    """

    images: torch.Tensor
    layer: str
    activations: torch.Tensor
    logits: torch.Tensor
    targets: Targets
    distinct: DistinctPass | None = None
    linear_head: torch.nn.Linear | None = None
    sources: tuple[Image.Image, ...] | None = None

    def scores(self) -> torch.Tensor:
        """(N,) target scores; carries the autograd graph back to the hooked layer if any."""
        return self.targets.scores(self.logits)

    def gradients(self) -> torch.Tensor:
        """(N, K, h, w) gradient of each row's target score w.r.t. the hooked activations."""
        leaf = self.activations if self.distinct is None else self.distinct.activations
        if not leaf.requires_grad:
            raise RuntimeError("this method must set needs_gradients = True")
        # The score is computed here, after the forward pass: record its graph even when the
        # caller runs the method under torch.no_grad().
        with torch.enable_grad():
            if self.distinct is None:  # one image per row: one backward of the summed scores
                (grads,) = torch.autograd.grad(self.scores().sum(), self.activations)
                return grads
            index = self.distinct.image_index.to(leaf.device)
            logits = self.distinct.logits
            if self.targets.score_fn is None:
                # every (image, class) logit as one flat vector: a row's output gradient is
                # one-hot at its position, and the backward stays (U, classes) wide
                classes = self.targets.classes.to(logits.device)
                if self.linear_head is not None:
                    found = linear_head_gradients(self.linear_head, logits, leaf, classes)
                    if found is not None:
                        return found
                positions = index.to(logits.device) * logits.shape[1] + classes
                return row_gradients(logits.reshape(-1), leaf, index, positions)
            scores = self.targets.scores(gather_rows(logits, index.to(logits.device)))
            return row_gradients(scores, leaf, index)

    def gradient_means(self) -> torch.Tensor:
        """(N, K) spatial mean of :meth:`gradients` (Grad-CAM's channel weights)."""
        grads = self.gradients()
        if grads.stride(2) == 0 and grads.stride(3) == 0:  # spatially constant: any location
            return grads[:, :, 0, 0]
        return grads.mean(dim=(2, 3))

    def weighted_sum(self, weights: torch.Tensor) -> torch.Tensor:
        """``sum_k weights[n, k] * activations[n, k]`` -> (N, h, w), activations detached.

        With shared images, one matrix product per distinct image (no (N, K, h, w) copy).
        """
        if self.distinct is None:
            return weighted_sum(weights, self.activations.detach())
        features = self.distinct.activations.detach()
        _, channels, height, width = features.shape
        index = self.distinct.image_index.to(features.device)
        out = weights.new_empty((len(index), height, width))
        for image in torch.unique(index).tolist():
            rows = (index == image).nonzero().flatten()
            product = weights[rows].to(features) @ features[image].reshape(channels, -1)
            out[rows] = product.reshape(-1, height, width).to(out)
        return out


def weighted_sum(weights: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """``sum_k w[n, k] A[n, k]`` -> (N, h, w)."""
    return torch.einsum("nk,nkhw->nhw", weights, activations)


def linear_head_gradients(fc: torch.nn.Linear, logits: torch.Tensor, leaf: torch.Tensor,
                          classes: torch.Tensor) -> torch.Tensor | None:
    """Gradients of the ``classes`` logits w.r.t. the layer feeding a pooled linear head.

    When ``logits = fc(mean_hw(leaf))`` the gradient of logit ``c`` is ``fc.weight[c] / (h*w)``
    at every location of every image: the (N, K, h, w) result is an expanded view of N weight
    rows (no memory, no backward per class). That the network is such a head is checked, not
    assumed: one backward pass of a random combination of every logit must match the same
    combination of the weight rows (a different Jacobian passes with probability 0), else
    None (the caller takes the batched backward passes).

    Args:
        fc: the head's linear layer.
        logits: (U, classes) logits of the distinct images, with the graph back to ``leaf``.
        leaf: (U, K, h, w) hooked activations.
        classes: (N,) class of each row.
    """
    _, channels, height, width = leaf.shape
    if fc.in_features != channels or fc.out_features != logits.shape[1]:
        return None
    weights = fc.weight.detach().to(leaf) / (height * width)
    mix = torch.randn(logits.shape, generator=torch.Generator().manual_seed(0))
    mix = mix.to(logits)
    (actual,) = torch.autograd.grad(logits, leaf, grad_outputs=mix, retain_graph=True)
    expected = (mix.to(weights) @ weights)[:, :, None, None]
    scale = float(expected.abs().max())
    if not torch.allclose(actual, expected.expand_as(actual), rtol=1e-3, atol=1e-4 * scale):
        return None
    rows = weights[classes.to(weights.device)]
    return rows[:, :, None, None].expand(len(classes), channels, height, width)


def gather_rows(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[index]``; a zero-copy view when every row is the same one."""
    if len(values) == 1:
        return values.expand(len(index), *values.shape[1:])
    return values[index]


def row_gradients(scores: torch.Tensor, leaf: torch.Tensor, index: torch.Tensor,
                  positions: torch.Tensor | None = None) -> torch.Tensor:
    """Gradient of each row's score w.r.t. ``leaf[index[n]]``, from one shared forward pass.

    Batched backward passes (``is_grads_batched``: one one-hot output gradient per row,
    chunked to bound memory); when vmap cannot batch an operation of the network, one
    backward per row.

    Args:
        scores: (S,) scores with the graph back to ``leaf``.
        leaf: (U, K, h, w) hooked activations of the distinct images.
        index: (N,) distinct image of each row.
        positions: (N,) the score of each row (default: row ``n`` is ``scores[n]``).

    Returns:
        (N, K, h, w) gradients.
    """
    count = len(index)
    positions = torch.arange(count) if positions is None else positions
    chunk = max(1, GRADIENT_CHUNK_ELEMENTS // max(1, leaf.numel()))
    if count <= chunk and len(leaf) == 1:  # one batched backward gives the answer as a view
        try:
            return _batched_gradients(scores, leaf, positions)[:, 0]
        except (RuntimeError, NotImplementedError):
            pass
    out = torch.empty((count, *leaf.shape[1:]), dtype=leaf.dtype, device=leaf.device)
    for start in range(0, count, chunk):
        stop = min(start + chunk, count)
        try:
            grads = _batched_gradients(scores, leaf, positions[start:stop])
        except (RuntimeError, NotImplementedError):  # vmap has no batching rule for an op
            for row in range(start, stop):
                (grads,) = torch.autograd.grad(scores[int(positions[row])], leaf,
                                               retain_graph=True)
                out[row] = grads[index[row]]
            continue
        if len(leaf) == 1:  # one image: a view, no gather
            out[start:stop] = grads[:, 0]
        else:
            out[start:stop] = grads[torch.arange(stop - start), index[start:stop]]
    return out


def _batched_gradients(scores: torch.Tensor, leaf: torch.Tensor,
                       positions: torch.Tensor) -> torch.Tensor:
    """(len(positions), U, K, h, w): one batched backward, one-hot at each position."""
    one_hot = torch.zeros((len(positions), len(scores)), dtype=scores.dtype,
                          device=scores.device)
    one_hot[torch.arange(len(positions)), positions.to(scores.device)] = 1
    with warnings.catch_warnings():  # vmap's "performance drop" notes for unbatched ops
        warnings.simplefilter("ignore", UserWarning)
        (grads,) = torch.autograd.grad(scores, leaf, grad_outputs=one_hot, retain_graph=True,
                                       is_grads_batched=True)
    return grads
