import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from brightness import RECT, brightness_classifier, synthetic_image
from PIL import Image

from wsolkit.apps.proposals import (
    HeatView,
    ProposalSettings,
    proposals_from_views,
    propose,
    selective_search,
)
from wsolkit.cli.main import main
from wsolkit.errors import InputError
from wsolkit.eval.proposals import ProposalRecall

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def bright_model():
    return brightness_classifier()


def test_recall_by_hand():
    metric = ProposalRecall(ious=(0.5, 0.9), counts=(1, 2, 3))
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]])
    proposals = np.array([
        [0, 0, 10, 5],      # IoU 0.5 with GT 0
        [20, 20, 30, 29],   # IoU 0.9 with GT 1
        [0, 0, 10, 10],     # IoU 1 with GT 0
    ])
    best = metric.update(proposals, gt)
    assert best.tolist() == [1.0, 0.9, 0.0]
    # second image: one GT (ignored crowd box aside), no proposals
    metric.update(np.zeros((0, 4)), np.array([[0, 0, 5, 5], [0, 0, 50, 50]]),
                  ignore=[False, True])
    result = metric.compute()
    assert result["gt_boxes"] == 4 and result["images"] == 2
    assert result["recall"]["0.5"] == [0.25, 0.5, 0.5]
    assert result["recall"]["0.9"] == [0.0, 0.25, 0.5]
    metric.reset()
    assert metric.compute()["gt_boxes"] == 0
    with pytest.raises(InputError):
        ProposalRecall(counts=(5, 2))


def test_proposals_from_views_by_hand():
    heat = np.zeros((20, 40))
    heat[2:8, 3:13] = 1.0     # big bright blob
    heat[12:16, 30:34] = 0.5  # small dim blob
    settings = ProposalSettings(thresholds=(0.25, 0.75), nms_iou=0.9, top_k=10, scales=(1.0,),
                                aspects=(1.0,))
    # the view covers image pixels x 100..180 (2x), y 0..20 (1x)
    view = HeatView((100, 0, 180, 20), heat)
    boxes, scores = proposals_from_views([view], (20, 200), settings)
    # the bright blob appears at both thresholds; NMS keeps it once
    assert boxes.tolist() == [[106, 2, 126, 8], [160, 12, 168, 16]]
    # score: mean heat x (box area / image area) ** 0.5
    assert np.allclose(scores, [1.0 * (120 / 4000) ** 0.5, 0.5 * (32 / 4000) ** 0.5])
    one = proposals_from_views([view], (20, 200), replace(settings, thresholds=(0.25,),
                                                            top_k=1))[0]
    assert one.tolist() == [[106, 2, 126, 8]]
    # a variant twice as large (clipped to the image) at half the blob's score
    boxes, scores = proposals_from_views([view], (20, 200), replace(
        settings, thresholds=(0.75,), scales=(1.0, 2.0)))
    assert boxes.tolist() == [[106, 2, 126, 8], [96, 0, 136, 11]]
    assert np.isclose(scores[1], scores[0] / 2)


def test_propose_finds_the_bright_object(bright_model):
    boxes, scores = propose(bright_model, synthetic_image(), top_k=5,
                            settings=ProposalSettings(views=("full",)))
    assert boxes[0].tolist() == list(RECT)
    assert len(boxes) <= 5 and np.all(np.diff(scores) <= 0)
    boxes, _ = propose(bright_model, synthetic_image(), top_k=20)
    assert np.abs(boxes - np.array(RECT)).max(axis=1).min() <= 1
    with pytest.raises(InputError):
        propose(bright_model, synthetic_image().convert("L"))
    with pytest.raises(InputError):
        propose(bright_model, synthetic_image(), settings=ProposalSettings(views=("zoom",)))


def test_selective_search_boxes_are_edges():
    image = Image.open(EXAMPLES / "chelsea.jpg").convert("RGB").resize((96, 64))
    boxes, scores = selective_search(image, top_k=30)
    assert 0 < len(boxes) <= 30 and boxes.dtype == np.float32
    assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
    assert boxes[:, 2].max() <= 96 and boxes[:, 3].max() <= 64
    assert np.all(np.diff(scores) < 0)


def test_cli_proposals_on_images_and_dataset(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    synthetic_image().resize((96, 96)).save(folder / "a.png")
    (folder / "bad.png").write_text("nope")
    out = tmp_path / "out"
    assert main(["proposals", str(folder), "--out", str(out), "--top-k", "7", "--quiet"]) == 1
    data = json.loads((out / "proposals.json").read_text())
    assert data["method"] == "objectness" and len(data["images"]) == 1
    assert 0 < len(data["images"][0]["boxes"]) <= 7
    assert "bad.png" in capsys.readouterr().err
    # a COCO file as dataset: recall table
    (folder / "bad.png").unlink()
    coco = tmp_path / "instances.json"
    coco.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "imgs/a.png", "width": 96, "height": 96}],
        "categories": [{"id": 1, "name": "x"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [30, 15, 24, 24],
                         "iscrowd": 0}]}))
    out2 = tmp_path / "out2"
    assert main(["proposals", "--dataset", str(coco), "--out", str(out2), "--quiet",
                 "--method", "selective-search"]) == 0
    recall = json.loads((out2 / "recall.json").read_text())
    assert recall["gt_boxes"] == 1 and len(recall["recall"]["0.5"]) == 10
    assert "recall @ IoU" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["proposals", "--out", "x"], "PATHS"),
    (["proposals", "nowhere.jpg", "--out", "x"], "no image files"),
    (["proposals", "a.jpg", "--out", "x", "--top-k", "0"], "--top-k"),
    (["proposals", "--dataset", "missing.json", "--out", "x"], "missing.json"),
])
def test_cli_proposals_errors_are_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("wsolkit: error:") and message in err[-1]
