"""F-CAM decoder, method, training loop and their errors, on tiny seeded models."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from tests.conftest import TinyCNN, seeded
from wsolkit.cli.main import main
from wsolkit.data import open_dataset
from wsolkit.errors import InputError, LayerError, ModelError
from wsolkit.maps.fcam import FCAM
from wsolkit.maps.registry import get_method, make_method
from wsolkit.models.classifier import Classifier
from wsolkit.models.fcam import DecoderSpec, FCAMDecoder, load_decoder, save_decoder
from wsolkit.train.fcam import FCAMSettings, make_optimizer, train_fcam

SKIPS = ("features.relu1", "features.act")  # 4 channels at full size, 6 at half size


def tiny_decoder(seed: int = 0) -> FCAMDecoder:
    torch.manual_seed(seed)
    decoder = FCAMDecoder(DecoderSpec(SKIPS, (4, 6), widths=(5, 3), reduce=2))
    with torch.no_grad():  # BN statistics away from (0, 1), so a wrong mode would show
        for module in decoder.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.3, 0.3)
                module.running_var.uniform_(0.5, 1.5)
    return decoder.eval()


def tiny_classifier() -> Classifier:
    return Classifier(module=seeded(TinyCNN), name="tiny", input_size=(32, 32))


@pytest.fixture
def decoder_file(tmp_path) -> Path:
    path = tmp_path / "decoder.pt"
    save_decoder(tiny_decoder(), path, {"model": "tiny"}, half=False)
    return path


def test_fcam_map_is_the_decoders_foreground_probability_at_full_size(decoder_file):
    model = seeded(TinyCNN)
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    result = FCAM(model, decoder=str(decoder_file))(images, target="top2")
    # Independent computation: the skip features by hand, then the decoder's softmax.
    with torch.no_grad():
        relu1 = torch.relu(model.features.conv1(images))
        act = torch.relu(model.features.conv2(relu1))
        expected = tiny_decoder()([relu1, act], (16, 16)).softmax(dim=1)[:, 1]
    assert result.maps.shape == (4, 16, 16) and result.raw.shape == (4, 16, 16)
    torch.testing.assert_close(result.raw, expected[result.image_index], rtol=1e-5, atol=1e-6)
    # Class-agnostic: both targets of an image get the same map, and they differ by class.
    assert result.classes[0] != result.classes[1]
    torch.testing.assert_close(result.maps[0], result.maps[1])
    torch.testing.assert_close(result.logits[0], model(images)[0].detach())
    assert not model.training and all(p.grad is None for p in model.parameters())


def test_fcam_is_registered_and_takes_a_decoder_option(decoder_file):
    assert get_method("fcam") is FCAM
    with pytest.raises(InputError, match="option 'decodr' is unknown to fcam"):
        make_method("fcam", seeded(TinyCNN), decodr=str(decoder_file))


def test_decoder_file_round_trip_keeps_fp16_weights(tmp_path):
    decoder = tiny_decoder()
    save_decoder(decoder, tmp_path / "d.pt", {"cam": "cam"})
    loaded, meta = load_decoder(tmp_path / "d.pt")
    assert meta == {"cam": "cam"}
    for name, value in decoder.state_dict().items():
        expected = value.half().float() if value.is_floating_point() else value
        torch.testing.assert_close(loaded.state_dict()[name], expected, rtol=0, atol=0)


def test_decoder_file_errors_are_one_line(tmp_path):
    with pytest.raises(InputError, match=r"decoder file .*missing\.pt not found"):
        load_decoder(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="other.pt: not an F-CAM decoder file"):
        load_decoder(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="junk.pt: not a readable F-CAM decoder file") as error:
        load_decoder(tmp_path / "junk.pt")
    assert "\n" not in str(error.value)


def test_mismatched_decoder_and_missing_skip_layer_are_named(tmp_path):
    wrong = tmp_path / "wrong.pt"
    save_decoder(FCAMDecoder(DecoderSpec(SKIPS, (4, 7), widths=(5, 3), reduce=2)), wrong)
    images = torch.randn(1, 3, 16, 16)
    with pytest.raises(ModelError, match=r"expects skip channels \[4, 7\].*gives \[4, 6\]"):
        FCAM(seeded(TinyCNN), decoder=str(wrong))(images)
    missing = tmp_path / "missing_layer.pt"
    save_decoder(FCAMDecoder(DecoderSpec(("features.conv9", "features.act"), (4, 6),
                                         widths=(5, 3), reduce=2)), missing)
    with pytest.raises(LayerError, match="F-CAM skip layer 'features.conv9' not found"):
        FCAM(seeded(TinyCNN), decoder=str(missing))(images)


def test_no_shipped_decoder_for_other_models_is_an_error():
    with pytest.raises(InputError, match="no shipped decoder for model 'TinyCNN'"):
        FCAM(seeded(TinyCNN))


def write_dataset(root: Path, count: int = 6, boxes: bool = False) -> Path:
    """A wsolevaluation folder of 40x40 images: a bright square on noise, 5 classes."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    ids, labels, sizes, boxes_lines = [], [], [], []
    for i in range(count):
        pixels = rng.integers(0, 80, (40, 40, 3)).astype(np.uint8)
        x, y = int(rng.integers(2, 20)), int(rng.integers(2, 20))
        pixels[y:y + 16, x:x + 16] = 220
        name = f"images/{i}.png"
        Image.fromarray(pixels).save(root / name)
        ids.append(name)
        labels.append(f"{name},{i % 5}")
        sizes.append(f"{name},40,40")
        boxes_lines.append(f"{name},{x},{y},{x + 15},{y + 15}")
    (root / "image_ids.txt").write_text("\n".join(ids) + "\n")
    (root / "class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "image_sizes.txt").write_text("\n".join(sizes) + "\n")
    if boxes:
        (root / "localization.txt").write_text("\n".join(boxes_lines) + "\n")
    return root


SETTINGS = FCAMSettings(epochs=2, batch_size=3, views=2, widths=(4, 3), reduce=0,
                        skip_layers=SKIPS, crf_size=8, sigma_xy=10.0, lr=0.05)


def test_resume_gives_the_decoder_of_an_uninterrupted_run(tmp_path):
    data = open_dataset(write_dataset(tmp_path / "data", boxes=True))
    whole = train_fcam(tiny_classifier(), data, tmp_path / "whole.pt", SETTINGS, val=data)
    first = train_fcam(tiny_classifier(), data, tmp_path / "part.pt",
                       replace(SETTINGS, epochs=1), val=data)
    assert len(first["history"]) == 1
    resumed = train_fcam(tiny_classifier(), data, tmp_path / "part.pt", SETTINGS, val=data,
                         resume=True)
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in whole["history"]]
    assert resumed["best_epoch"] == whole["best_epoch"]
    assert resumed["val_metric"] == "MaxBoxAccV2"
    a = torch.load(tmp_path / "whole.pt.work" / "checkpoint.pt", weights_only=False)["decoder"]
    b = torch.load(tmp_path / "part.pt.work" / "checkpoint.pt", weights_only=False)["decoder"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
    assert a["head.weight"].abs().sum() > 0
    # The written decoder works as the fcam method on the same classifier.
    result = FCAM(tiny_classifier(), decoder=str(tmp_path / "whole.pt"))(torch.randn(1, 3, 32,
                                                                                       32))
    assert result.maps.shape == (1, 32, 32)


def test_training_without_resume_refuses_an_existing_checkpoint(tmp_path):
    data = open_dataset(write_dataset(tmp_path / "data"))
    settings = replace(SETTINGS, epochs=1, crf=0.0, size=0.0)
    train_fcam(tiny_classifier(), data, tmp_path / "d.pt", settings)
    with pytest.raises(InputError, match="checkpoint.pt exists: pass resume=True"):
        train_fcam(tiny_classifier(), data, tmp_path / "d.pt", settings)
    with pytest.raises(InputError, match="made with other settings"):
        train_fcam(tiny_classifier(), data, tmp_path / "d.pt", replace(settings, lr=0.1,
                                                                        epochs=2), resume=True)


def test_dataset_without_labels_and_model_without_skips_are_errors(tmp_path):
    root = tmp_path / "masks"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / "a.jpg")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "masks" / "a.png")
    with pytest.raises(InputError, match="no image has a class label"):
        train_fcam(tiny_classifier(), open_dataset(root), tmp_path / "d.pt", SETTINGS)
    data = open_dataset(write_dataset(tmp_path / "data"))
    with pytest.raises(LayerError, match="F-CAM skip layer 'features.nope' not found"):
        train_fcam(tiny_classifier(), data, tmp_path / "e.pt",
                   replace(SETTINGS, skip_layers=("features.nope", "features.act")))
    with pytest.raises(InputError, match="no known F-CAM skip layers for model 'tiny'"):
        train_fcam(tiny_classifier(), data, tmp_path / "f.pt", replace(SETTINGS, skip_layers=()))


def test_cli_errors_are_one_line(tmp_path, capsys):
    root = tmp_path / "masks"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / "a.jpg")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "masks" / "a.png")
    assert main(["train-fcam", str(root), "--out", str(tmp_path / "d.pt"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("wsolkit: error:") and "no image has a class label" in err
    assert len(err.splitlines()) == 1
    assert main(["train-fcam", str(root), "--out", str(tmp_path / "d.pt"), "--k", "2"]) == 2
    assert "--k must be odd" in capsys.readouterr().err
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    code = main(["localize", str(image), "--out", str(tmp_path / "o"), "--method", "fcam",
                 "--option", f"decoder={tmp_path / 'nothing.pt'}", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "nothing.pt not found" in err and len(err.splitlines()) == 1


def test_decoder_blocks_use_each_skip_at_its_size():
    # Skips at 9 and 5 (odd sizes, as with 227-pixel inputs): x2 then resize to the skip.
    decoder = FCAMDecoder(DecoderSpec(("a", "b"), (2, 3), widths=(4, 4), reduce=0)).eval()
    skips = [torch.randn(1, 2, 9, 9), torch.randn(1, 3, 5, 5)]
    assert decoder(skips, (17, 17)).shape == (1, 2, 17, 17)
    spec = OrderedDict(decoder.state_dict())
    assert spec["blocks.0.convs.0.weight"].shape == (4, 3 + 2, 3, 3)  # bottom + shallow skip
    assert spec["blocks.1.convs.0.weight"].shape == (4, 4, 3, 3)  # the last block: no skip


@pytest.mark.parametrize("name", ["cam", "gradcam", "layercam"])
def test_linear_head_seed_equals_the_method_at_the_head_layer(name):
    from wsolkit.train.fcam_cache import linear_head_seed

    model = seeded(TinyCNN)
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    labels = [0, 3, 4]
    method = get_method(name)(model, layer="features.act")
    result = method(images, target="gt", labels=labels)
    expected = result.raw.clamp(min=0) if method.relu else result.raw
    with torch.no_grad():
        activations = model.features(images)
    seeds = linear_head_seed(name, activations, model.fc.weight.detach()[labels])
    torch.testing.assert_close(seeds, expected, rtol=1e-5, atol=1e-6)


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules())


def test_model_left_as_found_and_no_hooks_left(decoder_file):
    from tests.conftest import BNDropoutCNN, RaisingCNN

    model = seeded(BNDropoutCNN).train()
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    before = images.clone()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    method = FCAM(model, decoder=str(decoder_file))
    first = method(images)
    second = method(images)
    torch.testing.assert_close(first.maps, second.maps)  # eval mode inside: repeatable
    assert model.training and _hook_count(model) == 0
    torch.testing.assert_close(images, before, rtol=0, atol=0)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    raising = seeded(RaisingCNN)
    with pytest.raises(RuntimeError, match="boom"):
        FCAM(raising, decoder=str(decoder_file))(images)
    assert _hook_count(raising) == 0


def test_a_layer_other_than_the_decoder_output_is_refused(decoder_file):
    with pytest.raises(InputError, match="fcam: layer 'features.conv2'"):
        FCAM(seeded(TinyCNN), layer="features.conv2", decoder=str(decoder_file))


def test_paper_preset_is_the_authors_cub_command():
    # the values of sbelharbi/fcam-wsol's CUB command, as stated in issue 11 and docs/fcam.md
    paper = FCAMSettings.paper()
    assert (paper.optimizer, paper.lr, paper.momentum, paper.weight_decay) == ("sgd", 0.01, 0.9,
                                                                               1e-4)
    assert (paper.batch_size, paper.n_fg, paper.n_bg, paper.k, paper.bg_fraction) == (32, 1, 1,
                                                                                      3, 0.1)
    assert (paper.crf, paper.sigma_rgb, paper.sigma_xy, paper.size) == (2e-9, 15.0, 100.0, 0.1)
    assert (paper.elb_t, paper.elb_rate, paper.elb_max) == (1.0, 1.01, 10.0)
    ours = FCAMSettings()
    assert (ours.bg_fraction, ours.optimizer, ours.n_fg) != (paper.bg_fraction, paper.optimizer,
                                                             paper.n_fg)
    assert FCAMSettings.paper(epochs=7).epochs == 7  # options override the preset
    optimizer = make_optimizer(torch.nn.Linear(2, 2), paper)
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["nesterov"]
