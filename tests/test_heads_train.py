"""train-head (resume, errors, CLI) and the wildcat/excam methods on a tiny seeded backbone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FEATURE_CHANNELS, NUM_CLASSES, TinyCNN, seeded
from PIL import Image

from wsolkit.cli.main import main
from wsolkit.data.sample import Sample
from wsolkit.errors import InputError, ModelError
from wsolkit.maps import get_method
from wsolkit.models.classifier import Classifier
from wsolkit.models.wildcat import read_head
from wsolkit.train.heads import HeadSettings, train_head


def _classifier(name: str = "tiny") -> Classifier:
    return Classifier(module=seeded(TinyCNN), name=name, input_size=(16, 16),
                      class_names=[f"c{i}" for i in range(NUM_CLASSES)],
                      feature_layer="features.act", fc_layer="fc")


def _samples(folder: Path, count: int = 12, labels: bool = True) -> list[Sample]:
    rng = np.random.default_rng(0)
    samples = []
    for i in range(count):
        path = folder / f"im{i}.png"
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
        chosen = tuple(sorted({i % NUM_CLASSES, (i * 3 + 1) % NUM_CLASSES})) if labels else ()
        samples.append(Sample(image_id=f"im{i}", path=path, labels=chosen))
    return samples


SETTINGS = dict(epochs=2, batch_size=4, lr=1e-2, val_fraction=0.25, maps=2)


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    samples = _samples(tmp_path)
    full = tmp_path / "full.pt"
    metrics = train_head(_classifier(), samples, full, HeadSettings(head="excam", **SETTINGS))
    part = tmp_path / "part.pt"
    train_head(_classifier(), samples, part,
               HeadSettings(head="excam", **{**SETTINGS, "epochs": 1}))
    resumed = train_head(_classifier(), samples, part, HeadSettings(head="excam", **SETTINGS),
                         resume=True)
    a, b = read_head(full)["state_dict"], read_head(part)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    def losses(history: list[dict]) -> list:
        return [(h["epoch"], h["loss"], h["val_map"]) for h in history]

    assert losses(resumed["epochs"]) == losses(metrics["epochs"])
    assert resumed["val_map"] == metrics["val_map"]
    # training moved the head away from its initialization
    assert metrics["epochs"][-1]["loss"] < metrics["epochs"][0]["loss"] or \
        metrics["val_map"] != metrics["val_map_init"]


def test_head_file_is_fp16_and_describes_the_head(tmp_path: Path) -> None:
    out = tmp_path / "head.pt"
    train_head(_classifier(), _samples(tmp_path), out, HeadSettings(**SETTINGS))
    record = read_head(out)
    assert record["backbone"] == "tiny" and record["in_channels"] == FEATURE_CHANNELS
    assert record["state_dict"]["conv.weight"].dtype == torch.float16
    assert record["state_dict"]["conv.weight"].shape == (NUM_CLASSES * 2, FEATURE_CHANNELS, 1, 1)
    saved = json.loads((tmp_path / "head.json").read_text())
    assert saved["classes"] == NUM_CLASSES and len(saved["epochs"]) == 2


def test_initial_head_ranks_like_the_linear_classifier(tmp_path: Path) -> None:
    """With init=linear (no noise) the head's validation mAP before training equals the
    mAP of the classifier's own logits on the same validation images."""
    from wsolkit.eval.classification import multilabel_map

    samples = _samples(tmp_path, 16)
    classifier = _classifier()
    metrics = train_head(classifier, samples, tmp_path / "h.pt",
                         HeadSettings(**{**SETTINGS, "maps": 1, "noise": 0.0, "kmax": 64,
                                         "kmin": 0.0}))
    # kmax = 64 pools the whole 8x8 map: the head's score is the logit plus one common shift.
    ids = torch.load(tmp_path / "h.ckpt.pt", weights_only=True)["train_ids"]
    val = [s for s in samples if s.image_id not in ids]
    images = torch.stack([classifier.preprocess(Image.open(s.path).convert("RGB"))
                          for s in val])
    with torch.no_grad():
        logits = classifier.module(images).numpy()
    targets = np.zeros((len(val), NUM_CLASSES), bool)
    for row, sample in enumerate(val):
        targets[row, list(sample.labels)] = True
    assert metrics["val_map_init"] == pytest.approx(multilabel_map(logits, targets)[0])


def test_existing_checkpoint_without_resume_is_an_error(tmp_path: Path) -> None:
    samples = _samples(tmp_path)
    train_head(_classifier(), samples, tmp_path / "h.pt", HeadSettings(**SETTINGS))
    with pytest.raises(InputError, match="exists: pass resume=True"):
        train_head(_classifier(), samples, tmp_path / "h.pt", HeadSettings(**SETTINGS))


def test_resume_on_another_backbone_is_an_error(tmp_path: Path) -> None:
    samples = _samples(tmp_path)
    train_head(_classifier(), samples, tmp_path / "h.pt", HeadSettings(**SETTINGS))
    with pytest.raises(ModelError, match="not on 'other'"):
        train_head(_classifier("other"), samples, tmp_path / "h.pt", HeadSettings(**SETTINGS),
                   resume=True)


def test_dataset_without_labels_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no image-level labels"):
        train_head(_classifier(), _samples(tmp_path, labels=False), tmp_path / "h.pt",
                   HeadSettings(**SETTINGS))


def test_linear_init_needs_a_linear_layer_of_the_classes(tmp_path: Path) -> None:
    samples = [Sample(s.image_id, s.path, (7,)) for s in _samples(tmp_path)]
    with pytest.raises(ModelError, match="5 classes, the dataset 8"):
        train_head(_classifier(), samples, tmp_path / "h.pt", HeadSettings(**SETTINGS))


@pytest.fixture
def head_file(tmp_path: Path) -> Path:
    out = tmp_path / "head.pt"
    train_head(_classifier(), _samples(tmp_path), out, HeadSettings(head="excam", **SETTINGS))
    return out


@pytest.mark.parametrize("name", ["wildcat", "excam"])
def test_method_returns_the_head_class_maps(head_file: Path, name: str) -> None:
    classifier = _classifier()
    module = classifier.module
    flags = [p.requires_grad for p in module.parameters()]
    method = get_method(name)(classifier, head=str(head_file))
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    result = method(images, target=[0, 2, 4])
    # Independent computation: features -> 1x1 conv (fp16 weights) -> mean of each class's maps.
    state = read_head(head_file)["state_dict"]
    weight, bias = state["conv.weight"].float()[:, :, 0, 0], state["conv.bias"].float()
    with torch.no_grad():
        features = module.features(images)
    maps = torch.einsum("ok,nkhw->nohw", weight, features) + bias[None, :, None, None]
    class_maps = maps.view(3, NUM_CLASSES, 2, *maps.shape[-2:]).mean(2)
    expected = class_maps[torch.arange(3), torch.tensor([0, 2, 4])]
    assert torch.allclose(result.raw, expected, atol=1e-5)
    assert result.maps.shape == (3, 16, 16)
    assert float(result.maps.min()) >= 0 and float(result.maps.max()) <= 1
    assert method.classifier.multi_label
    assert result.logits.shape == (3, NUM_CLASSES)
    assert not module.training and [p.requires_grad for p in module.parameters()] == flags


def test_method_with_a_head_of_another_backbone_is_an_error(head_file: Path) -> None:
    with pytest.raises(ModelError, match="head trained on 'tiny'"):
        get_method("wildcat")(_classifier("other"), head=str(head_file))


def test_method_with_a_head_of_another_class_count_is_an_error(head_file: Path) -> None:
    classifier = _classifier()
    classifier.class_names = [f"c{i}" for i in range(NUM_CLASSES + 1)]
    with pytest.raises(ModelError, match="head has 5 classes, the model 6"):
        get_method("excam")(classifier, head=str(head_file))


def test_method_with_a_file_that_is_not_a_head_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    torch.save({"a": 1}, path)
    with pytest.raises(ModelError, match="not a wsolkit head file"):
        get_method("wildcat")(_classifier(), head=str(path))


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "set"
    (folder / "images").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(folder / "images" / "a.png")
    (folder / "instances.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 32}],
        "annotations": [], "categories": [{"id": 1, "name": "thing"}]}))
    code = main(["train-head", str(folder / "instances.json"), "--out", str(tmp_path / "h.pt"),
                 "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no image-level labels" in err[0]
    code = main(["train-head", str(folder / "instances.json"), "--out", str(tmp_path / "h.pt"),
                 "--epochs", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["wsolkit: error: --epochs must be >= 1; got 0"]


def test_copies_of_one_image_give_every_class_map_of_it(head_file: Path) -> None:
    classifier = _classifier()
    method = get_method("wildcat")(classifier, head=str(head_file))
    image = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    together = method(image.repeat(NUM_CLASSES, 1, 1, 1), target=list(range(NUM_CLASSES)))
    alone = [method(image, target=[c]) for c in range(NUM_CLASSES)]
    assert torch.allclose(together.raw, torch.cat([r.raw for r in alone]), atol=1e-6)
    assert torch.allclose(together.logits, torch.cat([r.logits for r in alone]), atol=1e-6)


@pytest.mark.parametrize("name", ["wildcat", "excam"])
def test_shipped_head_is_the_default_for_the_embedded_model(embedded_model, name: str) -> None:
    from wsolkit.maps.heads import shipped_head

    path = shipped_head(name)
    assert path.is_file() and path.stat().st_size <= 25 * 2**20
    record = read_head(path)
    assert record["backbone"] == "efficientnet_lite0" and record["layer"] == "features.head"
    assert record["kind"] == name and len(record["class_names"]) == 1000
    assert record["dropout"] == ("intent" if name == "excam" else None)
    method = get_method(name)(embedded_model)
    assert Path(method.head_file) == path and method.classifier.multi_label
    image = torch.zeros(2, 3, 224, 224)
    result = method(image, target=[0, 999])
    assert result.raw.shape == (2, 7, 7) and result.logits.shape == (2, 1000)
