"""ImageNet-style mosaics (wsolkit.apps.mosaics, ``wsolkit mosaics``)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsolkit.apps.mosaics import build_mosaics, plan_mosaics
from wsolkit.cli.main import main
from wsolkit.data import open_dataset
from wsolkit.errors import InputError

NAMES = [f"n{i:08d} class {i}" for i in range(10)]


def _color(k: int) -> tuple[int, int, int]:
    """A distinct flat colour per source image (far apart, so JPEG keeps them apart)."""
    return ((k * 67) % 256, (k * 141 + 40) % 256, (k * 29 + 200) % 256)


def make_set(root: Path, labels: list[int], boxes: dict[int, list[tuple]] | None = None,
             size: tuple[int, int] = (80, 40)) -> Path:
    """A wsolevaluation folder of flat-coloured images; boxes are inclusive corners."""
    (root / "images").mkdir(parents=True)
    ids = []
    for k in range(len(labels)):
        image_id = f"images/img{k}.png"
        Image.new("RGB", size, _color(k)).save(root / image_id)
        ids.append(image_id)
    (root / "image_ids.txt").write_text("\n".join(ids) + "\n")
    (root / "class_labels.txt").write_text(
        "".join(f"{i},{c}\n" for i, c in zip(ids, labels, strict=True)))
    (root / "image_sizes.txt").write_text("".join(f"{i},{size[0]},{size[1]}\n" for i in ids))
    (root / "class_names.txt").write_text("\n".join(NAMES) + "\n")
    if boxes is not None:
        (root / "localization.txt").write_text("".join(
            f"{ids[k]},{x0},{y0},{x1},{y1}\n" for k, found in boxes.items()
            for x0, y0, x1, y1 in found))
    return root


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture()
def boxed(tmp_path):
    boxes = {k: [(4, 2, 13, 7)] for k in range(8)}
    boxes[3].append((70, 30, 79, 39))  # a second box, touching the image's right/bottom edge
    return make_set(tmp_path / "src", [0, 1, 2, 3, 4, 5, 6, 7], boxes)


def test_boxes_land_where_the_tile_was_pasted(boxed, tmp_path):
    before = _tree_digest(boxed)
    report = build_mosaics(open_dataset(boxed), tmp_path / "out", grid=2, seed=3, tile=40)
    assert _tree_digest(boxed) == before  # inputs untouched
    data = json.loads(report.annotation_file.read_text())
    assert report.images == 2 and len(data["images"]) == 2
    checked = 0
    for entry in data["images"]:
        pixels = np.asarray(Image.open(tmp_path / "out" / "images" / entry["file_name"]))
        assert pixels.shape == (80, 80, 3)
        anns = [a for a in data["annotations"] if a["image_id"] == entry["id"]]
        for row in range(2):
            for col in range(2):
                # which source is in this cell: found from the pixels, not from the JSON
                centre = pixels[row * 40 + 20, col * 40 + 20].astype(int)
                k = min(range(8), key=lambda j: np.abs(centre - _color(j)).sum())
                assert np.abs(centre - _color(k)).max() <= 6
                # 80x40 source into a 40x40 tile: x halves, y stays; inclusive corners -> +1
                expected = [[col * 40 + 2.0, row * 40 + 2.0, 5.0, 6.0]]
                if k == 3:
                    expected.append([col * 40 + 35.0, row * 40 + 30.0, 5.0, 10.0])
                found = sorted(a["bbox"] for a in anns if a["category_id"] == k + 1)
                np.testing.assert_allclose(found, sorted(expected), atol=1e-6)
                checked += 1
    assert checked == 8


def test_every_mosaic_holds_distinct_classes(tmp_path):
    labels = [0, 0, 0, 1, 1, 2, 2, 3, 4, 4, 5, 0]
    source = make_set(tmp_path / "src", labels)
    report = build_mosaics(open_dataset(source), tmp_path / "out", grid=2, seed=0, repeats=3,
                           tile=32)
    data = json.loads(report.annotation_file.read_text())
    assert report.images >= 6
    for entry in data["images"]:
        classes = [labels[int(t["source"][len("images/img"):-len(".png")])]
                   for t in entry["tiles"]]
        assert len(set(classes)) == 4
    # each draw uses a source image at most once
    for repeat in range(3):
        sources = [t["source"] for e in data["images"] if e["file_name"].startswith(f"r{repeat}_")
                   for t in e["tiles"]]
        assert len(sources) == len(set(sources))


def test_plan_groups_brute_force_distinct():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 6, 40).tolist()
    for seed in range(5):
        plan = plan_mosaics(labels, 4, seed, 0)
        flat = [i for m in plan for i in m]
        assert len(flat) == len(set(flat))
        assert all(len({labels[i] for i in m}) == 4 for m in plan)
        # greedy never stops while a complete distinct group is left among unused images
        unused = {labels[i] for i in set(range(40)) - set(flat)}
        assert len(unused) < 4


def test_same_seed_same_bytes_other_seed_other_draw(boxed, tmp_path):
    runs = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        build_mosaics(open_dataset(boxed), tmp_path / name, grid=2, seed=seed, tile=40)
        runs.append(_tree_digest(tmp_path / name))
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_round_trip_through_open_dataset(boxed, tmp_path):
    build_mosaics(open_dataset(boxed), tmp_path / "out", grid=2, seed=0, tile=40)
    mosaics = open_dataset(tmp_path / "out" / "instances.json")
    data = json.loads((tmp_path / "out" / "instances.json").read_text())
    assert mosaics.class_names == NAMES
    assert [c["id"] for c in data["categories"]] == list(range(1, 11))
    assert len(mosaics) == 2
    for sample, entry in zip(mosaics, data["images"], strict=True):
        tile_classes = sorted(int(t["source"][len("images/img"):-len(".png")])
                              for t in entry["tiles"])
        assert list(sample.labels) == tile_classes  # class index k is source image k's label
        assert sample.path.is_file() and sample.size == (80, 80)
        assert len(sample.boxes) == 4 + (3 in tile_classes)
        assert not sample.box_ignore.any()


def test_boxless_source_gives_image_level_labels(tmp_path):
    source = make_set(tmp_path / "src", [9, 8, 7, 6, 5])
    report = build_mosaics(open_dataset(source), tmp_path / "out", grid=2, seed=0, tile=32)
    assert report.images == 1 and report.unused == 1
    sample = open_dataset(report.annotation_file)[0]
    data = json.loads(report.annotation_file.read_text())
    classes = sorted(9 - int(t["source"][len("images/img"):-len(".png")])
                     for t in data["images"][0]["tiles"])
    assert list(sample.labels) == classes
    assert sample.box_ignore.all() and len(sample.boxes) == 4  # never scored as boxes
    # each region is exactly one tile
    assert sorted(map(tuple, sample.boxes.tolist())) == [
        (0, 0, 32, 32), (0, 32, 32, 64), (32, 0, 64, 32), (32, 32, 64, 64)]


def test_too_few_classes_is_one_line_error(tmp_path, capsys):
    source = make_set(tmp_path / "src", [0, 1, 1, 2, 2])
    with pytest.raises(InputError, match="3 distinct class"):
        build_mosaics(open_dataset(source), tmp_path / "out", grid=2)
    assert main(["mosaics", str(source), str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "needs 4" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "instances.json").exists()


@pytest.mark.parametrize("args, message", [
    (["--grid", "0"], "--grid 0"), (["--tile", "2"], "--tile 2"), (["--repeats", "0"],
                                                                       "--repeats 0")])
def test_bad_flags_are_one_line(tmp_path, capsys, args, message):
    source = make_set(tmp_path / "src", [0, 1, 2, 3])
    assert main(["mosaics", str(source), str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_missing_source_and_missing_image(tmp_path, capsys):
    assert main(["mosaics", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere" in err[0]
    source = make_set(tmp_path / "src", list(range(8)))
    (source / "images" / "img5.png").unlink()
    assert main(["mosaics", str(source), str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "img5.png" in err
    data = json.loads((tmp_path / "out" / "instances.json").read_text())
    assert len(data["images"]) == 1  # the other mosaic is still written
    assert all("img5" not in t["source"] for t in data["images"][0]["tiles"])
