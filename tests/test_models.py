"""Model adapters and loading: head detection, Classifier, the embedded model, model files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BNDropoutCNN, TinyCNN, seeded
from PIL import Image
from torch import nn

from wsolkit.data.images import load_image
from wsolkit.errors import InputError, LayerError, ModelError
from wsolkit.models import (
    CamHead,
    Classifier,
    as_classifier,
    detect_cam_head,
    get_layer,
    imagenet_class_names,
    load_model,
)
from wsolkit.models.layers import find_linear

CHELSEA = Path(__file__).resolve().parents[1] / "examples" / "chelsea.jpg"


# ----------------------------------------------------------------------------- head detection


@pytest.mark.parametrize("cls", [TinyCNN, BNDropoutCNN])
def test_detect_cam_head(cls, tiny_images):
    model = seeded(cls)
    head = detect_cam_head(model, tiny_images[:1])
    # the output of the whole feature block feeds the pool (the same tensor as its last ReLU)
    assert head == CamHead(feature_layer="features", fc_layer="fc")
    assert not any(m._forward_hooks for m in model.modules())


def test_detect_cam_head_finds_last_spatial_layer_by_name():
    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.block = nn.Conv2d(8, 8, 3, stride=2, padding=1)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.pool(self.block(self.stem(x))).flatten(1))

    head = detect_cam_head(seeded(Flat), torch.zeros(1, 3, 12, 12))
    assert head == CamHead("block", "head")


def test_detect_cam_head_errors(tiny_images):
    no_linear = nn.Sequential(nn.Conv2d(3, 5, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ModelError, match="no nn.Linear producing its 5 logits"):
        detect_cam_head(no_linear, tiny_images[:1])
    maps_out = nn.Sequential(nn.Conv2d(3, 5, 3))
    with pytest.raises(ModelError, match=r"does not return \(N, classes\) logits"):
        detect_cam_head(maps_out, tiny_images[:1])
    no_spatial = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 5))
    with pytest.raises(ModelError, match="no spatial layer with 768 channels"):
        detect_cam_head(no_spatial, tiny_images[:1])


def test_get_layer_and_find_linear(tiny_model):
    assert get_layer(tiny_model, "features.conv2") is tiny_model.features.conv2
    with pytest.raises(LayerError, match=r"'features\.con2' not found in TinyCNN; did you mean "
                                         r"'features\.conv2'"):
        get_layer(tiny_model, "features.con2")
    with pytest.raises(LayerError, match="'' not found"):
        get_layer(tiny_model, "")
    with pytest.raises(LayerError, match="not nn.Linear"):
        find_linear(tiny_model, "features.conv1")
    assert find_linear(tiny_model, None, in_features=6) is tiny_model.fc
    with pytest.raises(ModelError, match="no nn.Linear classifier with 7 inputs"):
        find_linear(tiny_model, None, in_features=7)


# ------------------------------------------------------------------------------- Classifier


def test_as_classifier_on_bare_module(tiny_model, tiny_images):
    classifier = as_classifier(tiny_model)
    assert isinstance(classifier, Classifier)
    assert classifier.module is tiny_model
    assert classifier.name == "TinyCNN"
    assert classifier.class_names is None and classifier.class_name(3) == "class 3"
    assert classifier.device == torch.device("cpu")
    assert classifier.feature_layer is None and classifier.fc_layer is None
    assert classifier.cam_head(tiny_images) == CamHead("features", "fc")
    assert as_classifier(classifier) is classifier


def test_as_classifier_overrides_layers(tiny_model, tiny_images):
    classifier = as_classifier(tiny_model)
    other = as_classifier(classifier, layer="features.conv2", fc="fc")
    assert other is not classifier and other.module is tiny_model
    assert other.feature_layer == other.objectness_layer == "features.conv2"
    assert other.cam_head(tiny_images) == CamHead("features.conv2", "fc")
    assert classifier.feature_layer is None  # the original is unchanged
    named = as_classifier(tiny_model, layer="features.act", fc="fc")
    assert named.cam_head(tiny_images) == CamHead("features.act", "fc")


def test_as_classifier_rejects_non_modules():
    with pytest.raises(ModelError, match="expected a torch.nn.Module or Classifier, got int"):
        as_classifier(42)


def test_preprocess_resizes_and_normalizes(tiny_model):
    classifier = Classifier(module=tiny_model, input_size=(20, 30))
    image = Image.fromarray(np.full((40, 50, 3), 255, dtype=np.uint8))
    tensor = classifier.preprocess(image)
    assert tensor.shape == (3, 20, 30) and tensor.dtype == torch.float32
    expected = (1 - torch.tensor(classifier.mean)) / torch.tensor(classifier.std)
    torch.testing.assert_close(tensor[:, 0, 0], expected)
    batch = classifier.preprocess_batch([image, image])
    assert batch.shape == (2, 3, 20, 30)
    with pytest.raises(InputError, match="RGB PIL image"):
        classifier.preprocess(image.convert("L"))
    with pytest.raises(InputError, match="RGB PIL image"):
        classifier.preprocess(np.zeros((20, 30, 3)))


def test_normalize_stacks_what_preprocess_makes_one_at_a_time(tiny_model):
    classifier = Classifier(module=tiny_model, input_size=(12, 16), mean=(0.2, 0.5, 0.7),
                            std=(0.3, 0.25, 0.5))
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, (37, 41, 3), dtype=np.uint8))
    boxes = [(0.0, 0.0, 41.0, 37.0), (3.5, 2.0, 30.25, 20.0), (10.0, 11.0, 12.0, 13.0)]
    pixels = np.stack([classifier.resize_region(image, box) for box in boxes])
    assert pixels.shape == (3, 12, 16, 3) and pixels.dtype == np.uint8
    stacked = classifier.normalize(pixels)
    one_by_one = torch.stack([classifier.preprocess(image, box=box) for box in boxes])
    assert torch.equal(stacked, one_by_one)
    other = Image.fromarray(rng.integers(0, 256, (9, 70, 3), dtype=np.uint8))
    assert torch.equal(classifier.preprocess_batch([image, other]),
                       torch.stack([classifier.preprocess(image), classifier.preprocess(other)]))
    # the formula by hand, on the uint8 pixels: (x / 255 - mean) / std per channel
    by_hand = (pixels.astype(np.float32) / np.float32(255) - np.float32([0.2, 0.5, 0.7])) \
        / np.float32([0.3, 0.25, 0.5])
    np.testing.assert_allclose(stacked.permute(0, 2, 3, 1).numpy(), by_hand, rtol=1e-6,
                               atol=1e-6)


# --------------------------------------------------------------------------- embedded model


def test_embedded_model_metadata(embedded_model):
    assert embedded_model.name == "efficientnet_lite0"
    assert len(embedded_model.class_names) == 1000
    assert "cat" in embedded_model.class_name(285)
    assert embedded_model.class_name(0) == "tench"
    assert embedded_model.class_name(1000) == "class 1000"
    assert embedded_model.input_size == (224, 224)
    assert embedded_model.feature_layer == "features.head" and embedded_model.fc_layer == "fc"
    assert not any(m.training for m in embedded_model.module.modules())
    assert embedded_model.module.fc.out_features == 1000
    assert imagenet_class_names() == tuple(embedded_model.class_names)


def test_embedded_preprocess_is_lite_normalization(embedded_model):
    pixels = np.random.default_rng(0).integers(0, 256, size=(224, 224, 3), dtype=np.uint8)
    tensor = embedded_model.preprocess(Image.fromarray(pixels, mode="RGB"))
    expected = (torch.from_numpy(pixels).permute(2, 0, 1).float() * 1 - 127) / 128
    torch.testing.assert_close(tensor, expected, rtol=0, atol=1e-5)


def test_embedded_model_recognizes_the_cat(embedded_model):
    tensor = embedded_model.preprocess(load_image(CHELSEA))
    assert tensor.shape == (3, 224, 224)
    with torch.no_grad():
        logits = embedded_model.module(tensor[None])
    assert logits.shape == (1, 1000)
    assert "cat" in embedded_model.class_name(int(logits.argmax()))


# ------------------------------------------------------------------------------ load_model


def test_load_unknown_model_name():
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        load_model("nope")


@pytest.mark.either_way
@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None,
                    reason="torchvision is installed")
def test_load_torchvision_without_torchvision():
    with pytest.raises(ModelError, match="pip install torchvision"):
        load_model("torchvision:resnet18")


@pytest.mark.either_way
@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm is installed")
def test_load_timm_without_timm():
    with pytest.raises(ModelError, match="pip install timm"):
        load_model("timm:resnet18")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit is deprecated in new torch
@pytest.mark.parametrize("export", ["script", "trace"])
def test_load_torchscript_file(tmp_path, tiny_model, tiny_images, export):
    path = tmp_path / f"tiny_{export}.pt"
    if export == "script":
        scripted = torch.jit.script(tiny_model)
    else:
        scripted = torch.jit.trace(tiny_model, tiny_images)
    torch.jit.save(scripted, str(path))
    classifier = load_model(str(path))
    assert classifier.name == path.name and classifier.class_names is None
    assert not classifier.module.training
    with torch.no_grad():
        torch.testing.assert_close(classifier.module(tiny_images), tiny_model(tiny_images))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # load_model tries torch.jit.load first
def test_load_pickled_module(tmp_path, tiny_model, tiny_images):
    path = tmp_path / "tiny.pth"
    torch.save(tiny_model.train(), path)
    classifier = load_model(str(path))
    assert isinstance(classifier.module, TinyCNN) and not classifier.module.training
    with torch.no_grad():
        torch.testing.assert_close(classifier.module(tiny_images),
                                   tiny_model.eval()(tiny_images))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_load_state_dict_file_is_refused(tmp_path, tiny_model):
    path = tmp_path / "weights.pt"
    torch.save(tiny_model.state_dict(), path)
    with pytest.raises(ModelError, match="state dict"):
        load_model(str(path))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_load_missing_or_broken_file(tmp_path):
    with pytest.raises(ModelError, match="missing.pt: model file not found"):
        load_model(str(tmp_path / "missing.pt"))
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"this is not a model")
    with pytest.raises(ModelError, match="broken.pt: cannot load model"):
        load_model(str(broken))


# ----------------------------------------------------------------------------- split inference


def test_split_inference_equals_one_call_and_restores_threads(tiny_images):
    from wsolkit.models.parallel import split_inference

    model = seeded(TinyCNN).eval()
    batch = torch.cat([tiny_images, tiny_images.flip(3), tiny_images * 0.5])
    with torch.no_grad():
        expected = model(batch)
    threads = torch.get_num_threads()
    for workers in (1, 2, 3, 8):
        out = split_inference(model, batch, workers=workers)
        assert out.shape == expected.shape and not out.requires_grad
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
        assert torch.get_num_threads() == threads
    # a raising call also gives the threads back
    def broken(chunk):
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        split_inference(broken, batch, workers=2)
    assert torch.get_num_threads() == threads
