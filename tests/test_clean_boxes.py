import hashlib
import json
import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from brightness import RECT, SIZE, brightness_classifier, synthetic_image

from wsolkit.apps.annotation_io import read_annotations
from wsolkit.apps.clean_boxes import (
    AUTO_CAP,
    CleanSettings,
    calibrate,
    clean_annotations,
    judge_box,
)
from wsolkit.cli.main import main
from wsolkit.errors import InputError
from wsolkit.models import Classifier


@pytest.fixture
def bright_model() -> Classifier:
    return brightness_classifier()


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def coco_file(tmp_path):
    folder = tmp_path / "coco"
    (folder / "images").mkdir(parents=True)
    synthetic_image().save(folder / "images" / "a.png")
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [14, 6, 28, 26], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [45, 40, 15, 15], "iscrowd": 0},
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [0, 0, 64, 64], "iscrowd": 1},
        {"id": 4, "image_id": 1, "category_id": 1, "bbox": [10, 10, 0, 5], "iscrowd": 0},
        {"id": 5, "image_id": 1, "category_id": 1, "bbox": [100, 100, 10, 10], "iscrowd": 0},
        {"id": 6, "image_id": 1, "category_id": 1, "bbox": [1, 2, "a", 4], "iscrowd": 0},
        {"id": 7, "image_id": 99, "category_id": 1, "bbox": [1, 2, 3, 4], "iscrowd": 0},
        {"id": 8, "image_id": 1, "category_id": 1, "bbox": [16, -10, 24, 40], "iscrowd": 0},
        {"id": 9, "image_id": 1, "category_id": 1, "bbox": [2, 40, 12, 20], "iscrowd": 0},
    ]
    data = {"images": [{"id": 1, "file_name": "a.png", "width": SIZE, "height": SIZE}],
            "categories": [{"id": 1, "name": "thing"}], "annotations": anns}
    path = folder / "instances.json"
    path.write_text(json.dumps(data))
    return path


def test_judge_box_tightens_to_the_exact_blob():
    heat = np.zeros((40, 60), np.float32)
    heat[10:20, 20:35] = 1.0
    heat[12:14, 22:24] = 0.8  # texture inside the blob
    heat[30:33, 5:8] = 0.9  # another blob outside the box
    score, tight = judge_box(heat, np.array([15.0, 5.0, 45.0, 28.0]))
    assert tight.tolist() == [20, 10, 35, 20]
    assert score > 0.2
    # two blobs inside the box: the largest one wins
    heat[22:24, 40:42] = 1.0
    _, tight = judge_box(heat, np.array([15.0, 5.0, 45.0, 28.0]))
    assert tight.tolist() == [20, 10, 35, 20]


def test_judge_box_on_empty_region_scores_low():
    heat = np.zeros((40, 60), np.float32)
    heat[10:20, 20:35] = 1.0
    score, _ = judge_box(heat, np.array([40.0, 25.0, 58.0, 39.0]))
    assert score < 0
    score, tight = judge_box(np.zeros((10, 10)), np.array([2.0, 2.0, 5.0, 5.0]))
    assert score == 0 and tight is None


def test_calibrate_otsu_with_cap():
    scores = np.r_[np.full(20, -0.05), np.full(30, 0.3)]
    threshold, rule = calibrate(scores)
    assert -0.05 < threshold <= AUTO_CAP and "Otsu" in rule
    low = np.r_[np.full(20, -0.2), np.full(30, -0.1)]
    threshold, _ = calibrate(low)
    assert -0.2 < threshold <= -0.1
    assert calibrate(np.array([0.5]))[0] == AUTO_CAP


@pytest.mark.parametrize("scoring", ["image", "crop"])
def test_clean_coco_flags_tightens_and_skips(bright_model, coco_file, tmp_path, scoring):
    before = sha(coco_file)
    annotations = read_annotations(coco_file)
    out = tmp_path / "out"
    result = clean_annotations(bright_model, annotations, out, CleanSettings(scoring=scoring))
    assert sha(coco_file) == before
    by_key = {b.key: b for b in result.annotations.boxes}
    status = {k: by_key[f"annotation {k}"].status for k in range(1, 10)}
    assert status == {1: "ok", 2: "ok", 3: "crowd", 4: "degenerate", 5: "outside",
                      6: "malformed", 7: "no_image", 8: "ok", 9: "ok"}
    good = by_key["annotation 1"]
    assert good.action == "tightened"
    if scoring == "image":
        assert good.new_box.tolist() == list(RECT)
    else:  # the crop is resized to the model input and back: within a pixel
        assert np.abs(good.new_box - np.array(RECT)).max() <= 1.0
    assert by_key["annotation 2"].action == "flagged"
    assert by_key["annotation 9"].action == "flagged"
    clipped = by_key["annotation 8"]
    assert clipped.clipped and clipped.action == "tightened"
    assert clipped.new_box.min() >= 0 and clipped.new_box.max() <= SIZE

    written = json.loads((out / "instances.json").read_text())
    anns = {a["id"]: a for a in written["annotations"]}
    assert len(anns) == 9
    assert anns[2]["flagged"] == "no_dominant_object"
    assert anns[1]["bbox_original"] == [14, 6, 28, 26]
    assert "objectness_score" not in anns[3] and anns[3]["bbox"] == [0, 0, 64, 64]
    report = (out / "report.html").read_text()
    assert "data:image/png;base64," in report and "crowd annotation" in report
    assert (out / "report" / "score_histogram.png").stat().st_size > 0
    changes = json.loads((out / "changes.json").read_text())
    assert {c["key"] for c in changes["skipped"]} == {f"annotation {k}" for k in range(3, 8)}


def test_clean_coco_drop_and_margin(bright_model, coco_file, tmp_path):
    out = tmp_path / "out"
    settings = CleanSettings(scoring="image", drop=True, margin=0.25)
    clean_annotations(bright_model, read_annotations(coco_file), out, settings)
    anns = {a["id"]: a for a in json.loads((out / "instances.json").read_text())["annotations"]}
    assert 2 not in anns and 9 not in anns and 3 in anns
    assert anns[1]["bbox"] == [16.0, 6.0, 24.0, 24.0]  # 16x16 blob grown by 4 px per side


def test_refuses_to_overwrite_the_input(bright_model, coco_file):
    with pytest.raises(InputError, match="overwrite"):
        clean_annotations(bright_model, read_annotations(coco_file), coco_file.parent)


def test_clean_voc_folder(bright_model, tmp_path):
    root = tmp_path / "voc"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    synthetic_image().save(root / "JPEGImages" / "a.jpg", quality=100)
    xml = root / "Annotations" / "a.xml"
    xml.write_text(
        "<annotation><filename>a.jpg</filename><size><width>64</width><height>64</height>"
        "<depth>3</depth></size>"
        "<object><name>thing</name><difficult>0</difficult><bndbox><xmin>15</xmin>"
        "<ymin>7</ymin><xmax>42</xmax><ymax>32</ymax></bndbox></object>"
        "<object><name>thing</name><bndbox><xmin>46</xmin><ymin>41</ymin><xmax>60</xmax>"
        "<ymax>60</ymax></bndbox></object>"
        "<object><name>thing</name><bndbox><xmin>5</xmin><ymin>5</ymin><xmax>5</xmax>"
        "<ymax>20</ymax></bndbox></object>"
        "<object><name>thing</name><bndbox><xmin>3</xmin></bndbox></object>"
        "</annotation>")
    before = sha(xml)
    out = tmp_path / "out"
    result = clean_annotations(bright_model, read_annotations(root), out,
                               CleanSettings(scoring="image", drop=True))
    assert sha(xml) == before
    assert [b.action for b in result.annotations.boxes] == [
        "tightened", "dropped", "skipped", "skipped"]
    objects = ET.parse(out / "Annotations" / "a.xml").getroot().findall("object")
    assert len(objects) == 3
    box = objects[0].find("bndbox")
    # JPEG ringing may add a pixel at the rectangle's edge
    got = [int(box.find(t).text) for t in ("xmin", "ymin", "xmax", "ymax")]
    assert np.abs(np.array(got) - np.array([21, 11, 36, 26])).max() <= 1
    assert not math.isnan(float(objects[0].find("objectness_score").text))


def test_unreadable_image_is_listed_not_fatal(bright_model, coco_file, tmp_path):
    (coco_file.parent / "images" / "a.png").write_bytes(b"not an image")
    result = clean_annotations(bright_model, read_annotations(coco_file), tmp_path / "out",
                               CleanSettings(scoring="image"))
    assert result.failures and all(b.action == "skipped" for b in result.annotations.boxes)
    assert (tmp_path / "out" / "report.html").exists()


def test_cli_clean_boxes(coco_file, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["clean-boxes", str(coco_file), "--out", str(out), "--quiet",
                 "--threshold", "0.05", "--scoring", "image"]) == 0
    assert json.loads((out / "instances.json").read_text())["annotations"]
    assert "threshold 0.050" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["clean-boxes", "missing.json", "--out", "x"], "missing.json"),
    (["clean-boxes", "{coco}", "--out", "{tmp}/o", "--threshold", "abc"], "--threshold"),
    (["clean-boxes", "{coco}", "--out", "{tmp}/o", "--margin", "9"], "--margin"),
    (["clean-boxes", "{coco}", "--out", "{tmp}/o", "--method", "nope"], "nope"),
    (["clean-boxes", "{coco}", "--out", "{coco}"], "not a folder"),
    (["clean-boxes", "{coco}", "--out", "{tmp}/o", "--images", "{tmp}/none"], "--images"),
])
def test_cli_clean_boxes_errors_are_one_line(coco_file, tmp_path, capsys, argv, message):
    argv = [a.format(coco=coco_file, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("wsolkit: error:") and len(err.splitlines()) == 1 and message in err
