import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from wsolkit.apps.engine import JobOptions
from wsolkit.apps.instances import (
    InstanceSettings,
    box_problem,
    encode_rle,
    instance_masks,
    instances_from_json,
    resolve_overlaps,
)
from wsolkit.apps.segment import SegmentSettings, image_heatmaps, segment_heatmap
from wsolkit.apps.segment_core import segment_files
from wsolkit.cli.main import main
from wsolkit.data.shards import read_shards
from wsolkit.errors import InputError
from wsolkit.maps import get_method
from wsolkit.models import as_classifier
from wsolkit.refine.grabcut import FGD, PR_BGD, PR_FGD


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


@pytest.mark.parametrize("rule", ["quantile", "otsu"])
def test_segment_heatmap_rules(rule):
    image, big, small = scene()
    heat = np.zeros((8, 8), np.float32)
    heat[1:6, 1:6] = 1.0
    before = image.copy()
    mask, labels = segment_heatmap(image, heat, SegmentSettings(rule=rule, max_side=32))
    assert mask.shape == big.shape and labels.shape == (32, 32)
    assert np.array_equal(image, before)
    assert iou(mask, big | small) > 0.6


def paper_heatmap():
    """64x64: 1.0 on the red square, 0.2 below it, two faint patches, zeros elsewhere."""
    heat = np.zeros((64, 64), np.float32)
    heat[8:40, 8:40] = 1.0  # 1024 px
    heat[40:48, 8:40] = 0.2  # 256 px
    heat[50:60, 50:60] = 0.001  # 100 px: 0.255 of 255, rounds to 0
    heat[0:4, 50:64] = 0.003  # 56 px: 0.765 of 255, rounds to 1
    return heat


def hand_labels(heat, zero, above_mean):
    """PR_BGD where ``zero``, FGD where ``above_mean``, PR_FGD elsewhere."""
    labels = np.full(heat.shape, PR_FGD, np.uint8)
    labels[zero] = PR_BGD
    labels[above_mean] = FGD
    return labels


def test_paper_rule_seeds_match_a_hand_computation():
    image, _, _ = scene()
    heat = paper_heatmap()
    # mean = (1024 x 1 + 256 x 0.2 + 100 x 0.001 + 56 x 0.003) / 4096 = 1075.468 / 4096 = 0.2626:
    # only the 1.0 square is above it; the 0.2 band and both faint patches are in (0, mean]
    settings = SegmentSettings(rule="paper", crf=False, border=0.0, max_side=None)
    mask, labels = segment_heatmap(image, heat, settings)
    expected = hand_labels(heat, heat == 0, heat == 1.0)
    assert np.array_equal(labels, expected)
    assert mask[heat == 1.0].all()  # GrabCut never drops a sure-foreground seed


def test_paper_preset_scales_to_0_255_before_the_rule():
    image, _, _ = scene()
    heat = paper_heatmap()
    before = heat.copy()
    # on 0..255 the map holds 255 (1024 px), 51 (256 px), 0 (0.001 -> 0.255 rounds to 0) and
    # 1 (0.003 -> 0.765); mean = (1024 x 255 + 256 x 51 + 56 x 1) / 4096 = 66.95
    mask, labels = segment_heatmap(image, heat, SegmentSettings.paper())
    expected = hand_labels(heat, heat <= 0.001, heat == 1.0)
    assert np.array_equal(labels, expected)
    assert (labels[50:60, 50:60] == PR_BGD).all() and (labels[0:4, 50:64] == PR_FGD).all()
    assert np.array_equal(heat, before) and mask[heat == 1.0].all()


def test_paper_preset_settings():
    paper = SegmentSettings.paper()
    assert (paper.network_size, paper.upsample, paper.levels, paper.rule, paper.mean) == (
        "full", "bicubic", 255, "paper", "all")
    assert (paper.crf, paper.border, paper.max_side, paper.converge) == (False, 0.0, None, True)
    assert SegmentSettings.paper(iterations=7).iterations == 7
    for bad in ({"levels": 0}, {"network_size": "half"}, {"upsample": "nearest"},
                {"mean": "median"}):
        with pytest.raises(InputError, match=next(iter(bad))):
            SegmentSettings(**bad).check()


def test_full_size_network_input_with_bicubic_upsampling(tiny_model):
    classifier = as_classifier(tiny_model, layer="features.act")
    pixels, _, _ = scene(size=64)
    image = Image.fromarray(pixels[:20, :28])
    method = get_method("objectness")(classifier, upsample="bicubic")
    maps, layer = image_heatmaps(method, [image], SegmentSettings.paper())
    # by hand: the frame at its own size, normalized, through the layers, channels summed,
    # bicubic to 20 x 28, min-max
    x = (torch.from_numpy(pixels[:20, :28] / 255.0).permute(2, 0, 1).float()
         - torch.tensor(classifier.mean).view(3, 1, 1)) / torch.tensor(classifier.std).view(3, 1, 1)
    with torch.no_grad():
        summed = tiny_model.features(x[None]).sum(dim=1, keepdim=True)  # (1, 1, 10, 14)
    up = torch.nn.functional.interpolate(summed, size=(20, 28), mode="bicubic",
                                         align_corners=False)[0, 0].numpy()
    expected = (up - up.min()) / (up.max() - up.min())
    assert layer == "features.act" and maps[0].shape == (20, 28)
    assert np.allclose(maps[0], expected, atol=1e-5)
    squashed, _ = image_heatmaps(method, [image], SegmentSettings())
    assert squashed[0].shape == classifier.input_size  # the default: the model's input size


def small_vgg16(batch_norm=False):
    """VGG-16's layout (13 3x3 convs, 5 max pools, FC head) with few channels, seeded."""
    torch.manual_seed(0)
    layers, channels = [], 3
    for width in [4, 4, "M", 6, 6, "M", 8, 8, 8, "M", 8, 8, 8, "M", 8, 8, 8, "M"]:
        if width == "M":
            layers.append(torch.nn.MaxPool2d(2, 2))
            continue
        layers.append(torch.nn.Conv2d(channels, width, 3, padding=1))
        layers += [torch.nn.BatchNorm2d(width)] if batch_norm else []
        layers.append(torch.nn.ReLU(inplace=True))
        channels = width
    model = torch.nn.Module()
    model.features = torch.nn.Sequential(*layers)
    model.avgpool = torch.nn.AdaptiveAvgPool2d(7)
    model.classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8 * 49, 16),
                                           torch.nn.ReLU(True), torch.nn.Linear(16, 5))
    model.forward = lambda x: model.classifier(model.avgpool(model.features(x)))
    return model.eval()


def test_objectness_takes_conv5_3_of_a_vgg16():
    from wsolkit.maps.objectness import vgg16_conv5_3

    # torchvision's numbering: vgg16 conv5_3 is features.28, its ReLU features.29; vgg16_bn
    # conv5_3 features.40, BN 41, ReLU 42
    assert vgg16_conv5_3(small_vgg16()) == "features.29"
    assert vgg16_conv5_3(small_vgg16(batch_norm=True)) == "features.42"
    tiny = torch.nn.Sequential()
    tiny.features = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.MaxPool2d(2))
    assert vgg16_conv5_3(tiny) is None
    model = small_vgg16()
    images = torch.randn(1, 3, 64, 48, generator=torch.Generator().manual_seed(1))
    result = get_method("objectness")(model)(images)
    with torch.no_grad():  # by hand: 4 pools -> 4 x 3, the ReLU'd conv5_3 summed over channels
        expected = model.features[:30](images.clone()).sum(dim=1)
    assert result.layer == "features.29" and result.raw.shape == (1, 4, 3)
    assert torch.allclose(result.raw, expected, atol=1e-6)


def test_segment_files_writes_masks(embedded_model, tmp_path):
    image, _, _ = scene()
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(image).save(inputs / "a.png")
    (inputs / "broken.jpg").write_text("not an image")
    before = digest(inputs / "a.png")
    out = tmp_path / "out"
    report = segment_files(embedded_model, sorted(inputs.iterdir()), out,
                           SegmentSettings(max_side=64), maps_dir=tmp_path / "maps",
                           job=JobOptions(workers=0, overlays="all", mask_files=True))
    assert report.written == 2 and len(report.failures) == 1
    row = next(r for r in read_shards(out) if r["status"] == "ok")
    mask = np.asarray(Image.open(out / row["targets"][0]["mask_file"]))
    assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
    assert np.array_equal(np.load(tmp_path / "maps" / "a.npy") > 0, mask > 0)
    assert (out / row["overlay"]).is_file()
    assert json.loads((out / "results.json").read_text())["settings"]["rule"] == "quantile"
    assert digest(inputs / "a.png") == before


# --- command line ---------------------------------------------------------------------------


def test_cli_segment_and_instances(embedded_model, coco_files, capsys):
    root, annotations, detections, _, _ = coco_files
    assert main(["segment", str(root / "images"), "--out", str(root / "seg"), "--quiet",
                 "--max-side", "64", "--mask-files", "--workers", "0", "--jobs", "1"]) == 0
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
    from wsolkit.cli.main import build_parser
    from wsolkit.cli.options import parse_options as _parse_options
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


def test_cli_preset_paper_and_explicit_overrides():
    from wsolkit.cli.main import build_parser
    from wsolkit.cli.segment import segment_settings

    def settings(*extra):
        return segment_settings(build_parser().parse_args(["segment", "x", "--out", "o",
                                                           *extra]), {})

    assert settings("--preset", "paper") == SegmentSettings.paper()
    changed = settings("--preset", "paper", "--iterations", "7", "--max-side", "300",
                       "--rule", "quantile", "--crf")
    assert changed == SegmentSettings.paper(iterations=7, max_side=300, rule="quantile",
                                            crf=True)
    assert settings() == SegmentSettings()  # --preset ours: the measured defaults
    assert settings("--iterations", "3").iterations == 3
