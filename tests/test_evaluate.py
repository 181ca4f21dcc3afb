"""The evaluation job (``wsolkit evaluate`` and ``wsolkit.apps.evaluate``).

Real-data runs use the shared sets with small ``--limit``s; everything else is built in
``tmp_path`` (copies of a few images, synthetic COCO files, ``.npy`` maps).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import wsolkit
from wsolkit.apps.evaluate import EvaluateSettings, evaluate
from wsolkit.apps.report import headline, write_report
from wsolkit.cli.main import main
from wsolkit.data import open_dataset
from wsolkit.maps import method_names

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
IMAGENET = DATA / "imagenet-dev"
DAVIS = DATA / "davis"
COCO_MINI = DATA / "coco-mini"

pytestmark = pytest.mark.skipif(not IMAGENET.is_dir(), reason="shared data not found")


def digest(paths: list[Path]) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def wsol_files(count: int) -> list[Path]:
    """The metadata files and the first ``count`` images of imagenet-dev."""
    ids = (IMAGENET / "image_ids.txt").read_text().split()[:count]
    return sorted(p for p in IMAGENET.iterdir() if p.is_file()) + [IMAGENET / i for i in ids]


def davis_files(count: int) -> list[Path]:
    stems = [p.stem for p in sorted((DAVIS / "images").iterdir())[:count]]
    return [DAVIS / "images" / f"{s}.jpg" for s in stems] + [
        DAVIS / "masks" / f"{s}.png" for s in stems]


def run(*args: object) -> int:
    return main(["evaluate", *map(str, args), "--quiet"])


def read_metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture
def no_plots(monkeypatch):
    """Skip the report's plots: they take most of a small run and are checked elsewhere."""
    import wsolkit.apps.report as report

    for name in ("plot_curves", "plot_histogram", "plot_examples"):
        monkeypatch.setattr(report, name, lambda *args, **kwargs: None)


# -- real data, end to end ------------------------------------------------------------------


def test_imagenet_end_to_end(tmp_path, capsys):
    before = digest(wsol_files(6))
    out = tmp_path / "out"
    assert run(IMAGENET, "--limit", 6, "--method", "cam", "--out", out) == 0
    report = read_metrics(out)
    assert report["images"] == 6 and report["target"] == "gt" and report["failures"] == []
    boxes = report["metrics"]["boxes"]
    for key in ("MaxBoxAcc", "MaxBoxAccV2", "top1_loc", "top5_loc"):
        assert 0 <= boxes[key] <= 100
    assert boxes["top1_loc"] <= boxes["top5_loc"] <= boxes["MaxBoxAcc"]
    assert 0 <= report["metrics"]["pointing"]["accuracy"] <= 100
    assert report["summary"]["MaxBoxAcc"] == boxes["MaxBoxAcc"]
    for name in ("metrics.md", "curves.png", "histogram.png", "examples.png"):
        assert (out / name).stat().st_size > 0
    assert "MaxBoxAcc" in (out / "metrics.md").read_text()
    assert "MaxBoxAcc" in capsys.readouterr().out
    assert digest(wsol_files(6)) == before


def test_davis_pixel_metrics(tmp_path):
    before = digest(davis_files(3))
    out = tmp_path / "out"
    assert run(DAVIS, "--limit", 3, "--method", "gradcam", "--out", out) == 0
    report = read_metrics(out)
    assert report["target"] == "top1" and report["images"] == 3
    pixels = report["metrics"]["pixels"]
    for key in ("PxAP", "mIoU"):
        assert 0 <= pixels[key] <= 100
    for key in ("F_ODS", "F_OIS", "MAE"):
        assert 0 <= pixels[key] <= 1
    assert pixels["counts"]["images"] == 3
    assert "boxes" not in report["metrics"]
    assert digest(davis_files(3)) == before


def test_coco_mini_is_scored_class_agnostic(tmp_path):
    before = digest([COCO_MINI / "instances.json"])
    out = tmp_path / "out"
    assert run(COCO_MINI, "--limit", 2, "--method", "cam", "--out", out) == 0
    report = read_metrics(out)
    metrics = report["metrics"]
    assert report["target"] == "top1" and report["images"] == 2
    assert "boxes" in metrics and "pixels" in metrics
    for key in ("pointing_per_class", "pointing_ap", "detection_ap"):
        assert key not in metrics  # the embedded model's classes are ImageNet's, not COCO's
    assert "pointing mAP" not in report["summary"]
    assert digest([COCO_MINI / "instances.json"]) == before


def test_saved_maps_give_the_same_box_metrics(tmp_path, no_plots):
    maps = tmp_path / "maps"
    first, second = tmp_path / "computed", tmp_path / "loaded"
    assert run(IMAGENET, "--limit", 4, "--method", "cam", "--out", first,
               "--save-maps", maps) == 0
    ids = (IMAGENET / "image_ids.txt").read_text().split()[:4]
    for image_id in ids:
        saved = np.load(maps / f"{image_id}.npy")
        assert saved.shape == (224, 224) and saved.dtype == np.float32
    assert run(IMAGENET, "--limit", 4, "--maps", maps, "--out", second) == 0
    computed, loaded = read_metrics(first)["metrics"], read_metrics(second)["metrics"]
    assert read_metrics(second)["target"] == "maps"
    class_only = {"top1_loc", "top5_loc", "gt_known_loc"}  # need the classifier's predictions
    assert {k: v for k, v in computed["boxes"].items() if k not in class_only} == loaded["boxes"]
    assert computed["pointing"] == loaded["pointing"]


def test_method_all_writes_a_comparison(tmp_path, no_plots):
    out = tmp_path / "out"
    assert run(IMAGENET, "--limit", 2, "--method", "all", "--option", "max_channels=4",
               "--option", "samples=2", "--batch-size", 2, "--out", out) == 0
    table = (out / "comparison.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert [row.split("|")[1].strip() for row in rows[1:]] == method_names()
    comparison = json.loads((out / "comparison.json").read_text())
    assert [row["method"] for row in comparison["rows"]] == method_names()
    for name in method_names():
        assert read_metrics(out / name)["images"] == 2


# -- bad maps --------------------------------------------------------------------------------


def test_bad_map_files_are_listed_and_the_rest_scored(tmp_path, capsys):
    ids = (IMAGENET / "image_ids.txt").read_text().split()[:6]
    maps = tmp_path / "maps"
    (maps / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for image_id in ids[1:]:
        np.save(maps / f"{image_id}.npy", rng.random((7, 7)).astype(np.float32))
    # ids[0]: no file
    bad_nan = rng.random((7, 7))
    bad_nan[3, 3] = np.nan
    np.save(maps / f"{ids[1]}.npy", bad_nan)
    np.save(maps / f"{ids[2]}.npy", rng.random((2, 7, 7)))
    np.save(maps / f"{ids[3]}.npy", np.full((7, 7), 0.3))  # constant: scored, counted
    out = tmp_path / "out"
    assert run(IMAGENET, "--limit", 6, "--maps", maps, "--out", out) == 1
    report = read_metrics(out)
    failed = {f["image_id"]: f["error"] for f in report["failures"]}
    assert set(failed) == set(ids[:3])
    assert "not found" in failed[ids[0]]
    assert "NaN" in failed[ids[1]]
    assert "2-D" in failed[ids[2]]
    assert report["images"] == 3
    assert report["metrics"]["boxes"]["count"] == 3
    assert report["metrics"]["constant_maps"] == 1
    err = capsys.readouterr().err
    assert "3 image(s) could not be scored" in err
    for image_id in ids[:3]:
        assert image_id in err


# -- bad metadata and mask folders ------------------------------------------------------------


def copy_metadata(folder: Path, count: int = 3) -> list[str]:
    """A wsolevaluation folder with copies of the first ``count`` imagenet-dev images."""
    ids = (IMAGENET / "image_ids.txt").read_text().split()[:count]
    (folder / "images").mkdir(parents=True)
    for image_id in ids:
        shutil.copy(IMAGENET / image_id, folder / image_id)
    for name in ("image_ids.txt", "class_labels.txt", "image_sizes.txt", "localization.txt"):
        lines = (IMAGENET / name).read_text().splitlines()
        kept = [line for line in lines if line.split(",")[0] in ids]
        (folder / name).write_text("\n".join(kept) + "\n")
    return ids


def test_malformed_localization_line_is_a_usage_error(tmp_path, capsys):
    folder = tmp_path / "meta"
    ids = copy_metadata(folder)
    localization = folder / "localization.txt"
    lines = localization.read_text().splitlines()
    lines.insert(1, f"{ids[0]},1,2,three,4")
    localization.write_text("\n".join(lines) + "\n")
    assert run(folder, "--maps", tmp_path, "--out", tmp_path / "out") == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"{localization}:2:" in line
    assert not (tmp_path / "out").exists()


def test_image_without_file_is_a_listed_failure(tmp_path, capsys):
    folder = tmp_path / "meta"
    ids = copy_metadata(folder)
    (folder / ids[1]).unlink()
    before = digest(sorted(p for p in folder.rglob("*") if p.is_file()))
    out = tmp_path / "out"
    assert run(folder, "--method", "cam", "--out", out) == 1
    report = read_metrics(out)
    assert [f["image_id"] for f in report["failures"]] == [ids[1]]
    assert str(folder / ids[1]) in report["failures"][0]["error"]
    assert report["images"] == 2 and report["metrics"]["boxes"]["count"] == 2
    assert ids[1] in capsys.readouterr().err
    assert digest(sorted(p for p in folder.rglob("*") if p.is_file())) == before


def test_wrong_size_mask_is_a_listed_failure(tmp_path):
    folder = tmp_path / "masks_set"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    maps = tmp_path / "maps"
    maps.mkdir()
    rng = np.random.default_rng(1)
    for k, mask_size in enumerate([(40, 30), (40, 30), (20, 20)]):
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), np.uint8)).save(
            folder / "images" / f"im{k}.jpg")
        mask = np.zeros(mask_size[::-1], np.uint8)
        mask[5:15, 5:15] = 255
        Image.fromarray(mask).save(folder / "masks" / f"im{k}.png")
        np.save(maps / f"im{k}.npy", rng.random((30, 40)).astype(np.float32))
    out = tmp_path / "out"
    assert run(folder, "--maps", maps, "--out", out) == 1
    report = read_metrics(out)
    (failure,) = report["failures"]
    assert failure["image_id"] == "im2" and "20x20" in failure["error"]
    assert report["images"] == 2
    assert report["metrics"]["pixels"]["counts"]["images"] == 2  # the failed image left out


def test_failed_mask_leaves_every_metric_alone(tmp_path):
    # An image with boxes and a mask of the wrong size: its boxes must not be counted either.
    folder = tmp_path / "meta"
    ids = copy_metadata(folder)
    (folder / "masks").mkdir()
    for k, side in enumerate((227, 227, 100)):
        mask = np.zeros((side, side), np.uint8)
        mask[50:90, 50:90] = 255
        Image.fromarray(mask).save(folder / "masks" / f"m{k}.png")
    with open(folder / "localization.txt", "a") as handle:
        handle.writelines(f"{i},masks/m{k}.png,\n" for k, i in enumerate(ids))
    maps = tmp_path / "maps"
    (maps / "images").mkdir(parents=True)
    for image_id in ids:
        np.save(maps / f"{image_id}.npy", np.random.default_rng(0).random((7, 7)))
    out = tmp_path / "out"
    assert run(folder, "--maps", maps, "--out", out) == 1
    report = read_metrics(out)
    assert [f["image_id"] for f in report["failures"]] == [ids[2]]
    assert "100x100" in report["failures"][0]["error"]
    metrics = report["metrics"]
    assert metrics["boxes"]["count"] == metrics["pointing"]["count"] == 2
    assert metrics["pixels"]["counts"]["images"] == 2


# -- usage errors ------------------------------------------------------------------------------


def test_gt_target_needs_the_model_classes(tmp_path, capsys):
    assert run(DAVIS, "--limit", 1, "--target", "gt", "--out", tmp_path / "out") == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("wsolkit: error: --target gt")
    assert not (tmp_path / "out").exists()


def test_unknown_dataset_format(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run(tmp_path / "empty", "--maps", tmp_path, "--out", tmp_path / "out") == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "unknown dataset format" in line and str(tmp_path / "empty") in line


def test_bad_detection_threshold(tmp_path, capsys):
    code = run(IMAGENET, "--limit", 1, "--maps", tmp_path, "--detection-threshold", 0,
               "--out", tmp_path / "out")
    assert code == 2
    assert "--detection-threshold" in capsys.readouterr().err


# -- multi-label: every class's maps (COCO with a model of the dataset's classes) --------------

CATEGORIES = [(1, "cat"), (2, "dog"), (5, "bird")]


class ThreeClassCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(3, 4, 3, padding=1),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(4, 6, 3, stride=2, padding=1),
            act=nn.ReLU(),
        ))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, len(CATEGORIES))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(images)).flatten(1))


def three_class_model(class_names: list[str] | None) -> wsolkit.Classifier:
    torch.manual_seed(0)
    classifier = wsolkit.as_classifier(ThreeClassCNN().eval())
    return dataclasses.replace(classifier, class_names=class_names, input_size=(32, 32))


@pytest.fixture
def tiny_coco(tmp_path) -> Path:
    """4 images 64x48; boxes per image (category id, bbox, crowd)."""
    annotations = {
        1: [(1, [4, 4, 20, 16], 0), (2, [30, 20, 20, 20], 0)],
        2: [(1, [10, 10, 30, 30], 0)],
        3: [(2, [0, 0, 16, 16], 0), (2, [40, 20, 20, 20], 0), (5, [20, 5, 30, 30], 1)],
        4: [(5, [5, 5, 10, 10], 1), (1, [30, 10, 20, 30], 0)],
    }
    rng = np.random.default_rng(3)
    (tmp_path / "coco").mkdir()
    images, anns = [], []
    for image_id, boxes in annotations.items():
        name = f"img{image_id}.png"
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), np.uint8)).save(tmp_path / "coco" / name)
        images.append({"id": image_id, "file_name": name, "width": 64, "height": 48})
        for category, bbox, crowd in boxes:
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": category,
                         "bbox": bbox, "iscrowd": crowd, "area": bbox[2] * bbox[3]})
    path = tmp_path / "coco" / "instances.json"
    path.write_text(json.dumps({
        "images": images, "annotations": anns,
        "categories": [{"id": c, "name": n} for c, n in CATEGORIES],
    }))
    return path


@pytest.mark.parametrize("method", ["cam", "gradcam"])
def test_multi_label_scores_every_class(tiny_coco, tmp_path, method):
    before = digest(sorted(p for p in tiny_coco.parent.iterdir()))
    dataset = open_dataset(tiny_coco)
    model = three_class_model([name for _, name in CATEGORIES])
    settings = EvaluateSettings(method=method, batch_size=2)
    evaluation = evaluate(dataset, settings, model)
    metrics = evaluation.metrics
    assert evaluation.target == "gt" and evaluation.failures == []

    pointing = metrics["pointing_per_class"]
    # (image, class) pairs with a non-ignored box: 1:{cat, dog}, 2:{cat}, 3:{dog}, 4:{cat}
    assert pointing["count"] == 5
    assert set(pointing["class_accuracy"]) == {0, 1}  # bird is only ever a crowd box
    for value in [pointing["accuracy"], pointing["mean_class_accuracy"],
                  *pointing["class_accuracy"].values()]:
        assert 0 <= value <= 100

    pointing_ap = metrics["pointing_ap"]
    assert pointing_ap["count"] == 4
    assert set(pointing_ap["AP"]) == {0, 1, 2}  # crowd regions hold their class
    detection = metrics["detection_ap"]
    assert detection["count"] == 4
    assert set(detection["AP"]) == {0, 1}  # no AP without a non-ignored box
    for section in (pointing_ap, detection):
        assert 0 <= section["mAP"] <= 100
        assert all(0 <= v <= 100 for v in section["AP"].values())

    # the class-agnostic scores are still there
    assert metrics["boxes"]["count"] == 4 and metrics["pointing"]["count"] == 4

    numbers = write_report(evaluation, tmp_path / "out", "tiny-coco")
    assert numbers["pointing mAP"] == pointing_ap["mAP"]
    assert numbers["detection mAP"] == detection["mAP"]
    table = (tmp_path / "out" / "metrics.md").read_text()
    assert "pointing mAP" in table and "detection mAP" in table
    saved = read_metrics(tmp_path / "out")["metrics"]
    assert set(saved["detection_ap"]["AP"]) == {"0", "1"}
    assert digest(sorted(p for p in tiny_coco.parent.iterdir())) == before


def test_multi_label_detection_threshold_only_affects_detection(tiny_coco):
    dataset = open_dataset(tiny_coco)
    model = three_class_model([name for _, name in CATEGORIES])
    results = [
        evaluate(dataset, EvaluateSettings(method="cam", detection_threshold=t), model).metrics
        for t in (0.05, 0.95)
    ]
    assert results[0]["pointing_ap"] == results[1]["pointing_ap"]
    assert results[0]["boxes"] == results[1]["boxes"]
    assert results[0]["detection_ap"]["count"] == results[1]["detection_ap"]["count"] == 4


def test_multi_label_needs_the_model_classes(tiny_coco):
    dataset = open_dataset(tiny_coco)
    for names in (None, ["a", "b", "c", "d"]):
        model = three_class_model(names)
        metrics = evaluate(dataset, EvaluateSettings(method="cam"), model).metrics
        assert "boxes" in metrics
        for key in ("pointing_per_class", "pointing_ap", "detection_ap"):
            assert key not in metrics
        assert "pointing mAP" not in headline(metrics)


def test_multi_label_with_loaded_maps_is_class_agnostic(tiny_coco, tmp_path):
    dataset = open_dataset(tiny_coco)
    maps = tmp_path / "maps"
    maps.mkdir()
    for image_id in dataset.image_ids:
        np.save(maps / f"{image_id}.npy", np.random.default_rng(0).random((6, 8)))
    model = three_class_model([name for _, name in CATEGORIES])
    evaluation = evaluate(dataset, EvaluateSettings(), model, maps_dir=maps)
    assert evaluation.target == "maps"
    assert "pointing_ap" not in evaluation.metrics and "boxes" in evaluation.metrics


def test_one_call_class_maps_match_one_map_at_a_time():
    from wsolkit.apps.class_scoring import class_maps
    from wsolkit.apps.evaluate import protocol_map

    model = three_class_model(["cat", "dog", "bird"])
    method = wsolkit.get_method("gradcam")(model)
    image = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    maps = class_maps(method, image, 3, min_probability=0.0, present=(0, 1, 2))
    assert sorted(maps.grids) == [0, 1, 2] and maps.detect == [0, 1, 2]
    logits = model.module(image)[0]
    np.testing.assert_allclose(maps.probabilities, logits.softmax(0).detach().numpy(), atol=1e-6)
    for c in range(3):
        single = method(image, target=c)
        # The protocol resizes the ReLU'd layer-resolution map, as wsolevaluation does.
        source = single.raw[0].clamp(min=0).numpy()
        np.testing.assert_allclose(maps.grids[c], protocol_map(source), atol=1e-5)
        assert maps.peak_values[c] == pytest.approx(float(single.raw.max()), abs=1e-5)


def test_class_scorer_known_answers():
    from wsolkit.apps.class_scoring import ClassMaps, ClassScorer
    from wsolkit.data.sample import Sample

    # A 448x448 image: boxes are halved on the 224 grid. Class 0 has a box and a map blob
    # inside it, class 1 a box but its blob elsewhere, class 2 only a crowd box.
    boxes = np.array([[40, 40, 200, 200], [240, 240, 400, 400], [0, 300, 100, 440]], np.float32)
    sample = Sample("a.jpg", Path("a.jpg"), (0, 1, 2), boxes, np.array([0, 1, 2]),
                    np.array([False, False, True]), (448, 448))
    grids = np.zeros((3, 224, 224), np.float32)
    grids[0, 30:90, 30:90] = 1.0  # the scaled class-0 box is 20..100
    grids[1, 10:40, 150:200] = 1.0  # far from the class-1 box (120..200)
    grids[2, 160:210, 5:45] = 1.0  # on the crowd box (0..50, 150..220)
    scorer = ClassScorer(3, 0.5)
    scorer.add(sample, ClassMaps(np.array([3.0, 2.0, 1.0]), np.array([0.5, 0.3, 0.2]),
                                 dict(enumerate(grids)), [0, 1, 2]), (448, 448))
    metrics = scorer.compute()
    assert metrics["pointing_per_class"]["class_accuracy"] == {0: 100.0, 1: 0.0}
    assert metrics["pointing_ap"]["AP"] == {0: 100.0, 1: 0.0, 2: 100.0}
    assert metrics["detection_ap"]["AP"] == {0: 100.0, 1: 0.0}
    assert metrics["detection_ap"]["mAP"] == 50.0
    # every class is a label of the only image: each ranks its one positive first
    assert metrics["classification_map"]["mAP"] == 100.0
