"""Fine-tuning with adaptation layers: head swap, learning rates, sampling, resume, CLI."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TinyCNN, seeded
from PIL import Image
from torch import nn

import wsolkit
from wsolkit.cli.main import main
from wsolkit.data import open_dataset
from wsolkit.errors import InputError, LayerError
from wsolkit.models import Classifier
from wsolkit.models.adaptation import (
    AdaptationHead,
    head_parameter_names,
    with_adaptation_head,
)
from wsolkit.models.loading import load_model, save_classifier
from wsolkit.train import FinetuneSettings, finetune, multilabel_map
from wsolkit.train.finetune import _optimizer, _trainable_prefixes
from wsolkit.train.sampling import class_balanced_epoch, repeat_factors, split_train_val

COLORS = ("red", "green", "blue")
RGB = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
# Fast settings for the tiny problems below.
FAST = {"batch_size": 8, "hidden": 8, "dropout": 0.0, "rotation": 10.0, "noise": 0.01,
        "max_repeat": 2.0, "val_fraction": 0.25}


def tiny_classifier(seed: int = 0) -> Classifier:
    return Classifier(module=seeded(TinyCNN, seed), name="tiny", input_size=(16, 16),
                      mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def write_color_coco(folder: Path, count: int = 24, seed: int = 0) -> Path:
    """COCO JSON of 32x32 images: each labelled color fills one vertical band of the image."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    images, annotations = [], []
    for i in range(count):
        labels = [i % 3] if i % 4 else sorted({i % 3, (i + 1) % 3})
        if i % 6 == 5:
            labels = [0]  # red is the frequent class
        array = rng.integers(100, 156, (32, 32, 3)).astype(np.uint8)
        width = 32 // len(labels)
        for k, label in enumerate(labels):
            array[:, k * width:(k + 1) * width] = RGB[COLORS[label]]
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": label + 1,
                "bbox": [k * width, 0, width, 32], "area": width * 32, "iscrowd": 0,
                "segmentation": [[k * width, 0, (k + 1) * width, 0, (k + 1) * width, 32,
                                  k * width, 32]],
            })
        name = f"{i:03d}.png"
        Image.fromarray(array).save(folder / "images" / name)
        images.append({"id": i + 1, "file_name": name, "width": 32, "height": 32})
    categories = [{"id": c + 1, "name": name} for c, name in enumerate(COLORS)]
    path = folder / "instances.json"
    path.write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": categories}
    ))
    return path


@pytest.fixture
def color_coco(tmp_path) -> Path:
    return write_color_coco(tmp_path / "colors")


# ----------------------------------------------------------------------------- head swap


def test_head_swap_shapes_and_backbone_intact(tiny_images):
    base = tiny_classifier()
    original = {k: v.clone() for k, v in base.module.state_dict().items()}
    rng_state = torch.get_rng_state()
    model, head = with_adaptation_head(base, ["a", "b", "c"], hidden=7, dropout=0.5, seed=3)
    assert torch.equal(torch.get_rng_state(), rng_state)  # global RNG left as found
    assert head == "fc"
    assert isinstance(model.module.fc, AdaptationHead)
    assert model.module.fc.hidden.weight.shape == (7, 6)
    assert model.module.fc.out.weight.shape == (3, 7)
    assert model.module(tiny_images).shape == (2, 3)
    assert model.class_names == ("a", "b", "c")
    assert (model.feature_layer, model.fc_layer) == ("features", "fc.out")
    # trained with binary cross-entropy: probabilities are per-class sigmoids
    assert model.multi_label and not base.multi_label
    logits = torch.tensor([[2.0, -1.0, 0.0]])
    assert torch.allclose(model.probabilities(logits), torch.sigmoid(logits))
    assert torch.allclose(base.probabilities(logits), logits.softmax(1))
    # the copy's backbone starts from the pretrained weights; the caller's model is untouched
    new_state = model.module.state_dict()
    for name, value in original.items():
        if not name.startswith("fc."):
            assert torch.equal(new_state[name], value), name
    assert isinstance(base.module.fc, nn.Linear) and base.module.fc.out_features == 5
    for name, value in base.module.state_dict().items():
        assert torch.equal(value, original[name])
    assert head_parameter_names(model.module, head) == {
        "fc.hidden.weight", "fc.hidden.bias", "fc.out.weight", "fc.out.bias"
    }
    # the same seed gives the same new layers
    again, _ = with_adaptation_head(base, ["a", "b", "c"], hidden=7, seed=3)
    assert torch.equal(again.module.fc.out.weight, model.module.fc.out.weight)


def test_linear_head_keeps_cam_working(tiny_images):
    model, _ = with_adaptation_head(tiny_classifier(), ["a", "b"], hidden=0)
    assert not hasattr(model.module.fc, "hidden")
    assert model.module.fc.out.weight.shape == (2, 6)
    result = wsolkit.heatmaps(model, tiny_images, method="cam", target=1)
    assert result.maps.shape == (2, 16, 16)


def test_head_swap_without_pooled_linear_head_replaces_the_last_linear(tiny_images):
    vgg_like = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4), nn.ReLU(), nn.Flatten(),
                             nn.Linear(4 * 4 * 4, 10), nn.ReLU(), nn.Linear(10, 5))
    base = Classifier(module=seeded(lambda: vgg_like), input_size=(16, 16))
    model, head = with_adaptation_head(base, ["a", "b"], hidden=3)
    assert head == "5" and model.fc_layer == "5.out"
    assert isinstance(model.module[5], AdaptationHead)
    assert torch.equal(model.module[3].weight, base.module[3].weight)
    assert model.module(tiny_images).shape == (2, 2)


def test_head_swap_rejects_bad_values():
    with pytest.raises(InputError, match="hidden"):
        with_adaptation_head(tiny_classifier(), ["a"], hidden=-1)
    with pytest.raises(InputError, match="dropout"):
        with_adaptation_head(tiny_classifier(), ["a"], dropout=1.0)


# ----------------------------------------------------------------------------- learning rates


def test_new_layers_get_the_higher_learning_rate():
    model, head = with_adaptation_head(tiny_classifier(), ["a", "b", "c"], hidden=4)
    settings = FinetuneSettings(lr=1e-4, head_lr=1e-2)
    optimizer = _optimizer(model.module, head, _trainable_prefixes(model.module, head, settings),
                           settings)
    backbone, new = optimizer.param_groups
    assert backbone["lr"] == 1e-4 and new["lr"] == 1e-2
    head_params = {id(p) for n, p in model.module.named_parameters() if n.startswith("fc.")}
    assert {id(p) for p in new["params"]} == head_params
    assert len(backbone["params"]) == 4  # conv1 and conv2, weight and bias

    frozen = FinetuneSettings(lr=0.0, head_lr=1e-2)
    (only,) = _optimizer(model.module, head, _trainable_prefixes(model.module, head, frozen),
                         frozen).param_groups
    assert only["lr"] == 1e-2 and {id(p) for p in only["params"]} == head_params

    partial = FinetuneSettings(lr=1e-4, train_layers=("features.conv2",))
    groups = _optimizer(model.module, head, _trainable_prefixes(model.module, head, partial),
                        partial).param_groups
    assert len(groups[0]["params"]) == 2  # conv2 only
    with pytest.raises(LayerError, match="features.conv9"):
        _trainable_prefixes(model.module, head, FinetuneSettings(train_layers=("features.conv9",)))


def test_frozen_backbone_stays_frozen(color_coco, tmp_path):
    base = tiny_classifier()
    settings = FinetuneSettings(epochs=2, lr=0.0, head_lr=1e-2, **FAST)
    finetune(base, open_dataset(color_coco), tmp_path / "out", settings)
    tuned = wsolkit.load_model(str(tmp_path / "out" / "model.pt"))
    for name, value in base.module.state_dict().items():
        if name.startswith("features."):
            assert torch.equal(tuned.module.state_dict()[name], value)
    # gradients flow again after training (gradient heatmaps need them)
    assert all(p.requires_grad for p in tuned.module.parameters())


# ----------------------------------------------------------------------------- sampling


def test_class_balanced_sampler_oversamples_rare_classes():
    labels = [(0,)] * 10 + [(1,)] * 2 + [(2,)] + [(0, 2)]
    full = repeat_factors(labels, 3, balance=1.0, max_repeat=100)
    # class counts: 0 -> 11 images, 1 -> 2, 2 -> 2
    np.testing.assert_allclose(full, [1] * 10 + [5.5] * 2 + [5.5, 5.5])
    rng = np.random.default_rng(0)
    counts = Counter()
    epochs = 200
    for _ in range(epochs):
        for index in class_balanced_epoch(full, rng):
            counts.update(labels[index])
    per_epoch = {c: counts[c] / epochs for c in range(3)}
    # rare classes are shown about as often as the frequent one (11 images of class 0 shown
    # 10 * 1 + 5.5 times; 2 images of classes 1 and 2 shown 5.5 times each)
    assert per_epoch[1] == pytest.approx(11, rel=0.05)
    assert per_epoch[2] == pytest.approx(11, rel=0.05)
    assert per_epoch[0] == pytest.approx(15.5, rel=0.05)

    capped = repeat_factors(labels, 3, balance=1.0, max_repeat=3)
    assert capped.max() == 3
    assert np.all(repeat_factors(labels, 3, balance=0.0) == 1)
    np.testing.assert_allclose(repeat_factors(labels, 3, balance=0.5, max_repeat=100)[10],
                               np.sqrt(5.5))
    whole = class_balanced_epoch(np.array([1.0, 3.0, 2.0]), np.random.default_rng(1))
    assert sorted(Counter(whole.tolist()).items()) == [(0, 1), (1, 3), (2, 2)]


def test_split_is_seeded_and_disjoint():
    train, val = split_train_val(20, 0.25, seed=4)
    assert len(val) == 5 and len(train) == 15
    assert not set(train) & set(val)
    again = split_train_val(20, 0.25, seed=4)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], val)
    assert not np.array_equal(split_train_val(20, 0.25, seed=5)[1], val)
    assert len(split_train_val(20, 0.0, seed=0)[1]) == 0
    with pytest.raises(InputError, match="val_fraction must be in"):
        split_train_val(20, 1.0, seed=0)


def test_multilabel_map():
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]], bool)
    perfect = targets.astype(float) + 0.1
    value, per_class = multilabel_map(perfect, targets)
    assert value == 1.0 and per_class[2] is None
    reversed_scores = 1.0 - targets.astype(float)
    value, per_class = multilabel_map(reversed_scores, targets)
    assert per_class[0] == pytest.approx(2 / 3)  # interpolated: best precision at or after


# ----------------------------------------------------------------------------- training


def test_loss_decreases_on_a_separable_problem(color_coco, tmp_path):
    settings = FinetuneSettings(epochs=6, lr=1e-2, head_lr=3e-2, seed=1, **FAST)
    metrics = finetune(tiny_classifier(), open_dataset(color_coco), tmp_path / "out", settings)
    losses = [epoch["loss"] for epoch in metrics["epochs"]]
    assert losses[-1] < 0.75 * losses[0]
    assert metrics["val_map_after"] > metrics["val_map_before"]
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert written["val_map_after"] == metrics["val_map_after"]
    assert written["classes"] == 3 and written["val_images"] == 6


def test_resume_matches_an_uninterrupted_run(color_coco, tmp_path):
    dataset = open_dataset(color_coco)
    settings = FinetuneSettings(epochs=3, lr=1e-3, head_lr=1e-2, **{**FAST, "dropout": 0.3})
    whole = finetune(tiny_classifier(), dataset, tmp_path / "whole", settings)

    first = FinetuneSettings(**{**settings.__dict__, "epochs": 1})
    finetune(tiny_classifier(), dataset, tmp_path / "parts", first)
    resumed = finetune(tiny_classifier(), dataset, tmp_path / "parts", settings, resume=True)

    assert resumed["resumed_from_epoch"] == 1
    assert resumed["epochs"][0]["loss"] == whole["epochs"][0]["loss"]
    assert [e["loss"] for e in resumed["epochs"]] == [e["loss"] for e in whole["epochs"]]
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "parts" / "checkpoint.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name  # bit-identical on the CPU
    assert resumed["val_map_after"] == whole["val_map_after"]


def test_finetuned_model_round_trips_through_load_model(color_coco, tmp_path, tiny_images):
    settings = FinetuneSettings(epochs=1, **FAST)
    finetune(tiny_classifier(), open_dataset(color_coco), tmp_path / "out", settings)
    saved = torch.load(tmp_path / "out" / "checkpoint.pt", weights_only=True)
    loaded = wsolkit.load_model(str(tmp_path / "out" / "model.pt"))
    assert loaded.class_names == COLORS
    assert loaded.input_size == (16, 16) and loaded.mean == (0.5, 0.5, 0.5)
    assert (loaded.feature_layer, loaded.fc_layer) == ("features", "fc.out")
    assert not loaded.module.training
    for name, value in loaded.module.state_dict().items():
        assert torch.equal(value, saved["model"][name])
    result = wsolkit.heatmaps(loaded, tiny_images, method="gradcam", target=2)
    assert result.maps.shape == (2, 16, 16)


def test_any_reader_works_mask_folder(tmp_path):
    root = tmp_path / "masks_ds"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = []
    for i in range(8):
        color = COLORS[i % 2]
        Image.fromarray(np.full((32, 32, 3), RGB[color], np.uint8)).save(
            root / "images" / f"im{i}.png")
        Image.fromarray(np.full((32, 32), 255, np.uint8)).save(root / "masks" / f"im{i}.png")
        rows.append(f"im{i},{color}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    metrics = finetune(tiny_classifier(), open_dataset(root), tmp_path / "out",
                       FinetuneSettings(epochs=1, **FAST))
    assert metrics["classes"] == 2 and metrics["train_images"] == 6


# ----------------------------------------------------------------------------- command line


@pytest.fixture
def tiny_model_file(tmp_path) -> Path:
    path = tmp_path / "tiny.pt"
    save_classifier(tiny_classifier(), path)
    return path


def test_cli_trains_and_resumes(color_coco, tiny_model_file, tmp_path, capsys):
    out = tmp_path / "cli"
    common = [str(color_coco), "--out", str(out), "--model", str(tiny_model_file),
              "--batch-size", "8", "--hidden", "8", "--quiet", "--threads", "1"]
    assert main(["finetune", *common, "--epochs", "1"]) == 0
    assert main(["finetune", *common, "--epochs", "2", "--resume"]) == 0
    err = capsys.readouterr().err
    assert "epoch 2/2" in err and "val mAP" in err
    metrics = json.loads((out / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert (out / "model.pt").is_file() and not list(out.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--val-fraction", "1.5"], "--val-fraction must be in [0, 1)"),
        (["--lr", "-1"], "--lr must be >= 0"),
        (["--head-lr", "0"], "--head-lr must be > 0"),
        (["--hidden", "-2"], "--hidden must be >= 0"),
        (["--limit", "0"], "--limit must be >= 1"),
        (["--threads", "0"], "--threads must be >= 1"),
        (["--resume"], "checkpoint.pt not found"),
        (["--lr", "0", "--train-layers", "features.conv2"],
         "--train-layers needs a positive --lr (--lr 0 freezes"),
        (["--train-layers", "features.nope"], "layer 'features.nope' not found"),
    ],
)
def test_cli_bad_arguments_are_one_line(color_coco, tiny_model_file, tmp_path, capsys,
                                        extra, message):
    code = main(["finetune", str(color_coco), "--out", str(tmp_path / "o"),
                 "--model", str(tiny_model_file), "--quiet", *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("wsolkit: error:")
    assert message in err


def test_cli_refuses_to_overwrite_or_mismatch(color_coco, tiny_model_file, tmp_path, capsys):
    out = tmp_path / "o"
    common = [str(color_coco), "--out", str(out), "--model", str(tiny_model_file), "--quiet",
              "--epochs", "1", "--hidden", "4"]
    assert main(["finetune", *common]) == 0
    capsys.readouterr()
    assert main(["finetune", *common]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main(["finetune", *common, "--resume", "--hidden", "5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--hidden 4, not 5" in err
    assert main(["finetune", str(tmp_path / "missing"), "--out", str(out), "--quiet"]) == 2
    assert "dataset not found" in capsys.readouterr().err


def test_cli_skips_unreadable_images_and_exits_1(color_coco, tiny_model_file, tmp_path, capsys):
    images = color_coco.parent / "images"
    (images / "001.png").unlink()
    (images / "002.png").write_bytes((images / "003.png").read_bytes()[:60])
    out = tmp_path / "o"
    code = main(["finetune", str(color_coco), "--out", str(out), "--model",
                 str(tiny_model_file), "--quiet", "--epochs", "1", "--hidden", "4",
                 "--threads", "1"])
    assert code == 1
    err = capsys.readouterr().err
    assert f"{images / '001.png'}: file not found" in err
    assert f"{images / '002.png'}: truncated or corrupt" in err
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["failures"]) == 2
    assert metrics["train_images"] + metrics["val_images"] == 22


def test_saved_model_keeps_multi_label(tmp_path):
    model, _ = with_adaptation_head(tiny_classifier(), ["a", "b"], hidden=3)
    save_classifier(model, tmp_path / "adapted.pt")
    again = load_model(str(tmp_path / "adapted.pt"))
    assert again.multi_label and again.class_names == ("a", "b")


# --------------------------------------------------------------------------- paper preset


def test_softmax_output_loss_is_eq1_on_softmax_probabilities():
    from wsolkit.train.finetune import _criterion

    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    expected = 0.0
    for row in range(2):
        exp = [float(np.exp(float(v))) for v in logits[row]]
        q = [e / sum(exp) for e in exp]
        for k in range(3):
            p = float(labels[row, k])
            expected -= (p * np.log(q[k]) + (1 - p) * np.log(1 - q[k])) / 3
    expected /= 2
    assert float(_criterion("softmax")(logits, labels)) == pytest.approx(expected, rel=1e-6)
    sig = [[1 / (1 + np.exp(-float(v))) for v in row] for row in logits]
    bce = -np.mean([[float(labels[r, k]) * np.log(sig[r][k])
                     + (1 - float(labels[r, k])) * np.log(1 - sig[r][k]) for k in range(3)]
                    for r in range(2)])
    assert float(_criterion("sigmoid")(logits, labels)) == pytest.approx(bce, rel=1e-6)


def test_paper_preset_steps_the_learning_rate_and_outputs_softmax(color_coco, tmp_path):
    assert FinetuneSettings.paper() == FinetuneSettings(
        optimizer="sgd", head_lr=1e-3, lr_step=20000, batch_size=50, output="softmax")
    # 18 training images (balance 0: no oversampling), batches of 4: 5 steps per epoch; the
    # rate is divided by 10 after every 3 steps: 0.1 ** (10 // 3) after 2 epochs
    settings = FinetuneSettings.paper(epochs=2, lr_step=3, batch_size=4, balance=0.0,
                                      hidden=8, dropout=0.0, val_fraction=0.25, lr=0.0)
    metrics = finetune(tiny_classifier(), open_dataset(color_coco), tmp_path / "out", settings)
    assert metrics["train_images"] == 18
    saved = torch.load(tmp_path / "out" / "checkpoint.pt", weights_only=True)
    (group,) = saved["optimizer"]["param_groups"]  # the head only (lr 0 freezes the rest)
    assert group["batches"] == 10 and group["momentum"] == 0.9
    assert group["lr"] == pytest.approx(1e-3 * 0.1 ** 3)
    model = wsolkit.load_model(str(tmp_path / "out" / "model.pt"))
    assert not model.multi_label  # softmax probabilities
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    torch.testing.assert_close(model.probabilities(logits), logits.softmax(1))


def test_cli_paper_preset_with_an_override(color_coco, tiny_model_file, tmp_path):
    out = tmp_path / "paper"
    assert main(["finetune", str(color_coco), "--out", str(out), "--model",
                 str(tiny_model_file), "--preset", "paper", "--batch-size", "6", "--hidden", "8",
                 "--epochs", "1", "--quiet", "--threads", "1"]) == 0
    settings = json.loads((out / "metrics.json").read_text())["settings"]
    assert (settings["optimizer"], settings["batch_size"], settings["lr_step"],
            settings["output"], settings["head_lr"]) == ("sgd", 6, 20000, "softmax", 1e-3)
