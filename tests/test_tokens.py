"""Transformers: token and channels-last outputs reshaped to maps, on tiny seeded models.

The tiny ViT carries the attributes by which timm's and torchvision's ViTs are recognized
(``num_prefix_tokens`` / ``cls_token`` for timm, ``class_token`` for torchvision); the real
classes cannot be built here (timm and torchvision do not import with this torch build).
References run the tiny models' modules by hand: tokens up to the hooked block, the patch
tokens as a leaf map, the rest of the network from it, and autograd for the gradients.
"""

from __future__ import annotations

import pytest
import torch
from conftest import NUM_CLASSES
from test_maps import REFERENCES, assert_no_hooks, assert_state_equal, close, state_copy
from torch import nn

from wsolkit.errors import InputError, LayerError
from wsolkit.maps import METHODS
from wsolkit.maps.tokens import Reshape, resolve_reshape
from wsolkit.models import detect_cam_head

WIDTH = 8
PATCH = 4


class Block(nn.Module):
    """Pre-norm transformer block: self-attention and a GELU MLP, both residual."""

    def __init__(self) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(WIDTH)
        self.attn = nn.MultiheadAttention(WIDTH, 2, batch_first=True)
        self.norm2 = nn.LayerNorm(WIDTH)
        self.mlp = nn.Sequential(nn.Linear(WIDTH, 16), nn.GELU(), nn.Linear(16, WIDTH))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        normed = self.norm1(tokens)
        tokens = tokens + self.attn(normed, normed, normed, need_weights=False)[0]
        return tokens + self.mlp(self.norm2(tokens))


class TinyViT(nn.Module):
    """4x4 patches -> [class, registers..., patches] tokens -> 2 blocks -> norm -> head.

    ``style="timm"``: ``cls_token``, ``reg_token`` and ``num_prefix_tokens`` (as timm's
    VisionTransformer); ``"torchvision"``: ``class_token`` only; ``"bare"``: no attribute
    says how many prefix tokens there are. ``pool="token"`` classifies the class token (as
    both libraries' ViTs), ``"avg"`` the mean of the patch tokens.
    """

    def __init__(self, style: str = "timm", pool: str = "token", registers: int = 0) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, WIDTH, PATCH, stride=PATCH)
        prefix = torch.randn(1, 1 + registers, WIDTH) * 0.5
        if style == "timm":
            self.cls_token = nn.Parameter(prefix[:, :1])
            self.reg_token = nn.Parameter(prefix[:, 1:])
            self.num_prefix_tokens = 1 + registers
        elif style == "torchvision":
            self.class_token = nn.Parameter(prefix)
        else:
            self.prefix_tokens = nn.Parameter(prefix)
        self.prefix = prefix.shape[1]
        self.blocks = nn.Sequential(Block(), Block())
        self.norm = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, NUM_CLASSES)
        self.pool = pool

    def prefix_part(self) -> torch.Tensor:
        for name in ("class_token", "prefix_tokens"):
            if hasattr(self, name):
                return getattr(self, name)
        return torch.cat([self.cls_token, self.reg_token], dim=1)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(images).flatten(2).transpose(1, 2)
        return torch.cat([self.prefix_part().expand(len(images), -1, -1), patches], dim=1)

    def finish(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = self.norm(tokens)
        pooled = tokens[:, 0] if self.pool == "token" else tokens[:, self.prefix:].mean(dim=1)
        return self.head(pooled)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.finish(self.blocks(self.tokens(images)))


class TinySwin(nn.Module):
    """Channels-last like Swin: patch embedding to (N, h, w, C), a per-position MLP, norm,
    mean over positions, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, WIDTH, PATCH, stride=PATCH)
        self.stage = nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.GELU())
        self.norm = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, NUM_CLASSES)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        grid = self.patch_embed(images).permute(0, 2, 3, 1)
        return self.head(self.norm(self.stage(grid)).mean(dim=(1, 2)))


def seeded_model(cls, **kwargs):
    torch.manual_seed(0)
    return cls(**kwargs).eval()


@pytest.fixture
def images() -> torch.Tensor:  # 16x24 input: a 4x6 grid of patches
    return torch.randn(2, 3, 16, 24, generator=torch.Generator().manual_seed(1))


def patch_map(tokens: torch.Tensor, prefix: int) -> torch.Tensor:
    """(N, L, C) tokens -> (N, C, 4, 6) map of the patch tokens, by index arithmetic."""
    count, _, width = tokens.shape
    out = torch.empty(count, width, 4, 6)
    for i in range(4):
        for j in range(6):
            out[:, :, i, j] = tokens[:, prefix + i * 6 + j]
    return out


def vit_features_and_grads(model: TinyViT, images, classes, block: int = 0):
    """Patch map after ``blocks[block]`` and the gradient of the class logits w.r.t. it."""
    with torch.no_grad():
        tokens = model.blocks[: block + 1](model.tokens(images))
    feats = patch_map(tokens, model.prefix)
    leaf = feats.clone().requires_grad_(True)
    rebuilt = torch.cat([tokens[:, :model.prefix], leaf.flatten(2).transpose(1, 2)], dim=1)
    logits = model.finish(model.blocks[block + 1:](rebuilt))
    (grads,) = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), leaf)
    return feats, grads


# ------------------------------------------------------------------------------ reshaping


@pytest.mark.parametrize("style, registers, prefix", [
    ("timm", 0, 1), ("timm", 4, 5), ("torchvision", 0, 1), ("bare", 0, 1), ("bare", 3, 4),
])
def test_token_prefix_and_grid_found(images, style, registers, prefix):
    model = seeded_model(TinyViT, style=style, registers=registers)
    with torch.no_grad():
        tokens = model.blocks[0](model.tokens(images))
    reshape = resolve_reshape(None, model, "blocks.0", tokens, (16, 24))
    assert reshape == Reshape("tokens", prefix, (4, 6))
    torch.testing.assert_close(reshape.to_map(tokens), patch_map(tokens, prefix))
    back = reshape.from_map(reshape.to_map(tokens), tokens)
    assert torch.equal(back, tokens)


def test_user_reshape_overrides_and_wrong_one_fails(images):
    model = seeded_model(TinyViT, style="bare", registers=3)
    with torch.no_grad():
        tokens = model.blocks[0](model.tokens(images))
    assert resolve_reshape("tokens:4", model, "blocks.0", tokens, (16, 24)).prefix == 4
    with pytest.raises(LayerError, match=r"'blocks\.0' outputs 28 tokens: after 2 prefix"):
        resolve_reshape("tokens:2", model, "blocks.0", tokens, (16, 24))
    with pytest.raises(InputError, match="reshape='tokens:x'"):
        METHODS["gradcam"](model, layer="blocks.0", reshape="tokens:x")
    with pytest.raises(LayerError, match=r"outputs \(2, 8, 4, 6\), not an \(N, L, C\) tokens"):
        resolve_reshape("tokens", model, "x", torch.zeros(2, 8, 4, 6), (16, 24))


@pytest.mark.parametrize("name", ["gradcam", "gradcampp", "xgradcam", "layercam"])
@pytest.mark.parametrize("style", ["timm", "torchvision"])
def test_gradient_methods_on_vit_tokens(images, name, style):
    model = seeded_model(TinyViT, style=style, registers=2 if style == "timm" else 0)
    before = state_copy(model)
    classes = torch.tensor([1, 3])
    result = METHODS[name](model, layer="blocks.0")(images, target=classes)
    feats, grads = vit_features_and_grads(model, images, classes)
    assert result.raw.shape == (2, 4, 6) and result.maps.shape == (2, 16, 24)
    close(result.raw, REFERENCES[name](feats, grads), rtol=1e-4)
    assert_no_hooks(model)
    assert_state_equal(model, before)
    assert all(p.grad is None for p in model.parameters())


def test_top2_and_smoothgradcampp_on_vit(images):
    model = seeded_model(TinyViT)
    result = METHODS["gradcam"](model, layer="blocks.0")(images, target="top2")
    feats, grads = vit_features_and_grads(model, images[result.image_index], result.classes)
    close(result.raw, REFERENCES["gradcam"](feats, grads), rtol=1e-4)
    smooth = METHODS["smoothgradcampp"](model, layer="blocks.0", samples=1, noise=0.0)
    plain = METHODS["gradcampp"](model, layer="blocks.0")
    torch.testing.assert_close(smooth(images).raw, plain(images).raw)


def test_bagcams_and_eigencam_on_vit(images):
    model = seeded_model(TinyViT)
    classes = torch.tensor([0, 2])
    logits = model(images).detach()
    assert (logits.gather(1, classes[:, None]) > 0).all()
    feats, grads = vit_features_and_grads(model, images, classes)
    grads = grads / logits.gather(1, classes[:, None])[:, :, None, None]  # d log s
    localizer = grads * feats  # no ReLU module in the ViT: nothing clamped
    expected = ((localizer + 1).mean(dim=(2, 3), keepdim=True) * localizer).clamp(min=0).sum(1)
    result = METHODS["bagcams"](model, layer="blocks.0")(images, target=classes)
    close(result.raw, expected, rtol=1e-4)
    eigen = METHODS["eigencam"](model, layer="blocks.0")(images)
    assert eigen.raw.shape == (2, 4, 6)


# ---------------------------------------------------------------------- token-pooling heads


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_cam_head_detected_on_token_pooling_head(images, pool):
    model = seeded_model(TinyViT, pool=pool)
    head = detect_cam_head(model, images[:1])
    assert (head.feature_layer, head.fc_layer) == ("norm", "head")
    result = METHODS["cam"](model)(images, target=torch.tensor([4, 0]))
    with torch.no_grad():
        normed = model.norm(model.blocks(model.tokens(images)))
    weights = model.head.weight.detach()[[4, 0]]
    expected = torch.einsum("nk,nkhw->nhw", weights, patch_map(normed, 1))
    close(result.raw, expected)
    if pool == "avg":  # the head is then exactly CAM: mean of the map + bias = the logit
        logits = model(images).detach()
        torch.testing.assert_close(expected.mean(dim=(1, 2)) + model.head.bias.detach()[[4, 0]],
                                   logits[[0, 1], [4, 0]])
    assert_no_hooks(model)


def test_swin_channels_last_maps(images):
    model = seeded_model(TinySwin)
    head = detect_cam_head(model, images[:1])
    assert (head.feature_layer, head.fc_layer) == ("norm", "head")
    classes = torch.tensor([2, 1])
    result = METHODS["cam"](model)(images, target=classes)
    with torch.no_grad():
        grid = model.norm(model.stage(model.patch_embed(images).permute(0, 2, 3, 1)))
    feats = grid.permute(0, 3, 1, 2)
    weights = model.head.weight.detach()[classes]
    close(result.raw, torch.einsum("nk,nkhw->nhw", weights, feats))
    # gradients through a channels-last layer
    with torch.no_grad():
        inner = model.stage(model.patch_embed(images).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    leaf = inner.clone().requires_grad_(True)
    logits = model.head(model.norm(leaf.permute(0, 2, 3, 1)).mean(dim=(1, 2)))
    (grads,) = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), leaf)
    layercam = METHODS["layercam"](model, layer="stage")(images, target=classes)
    close(layercam.raw, REFERENCES["layercam"](inner, grads), rtol=1e-4)
    assert_no_hooks(model)


def test_nhwc_set_by_user_on_other_models(images):
    class ChannelsLast(TinySwin):  # the name does not say Swin: automatic reads NCHW
        pass

    model = seeded_model(ChannelsLast)
    classes = torch.tensor([2, 1])
    with pytest.raises(LayerError, match="'norm' has 4 channels but 'head' takes 8"):
        METHODS["cam"](model, layer="norm", fc="head")(images, target=classes)
    result = METHODS["cam"](model, layer="norm", fc="head", reshape="nhwc")(images,
                                                                           target=classes)
    swin = seeded_model(TinySwin)
    expected = METHODS["cam"](swin)(images, target=classes)
    torch.testing.assert_close(result.raw, expected.raw)
