"""Beam search with fully connected heads (the paper's AlexNet / VGG-16) and source-image crops.

References are computed by hand: the children's maps with ``F.interpolate`` of the cropped
features, the head's layers called directly, crops with PIL's ``resize(box=...)``.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TinyCNN, seeded
from PIL import Image
from torch import nn

from wsolkit.errors import InputError, LayerError
from wsolkit.maps.beam import BeamSearch, grid_children
from wsolkit.models.classifier import Classifier

GRID = 6  # AlexNet's L
CHANNELS = 5
CLASSES = 4
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


class TinyVGG(nn.Module):
    """torchvision's VGG layout in miniature: features -> avgpool -> flatten -> classifier.

    A 24 x 24 input gives a 6 x 6 x 5 map; the classifier is two fully connected layers on the
    flattened map (positionally sensitive, as F6/F7 of the paper's networks).
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(3, 6, 3, padding=1), relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(6, CHANNELS, 3, padding=1), relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
        ))
        self.avgpool = nn.AdaptiveAvgPool2d((GRID, GRID))
        self.classifier = nn.Sequential(
            nn.Linear(CHANNELS * GRID * GRID, 16), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(16, CLASSES),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(images)), 1))


@pytest.fixture
def vgg() -> Classifier:
    return Classifier(seeded(TinyVGG, seed=4), input_size=(24, 24), mean=MEAN, std=STD)


@pytest.fixture
def sources() -> list[Image.Image]:
    rng = np.random.default_rng(5)
    return [Image.fromarray(rng.integers(0, 256, (48, 72, 3), dtype=np.uint8)),
            Image.fromarray(rng.integers(0, 256, (60, 36, 3), dtype=np.uint8))]


def normalize(image: Image.Image) -> torch.Tensor:
    array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
    return (array - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def fc_child_scores(model: TinyVGG, crop: torch.Tensor, cls: int) -> dict:
    """Each root child of one (3, 24, 24) image: crop-resize the 6x6x5 map, flatten, F6-F8."""
    with torch.no_grad():
        feats = model.features(crop[None])
        scores = {}
        for x, y, w, h in grid_children((0, 0, GRID, GRID)):
            resized = F.interpolate(feats[:, :, y:y + h, x:x + w], size=(GRID, GRID),
                                    mode="bilinear", align_corners=False)
            logits = model.classifier(resized.reshape(1, -1))
            scores[(x, y, w, h)] = float(logits.softmax(1)[0, cls])
    return scores


def test_fc_head_is_found_and_scores_the_flattened_map(vgg, sources):
    images = torch.stack([normalize(s.resize((24, 24), Image.Resampling.BILINEAR))
                          for s in sources])
    method = BeamSearch(vgg, beam_width=4, levels=1)
    result = method(images, target=[2, 0])
    assert result.layer == "avgpool"  # no global-pool + linear head: the map before flatten
    level = method.last_trace[0]
    for n, cls in enumerate([2, 0]):
        expected = fc_child_scores(vgg.module, images[n], cls)
        mine = level.rows == n
        assert int(mine.sum()) == 4
        for region, score in zip(level.regions[mine], level.scores[mine], strict=True):
            x0, y0, x1, y1 = (region / 4).round().int().tolist()  # 24 px, 6 cells
            assert score == pytest.approx(expected[(x0, y0, x1 - x0, y1 - y0)], rel=1e-5)


def test_fc_head_greedy_search_crops_the_source_image(vgg, sources):
    images = torch.stack([normalize(s.resize((24, 24), Image.Resampling.BILINEAR))
                          for s in sources])
    method = BeamSearch(vgg, beam_width=1, levels=4)
    method(images, target=[1, 3], sources=sources)
    for n, cls in enumerate([1, 3]):
        source = sources[n]
        sx, sy = source.width / 24, source.height / 24
        region = [0.0, 0.0, 24.0, 24.0]
        crop = images[n]
        for level in method.last_trace:
            scores = fc_child_scores(vgg.module, crop, cls)
            (x, y, w, h), best = max(scores.items(), key=lambda item: item[1])
            rw, rh = region[2] - region[0], region[3] - region[1]
            region = [region[0] + x / GRID * rw, region[1] + y / GRID * rh,
                      region[0] + (x + w) / GRID * rw, region[1] + (y + h) / GRID * rh]
            mine = level.rows == n
            np.testing.assert_allclose(level.regions[mine][0].numpy(), region, rtol=1e-5)
            assert float(level.scores[mine][0]) == pytest.approx(best, rel=1e-4)
            box = (region[0] * sx, region[1] * sy, region[2] * sx, region[3] * sy)
            crop = normalize(source.resize((24, 24), Image.Resampling.BILINEAR, box=box))


def test_crop_from_tensor_ignores_the_sources_and_differs_from_image_crops(vgg, sources):
    images = torch.stack([normalize(s.resize((24, 24), Image.Resampling.BILINEAR))
                          for s in sources])
    tensor = BeamSearch(vgg, levels=3, crop_from="tensor")(images, target=[1, 2],
                                                           sources=sources)
    plain = BeamSearch(vgg, levels=3)(images, target=[1, 2])  # no sources: tensor crops
    torch.testing.assert_close(tensor.raw, plain.raw)
    image = BeamSearch(vgg, levels=3)(images, target=[1, 2], sources=sources)
    assert not torch.allclose(image.raw, tensor.raw)  # 48x72 / 60x36 pixels, not 24x24


def test_head_option_by_name_and_module(vgg, sources):
    images = torch.stack([normalize(s.resize((24, 24))) for s in sources])
    auto = BeamSearch(vgg, levels=2)(images, target=1)
    named = BeamSearch(vgg, levels=2, head="classifier")(images, target=1)
    module = BeamSearch(vgg, levels=2, head=vgg.module.classifier)(images, target=1)
    torch.testing.assert_close(named.raw, auto.raw)
    torch.testing.assert_close(module.raw, auto.raw)
    with pytest.raises(LayerError, match="does not feed the classifier head"):
        BeamSearch(vgg, levels=2, head="features.conv2")(images)
    with pytest.raises(LayerError, match="not found"):
        BeamSearch(vgg, levels=2, head="clasifier")(images)
    with pytest.raises(InputError, match="head must be"):
        BeamSearch(vgg, head=3)
    with pytest.raises(InputError, match="crop_from"):
        BeamSearch(vgg, crop_from="video")
    with pytest.raises(InputError, match="sources must be 2"):
        BeamSearch(vgg)(images, sources=sources[:1])


def test_pooled_head_with_source_crops_follows_pil_crops(sources):
    # a global-pool + linear head (TinyCNN: 16 px input, 8x8 grid), crops from the source image
    model = Classifier(seeded(TinyCNN, seed=3), input_size=(16, 16), mean=MEAN, std=STD)
    images = torch.stack([normalize(s.resize((16, 16), Image.Resampling.BILINEAR))
                          for s in sources])
    method = BeamSearch(model, beam_width=1, levels=3)
    method(images, target=[4, 2], sources=sources)
    module = model.module
    for n, cls in enumerate([4, 2]):
        source, region, crop = sources[n], [0.0, 0.0, 16.0, 16.0], images[n]
        for level in method.last_trace:
            with torch.no_grad():
                feats = module.features(crop[None])
            best, best_region = -1.0, None
            for x, y, w, h in grid_children((0, 0, 8, 8)):
                resized = F.interpolate(feats[:, :, y:y + h, x:x + w], size=(8, 8),
                                        mode="bilinear", align_corners=False)
                with torch.no_grad():
                    score = float(module.fc(resized.mean(dim=(2, 3))).softmax(1)[0, cls])
                if score > best:
                    rw, rh = region[2] - region[0], region[3] - region[1]
                    best, best_region = score, [region[0] + x / 8 * rw, region[1] + y / 8 * rh,
                                                region[0] + (x + w) / 8 * rw,
                                                region[1] + (y + h) / 8 * rh]
            region = best_region
            mine = level.rows == n
            np.testing.assert_allclose(level.regions[mine][0].numpy(), region, rtol=1e-5)
            assert float(level.scores[mine][0]) == pytest.approx(best, rel=1e-4)
            sx, sy = source.width / 16, source.height / 16
            crop = normalize(source.resize((16, 16), Image.Resampling.BILINEAR,
                                           box=(region[0] * sx, region[1] * sy,
                                                region[2] * sx, region[3] * sy)))


@pytest.mark.either_way
def test_torchvision_alexnet_layout(sources):
    """The paper's AlexNet from torchvision (random weights): beam finds avgpool + classifier.

    Without torchvision, ``load_model("torchvision:vgg16", weights=...)`` says how to get it.
    """
    try:
        import torchvision
    except ImportError:
        from wsolkit.errors import ModelError
        from wsolkit.models import load_model

        with pytest.raises(ModelError, match="pip install torchvision"):
            load_model("torchvision:vgg16", weights="vgg16.pth")
        return
    torch.manual_seed(0)
    model = Classifier(torchvision.models.alexnet(weights=None).eval())
    images = torch.stack([model.preprocess(s) for s in sources[:1]])
    method = BeamSearch(model, beam_width=4, levels=1)
    result = method(images, target=5, sources=sources[:1])
    assert result.layer == "avgpool" and result.raw.shape == (1, 224, 224)
    with torch.no_grad():
        feats = model.module.avgpool(model.module.features(images))
        crop = F.interpolate(feats[:, :, :, :5], size=(6, 6), mode="bilinear",
                             align_corners=False)  # child (0, 0, 5, 6)
        expected = float(model.module.classifier(crop.flatten(1)).softmax(1)[0, 5])
    level = method.last_trace[0]
    left = [i for i, r in enumerate(level.regions.tolist())
            if r[0] == 0 and r[1] == 0 and r[3] == 224 and r[2] < 200]
    assert len(left) == 1
    assert float(level.scores[left[0]]) == pytest.approx(expected, rel=1e-4)


def test_run_to_layer_stops_there_and_leaves_no_hook(tiny_images):
    from wsolkit.maps.hooks import run_to_layer
    from wsolkit.models.parallel import split_inference

    model = seeded(TinyCNN, seed=1)
    calls = []
    handle = model.fc.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with run_to_layer(model, "features.act") as to_layer:
            out = to_layer(tiny_images)
            split = split_inference(to_layer, tiny_images.repeat(3, 1, 1, 1), workers=2)
            assert len(model.features.act._forward_hooks) == 1
    finally:
        handle.remove()
    with torch.no_grad():
        expected = torch.relu(model.features.conv2(torch.relu(model.features.conv1(
            tiny_images))))
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(split, expected.repeat(3, 1, 1, 1))
    assert calls == []  # the head never ran
    assert not model.features.act._forward_hooks
    with pytest.raises(LayerError, match="not found"), run_to_layer(model, "features.nope"):
        pass
