import hashlib
import json

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from wsolkit.apps.instances import (
    InstanceSettings,
    box_problem,
    encode_rle,
    instance_masks,
    instances_from_json,
    resolve_overlaps,
)
from wsolkit.apps.segment import SegmentSettings, segment_files, segment_heatmap
from wsolkit.cli.main import main
from wsolkit.errors import InputError
from wsolkit.refine.grabcut import BGD, FGD


def scene(size=64, seed=0):
    """Grey noisy background, a red square [8, 40) and a small blue square [30, 46)."""
    rng = np.random.default_rng(seed)
    image = np.full((size, size, 3), 128.0)
    image[8:40, 8:40] = (220, 30, 30)
    image[30:46, 30:46] = (30, 30, 220)
    image += rng.normal(0, 8, image.shape)
    big = np.zeros((size, size), bool)
    big[8:40, 8:40] = True
    small = np.zeros((size, size), bool)
    small[30:46, 30:46] = True
    return np.clip(image, 0, 255).astype(np.uint8), big & ~small, small


def centre_heatmaps(crops):
    """A fake heatmap method: a Gaussian bump in the middle of every crop (no model)."""
    out = []
    for crop in crops:
        h, w = crop.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w]
        bump = np.exp(-(((yy - h / 2) / (h / 4)) ** 2 + ((xx - w / 2) / (w / 4)) ** 2))
        out.append((bump / bump.max()).astype(np.float32))
    return out


def iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- overlap and masks ----------------------------------------------------------------------


def test_smaller_mask_is_on_top():
    masks = np.zeros((3, 10, 10), bool)
    masks[0, 0:8, 0:8] = True  # 64 px
    masks[1, 4:6, 4:6] = True  # 4 px, inside 0 and 2
    masks[2, 3:9, 3:9] = True  # 36 px
    before = masks.copy()
    out = resolve_overlaps(masks)
    assert np.array_equal(masks, before)
    assert np.array_equal(out[1], masks[1])
    assert np.array_equal(out[2], masks[2] & ~masks[1])
    assert np.array_equal(out[0], masks[0] & ~masks[1] & ~masks[2])
    assert out.sum(axis=0).max() == 1


def test_instance_masks_with_heatmap_seeds():
    image, big, small = scene()
    settings = InstanceSettings(max_side=None)
    boxes = np.array([[8, 8, 40, 40], [30, 30, 46, 46]], np.float32)
    masks, problems = instance_masks(image, boxes, centre_heatmaps, settings)
    assert problems == [None, None]
    assert iou(masks[1], small) > 0.8
    out = resolve_overlaps(masks)
    assert iou(out[0], big) > 0.7 and not (out[0] & out[1]).any()


@pytest.mark.parametrize("box, reason", [
    ((10, 10, 10, 30), "zero or negative size"),
    ((30, 30, 10, 10), "zero or negative size"),
    ((70, 70, 90, 90), "outside the image"),
    ((-20, -20, -2, -2), "outside the image"),
    ((0, 0, np.nan, 5), "finite"),
])
def test_bad_boxes_are_reported_not_raised(box, reason):
    image, _, _ = scene()
    assert reason in box_problem(box, image.shape[:2])
    masks, problems = instance_masks(image, np.array([box, (8, 8, 40, 40)], np.float64),
                                     centre_heatmaps, InstanceSettings())
    assert reason in problems[0] and problems[1] is None
    assert not masks[0].any() and masks[1].any()


def test_box_covering_the_whole_image_and_partly_outside():
    image, _, _ = scene()
    masks, problems = instance_masks(
        image, np.array([(0, 0, 64, 64), (-10, -10, 200, 200), (50, 50, 90, 90)]),
        centre_heatmaps, InstanceSettings(),
    )
    assert problems == [None, None, None]
    assert masks[0].any() and masks[1].any() and masks[2].any()
    assert not masks[2][:48].any() and not masks[2][:, :48].any()


# --- COCO JSON ------------------------------------------------------------------------------


@pytest.fixture
def coco_files(tmp_path):
    image, big, small = scene()
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(image).save(folder / "000000000007.png")
    dataset = {
        "images": [{"id": 7, "file_name": "000000000007.png", "width": 64, "height": 64}],
        "categories": [{"id": 1, "name": "square"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "bbox": [8, 8, 32, 32], "iscrowd": 0,
             "area": 1024},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [30, 30, 16, 16], "iscrowd": 0,
             "area": 256},
            {"id": 3, "image_id": 7, "category_id": 1, "bbox": [0, 0, 20, 20], "iscrowd": 1,
             "area": 400, "segmentation": {"size": [64, 64], "counts": "0"}},
            {"id": 4, "image_id": 7, "category_id": 1, "bbox": [100, 100, 5, 5], "iscrowd": 0,
             "area": 25},
        ],
    }
    annotations = tmp_path / "instances.json"
    annotations.write_text(json.dumps(dataset))
    detections = tmp_path / "detections.json"
    detections.write_text(json.dumps([
        {"image_id": 7, "category_id": 1, "bbox": [8, 8, 32, 32], "score": 0.9},
        {"image_id": 7, "category_id": 1, "bbox": [30, 30, 16, 16], "score": 0.8},
        {"image_id": 7, "category_id": 1, "bbox": [5, 5, 0, 10], "score": 0.1},
    ]))
    return tmp_path, annotations, detections, big, small


def test_dataset_round_trip_with_rle(coco_files):
    root, annotations, _, big, small = coco_files
    before = digest(annotations)
    out = root / "out" / "masks.json"
    report = instances_from_json(None, annotations, None, out, InstanceSettings(),
                                 heatmaps=centre_heatmaps)
    assert digest(annotations) == before
    assert (report.segmented, report.crowd, report.images) == (2, 1, 1)
    assert report.skipped == [("annotation 4", "box lies outside the image")]
    result = json.loads(out.read_text())
    anns = {a["id"]: a for a in result["annotations"]}
    assert result["images"] == json.loads(annotations.read_text())["images"]
    decoded = {k: mask_utils.decode(anns[k]["segmentation"]).astype(bool) for k in (1, 2)}
    assert iou(decoded[2], small) > 0.8 and iou(decoded[1], big) > 0.7
    assert not (decoded[1] & decoded[2]).any()  # the smaller mask is on top
    assert anns[1]["area"] == int(decoded[1].sum())
    assert anns[3] == json.loads(annotations.read_text())["annotations"][2]  # crowd untouched
    assert "segmentation" not in anns[4]


def test_results_list_round_trip(coco_files):
    root, annotations, detections, _, small = coco_files
    out = root / "segm.json"
    report = instances_from_json(None, annotations, detections, out, InstanceSettings(),
                                 heatmaps=centre_heatmaps)
    assert report.segmented == 2 and report.skipped[0][0] == "entry 2"
    result = json.loads(out.read_text())
    assert [r["score"] for r in result] == [0.9, 0.8]
    assert iou(mask_utils.decode(result[1]["segmentation"]).astype(bool), small) > 0.8


def test_results_for_an_image_folder_match_integer_stems(coco_files):
    root, _, detections, _, _ = coco_files
    out = root / "folder.json"
    report = instances_from_json(None, root / "images", detections, out, InstanceSettings(),
                                 heatmaps=centre_heatmaps)
    assert report.segmented == 2


def test_saved_maps_are_the_union_of_each_images_masks(coco_files):
    root, annotations, _, big, small = coco_files
    maps = root / "maps"
    instances_from_json(None, annotations, None, root / "m.json", InstanceSettings(),
                        heatmaps=centre_heatmaps, maps_dir=maps)
    saved = np.load(maps / "000000000007.npy")
    assert saved.dtype == np.float32 and saved.shape == big.shape
    assert set(np.unique(saved)) <= {0.0, 1.0} and iou(saved > 0, big | small) > 0.7


def test_check_inputs_counts_images_and_rejects_unknown_ids(coco_files):
    from wsolkit.apps.instances import check_inputs

    root, annotations, detections, _, _ = coco_files
    assert check_inputs(annotations, detections, root / "o.json") == 1
    (root / "unknown.json").write_text(json.dumps([{"image_id": 8, "bbox": [1, 1, 2, 2]}]))
    with pytest.raises(InputError, match="unknown image 8"):
        check_inputs(annotations, root / "unknown.json", root / "o.json")


def test_output_must_not_overwrite_an_input(coco_files):
    _, annotations, detections, _, _ = coco_files
    with pytest.raises(InputError, match="overwrite"):
        instances_from_json(None, annotations, detections, detections, InstanceSettings(),
                            heatmaps=centre_heatmaps)


def test_encode_rle_is_json_ready():
    mask = np.zeros((5, 7), bool)
    mask[1:3, 2:6] = True
    rle = encode_rle(mask)
    assert isinstance(rle["counts"], str) and rle["size"] == [5, 7]
    assert np.array_equal(mask_utils.decode(json.loads(json.dumps(rle))).astype(bool), mask)


# --- whole-image segmentation ---------------------------------------------------------------


@pytest.mark.parametrize("rule", ["paper", "quantile", "otsu"])
def test_segment_heatmap_rules(rule):
    image, big, small = scene()
    heat = np.zeros((8, 8), np.float32)
    heat[1:6, 1:6] = 1.0
    before = image.copy()
    mask, labels = segment_heatmap(image, heat, SegmentSettings(rule=rule, max_side=32))
    assert mask.shape == big.shape and labels.shape == (32, 32)
    assert np.array_equal(image, before)
    if rule != "paper":
        assert iou(mask, big | small) > 0.6
    else:  # MASON's rule: no sure background (but the border frame), FGD where v > mean
        inner = labels[1:-1, 1:-1]
        assert not (inner == BGD).any() and (labels[[0, -1], :] == BGD).all()
        sure = np.argwhere(labels == FGD)
        assert len(sure) > 0
        assert sure.min() >= 4 and sure.max() < 24  # inside the heat's support [1, 6) x 4
        grown = cv2.resize((labels == FGD).astype(np.uint8), (64, 64),
                           interpolation=cv2.INTER_NEAREST).astype(bool)
        assert mask[grown].all()  # GrabCut never drops a sure-foreground seed


def test_segment_files_writes_masks(embedded_model, tmp_path):
    image, _, _ = scene()
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(image).save(inputs / "a.png")
    (inputs / "broken.jpg").write_text("not an image")
    before = digest(inputs / "a.png")
    out = tmp_path / "out"
    report = segment_files(embedded_model, sorted(inputs.iterdir()), out,
                           SegmentSettings(max_side=64), maps_dir=tmp_path / "maps")
    assert len(report.records) == 1 and len(report.failures) == 1
    mask = np.asarray(Image.open(out / report.records[0]["mask"]))
    assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
    assert np.array_equal(np.load(tmp_path / "maps" / "a.npy") > 0, mask > 0)
    assert (out / report.records[0]["overlay"]).is_file()
    assert json.loads((out / "results.json").read_text())["settings"]["rule"] == "quantile"
    assert digest(inputs / "a.png") == before


# --- command line ---------------------------------------------------------------------------


def test_cli_segment_and_instances(embedded_model, coco_files, capsys):
    root, annotations, detections, _, _ = coco_files
    assert main(["segment", str(root / "images"), "--out", str(root / "seg"), "--quiet",
                 "--max-side", "64"]) == 0
    assert (root / "seg" / "000000000007.mask.png").is_file()
    out = root / "cli.json"
    assert main(["instances", str(annotations), "--boxes", str(detections), "--out", str(out),
                 "--quiet"]) == 0
    assert len(json.loads(out.read_text())) == 2
    err = capsys.readouterr().err
    assert "skipped entry 2: box has zero or negative size" in err


@pytest.mark.parametrize("argv, message", [
    (["instances", "{root}/missing.json", "--out", "{root}/o.json"], "no such file"),
    (["instances", "{root}/images", "--out", "{root}/o.json"], "needs --boxes"),
    (["instances", "{root}/instances.json", "--boxes", "{root}/images/000000000007.png",
      "--out", "{root}/o.json"], "not valid JSON"),
    (["instances", "{root}/instances.json", "--out", "{root}/instances.json"], "overwrite"),
    (["instances", "{root}/instances.json", "--out", "{root}/o.json", "--context", "-1"],
     "--context"),
    (["instances", "{root}/instances.json", "--boxes", "{root}/unknown.json",
      "--out", "{root}/o.json"], "unknown image 8"),
    (["segment", "{root}/nothing-here", "--out", "{root}/s"], "no image files"),
    (["segment", "{root}/images", "--out", "{root}/s", "--method", "nope"], "nope"),
])
def test_cli_errors_are_one_line(coco_files, capsys, argv, message):
    root = coco_files[0]
    (root / "unknown.json").write_text(json.dumps([{"image_id": 8, "bbox": [1, 1, 2, 2]}]))
    assert main([a.format(root=root) for a in argv] + ["--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("wsolkit: error:") and message in err[-1]


def test_cli_settings_keep_measured_defaults_unless_another_rule():
    from wsolkit.apps.instances import InstanceSettings as Settings
    from wsolkit.cli.main import build_parser
    from wsolkit.cli.segment import _settings_kwargs

    def kwargs(*extra):
        args = build_parser().parse_args(["instances", "x.json", "--out", "o.json", *extra])
        return _settings_kwargs(args, {}, Settings.rule)

    assert Settings(**kwargs()) == Settings()
    otsu = Settings(**kwargs("--rule", "otsu", "--fg", "0.4"))
    assert (otsu.rule, otsu.fg, otsu.bg) == ("otsu", 0.4, "default")
    assert kwargs("--bg", "none")["bg"] is None
    args = build_parser().parse_args(["instances", "x.json", "--out", "o.json",
                                      "--prior-sigma", "none"])
    assert args.prior_sigma is None


@pytest.mark.parametrize("command, flag, field", [
    (command, flag, field) for command in ("segment", "instances")
    for flag, field in (("--fg", "fg"), ("--split", "split"), ("--bg", "bg"),
                        ("--max-side", "max_side"))
] + [("instances", "--prior-sigma", "prior_sigma")])
def test_cli_none_reaches_the_settings_as_none(command, flag, field):
    from wsolkit.apps.instances import InstanceSettings
    from wsolkit.apps.segment import SegmentSettings
    from wsolkit.cli.main import _parse_options, build_parser
    from wsolkit.cli.segment import instance_settings, segment_settings

    build = segment_settings if command == "segment" else instance_settings
    defaults = SegmentSettings() if command == "segment" else InstanceSettings()
    base = [command, "x.json", "--out", "o"]
    given = build(build_parser().parse_args([*base, flag, "none"]), {})
    assert getattr(given, field) is None
    unset = build(build_parser().parse_args(base), {})
    assert getattr(unset, field) == getattr(defaults, field)  # not given: the measured default
    if field == "max_side":
        assert defaults.max_side is not None  # so "none" (full size) is a real choice
        assert build(build_parser().parse_args([*base, flag, "96"]), {}).max_side == 96
    assert _parse_options(["scale=none"]) == {"scale": None}  # --option KEY=none too
