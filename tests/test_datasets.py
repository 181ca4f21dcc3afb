import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsolkit.data import (
    VOC_CLASSES,
    CocoDataset,
    MaskFolderDataset,
    Sample,
    VocDataset,
    WSOLMetadataDataset,
    mask_box,
    open_dataset,
)
from wsolkit.errors import InputError

SHARED = Path(__file__).resolve().parents[2] / "shared/data"


def _digest(folder: Path) -> dict[str, str]:
    """Content hash of every file under ``folder`` (the inputs must be left as found)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _shared(name: str) -> Path:
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path}")
    return path


def _png(path: Path, values, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(values, np.uint8), mode=mode).save(path)


def _rgb(path: Path, width: int, height: int) -> None:
    _png(path, np.zeros((height, width, 3), np.uint8), mode="RGB")


def _check_interface(ds) -> list[Sample]:
    assert isinstance(ds.root, Path)
    assert isinstance(ds.kind, str)
    assert ds.class_names is None or all(isinstance(n, str) for n in ds.class_names)
    ids = ds.image_ids
    assert len(ids) == len(ds) and len(set(ids)) == len(ids)
    samples = list(ds)
    assert [s.image_id for s in samples] == ids
    assert ds[-1].image_id == ids[-1]
    with pytest.raises(IndexError):
        ds[len(ds)]
    for s in samples:
        assert isinstance(s, Sample)
        assert s.boxes.dtype == np.float32 and s.boxes.shape[1:] == (4,)
        assert s.box_labels.dtype == np.int64 and s.box_labels.shape == (len(s.boxes),)
        assert s.box_ignore.dtype == bool and s.box_ignore.shape == (len(s.boxes),)
        assert (s.boxes[:, 2:] > s.boxes[:, :2]).all()
    return samples


# -- the real shared sets ------------------------------------------------------------------------


def test_imagenet_dev():
    root = _shared("imagenet-dev")
    before = _digest(root)
    ds = WSOLMetadataDataset(root)
    assert ds.kind == "wsol" and len(ds.class_names) == 1000
    samples = _check_interface(ds)
    assert len(samples) == 394
    assert sum(len(s.boxes) for s in samples) == 622
    # first line of localization.txt: 9,106,50,177 (inclusive) -> edges 9,106,51,178
    np.testing.assert_array_equal(samples[0].boxes[0], [9, 106, 51, 178])
    assert all((s.box_labels == s.label).all() for s in samples)
    assert _digest(root) == before


def test_imagenet_dev_boxes_feed_box_accuracy():
    from wsolkit.eval import BoxAccuracy

    sample = WSOLMetadataDataset(_shared("imagenet-dev"))[0]
    x0, y0, x1, y1 = sample.boxes[0].astype(int)
    heatmap = np.zeros((sample.size[1], sample.size[0]), np.float32)
    heatmap[y0:y1, x0:x1] = 1.0  # the box's pixels, in edge coordinates
    metric = BoxAccuracy()
    metric.update(heatmap, sample.boxes[:1], sample.size)
    assert metric.compute()["MaxBoxAcc"] == 100.0


@pytest.mark.parametrize("name, count, labeled", [("coco-mval", 213, True), ("davis", 119, False)])
def test_mask_sets(name, count, labeled):
    root = _shared(name)
    before = _digest(root)
    ds = MaskFolderDataset(root)
    assert ds.kind == "mask_folder"
    samples = _check_interface(ds)
    assert len(samples) == count
    assert all(s.has_mask and s.boxes.shape == (0, 4) and s.size is None for s in samples)
    if labeled:
        assert ds.class_names == sorted(set(ds.class_names))
        assert all(len(s.labels) == 1 for s in samples)
        lines = (root / "labels.csv").read_text().splitlines()
        given = dict(line.split(",", 1) for line in lines if line.strip())
        assert all(ds.class_names[s.label] == given[s.image_id] for s in samples)
    else:
        assert ds.class_names is None and all(s.labels == () for s in samples)
    for s in samples[:2]:
        foreground, ignore = s.load_mask()
        assert foreground.dtype == bool and foreground.shape == ignore.shape
        assert foreground.any() and not (foreground & ignore).any()
        box = mask_box(foreground)
        assert box.shape == (1, 4)
        x0, y0, x1, y1 = box[0].astype(int)
        assert foreground[y0:y1, x0:x1].sum() == foreground.sum()
    assert _digest(root) == before


def test_coco_mini():
    root = _shared("coco-mini")
    before = _digest(root)
    ds = CocoDataset(root / "instances.json")
    assert ds.kind == "coco" and ds.root == root and ds.image_dir == root / "images"
    samples = _check_interface(ds)
    assert len(samples) == 80
    assert len(ds.coco.getAnnIds()) == 739  # pycocotools' count, crowd included
    assert sum(len(s.boxes) for s in samples) == 739
    assert sum(int(s.box_ignore.sum()) for s in samples) == 8  # iscrowd
    assert ds.skipped == 0
    assert len(ds.class_names) == 80 and ds.category_ids == sorted(ds.category_ids)
    assert ds.class_names[0] == "person" and ds.category_ids[0] == 1
    assert all(s.path.is_file() for s in samples[:3])
    sample = next(s for s in samples if s.box_ignore.any())
    masks = sample.instance_mask_loader()
    width, height = sample.size
    assert masks.shape == (len(sample.boxes), height, width) and masks.dtype == bool
    for mask, box, crowd in zip(masks, sample.boxes, sample.box_ignore, strict=True):
        if not crowd:  # a polygon mask lies inside its box (1 px of rasterization slack)
            tight = mask_box(mask)[0]
            assert (tight[:2] >= np.floor(box[:2]) - 1).all()
            assert (tight[2:] <= np.ceil(box[2:]) + 1).all()
    foreground, ignore = sample.load_mask()
    np.testing.assert_array_equal(foreground, masks[~sample.box_ignore].any(axis=0))
    np.testing.assert_array_equal(ignore, masks[sample.box_ignore].any(axis=0) & ~foreground)
    assert ignore.any()
    assert _digest(root) == before


@pytest.mark.parametrize(
    "name, kind, count",
    [
        ("imagenet-dev", "wsol", 394),
        ("imagenet-sample", "wsol", 1000),
        ("coco-mval", "mask_folder", 213),
        ("davis", "mask_folder", 119),
        ("coco-mini", "coco", 80),
    ],
)
def test_open_dataset_on_shared_sets(name, kind, count):
    ds = open_dataset(_shared(name))
    assert ds.kind == kind and len(ds) == count


def test_open_dataset_on_coco_json_file():
    ds = open_dataset(_shared("coco-mini") / "instances.json")
    assert ds.kind == "coco" and len(ds) == 80


# -- mask folder ---------------------------------------------------------------------------------


def _mask_set(tmp_path: Path, labels: str | None = "a,dog\nb,cat\nc,dog\n") -> Path:
    root = tmp_path / "set"
    _rgb(root / "images/a.jpg", 6, 2)
    _rgb(root / "images/b.png", 6, 2)
    (root / "images/c.jpg").parent.mkdir(parents=True, exist_ok=True)
    (root / "images/c.jpg").write_bytes(b"not an image")  # images are not opened
    _png(root / "masks/a.png", [[0, 127, 128, 129, 200, 255], [0, 0, 0, 0, 0, 255]])
    _png(root / "masks/b.png", np.zeros((3, 6)))  # wrong size for b.png (6x2)
    _png(root / "masks/c.png", np.zeros((2, 6)))
    (root / "images/notes.txt").write_text("not an image")  # other files are ignored
    if labels is not None:
        (root / "labels.csv").write_text(labels)
    return root


def test_mask_folder_semantics(tmp_path):
    root = _mask_set(tmp_path)
    before = _digest(root)
    ds = MaskFolderDataset(root)
    assert ds.image_ids == ["a", "b", "c"]
    assert ds.class_names == ["cat", "dog"]
    assert [s.labels for s in ds] == [(1,), (0,), (1,)]
    a = ds[0]
    assert a.path == root / "images/a.jpg" and a.boxes.shape == (0, 4) and a.size is None
    foreground, ignore = a.load_mask()
    # exactly 128 is the ignore band, above 128 is foreground, the rest background
    np.testing.assert_array_equal(
        foreground, [[False, False, False, True, True, True], [False] * 5 + [True]]
    )
    np.testing.assert_array_equal(ignore, [[False, False, True, False, False, False], [False] * 6])
    np.testing.assert_array_equal(mask_box(foreground), [[3, 0, 6, 2]])
    assert _digest(root) == before


def test_mask_folder_wrong_size_mask(tmp_path):
    ds = MaskFolderDataset(_mask_set(tmp_path))
    with pytest.raises(InputError) as info:
        ds[1].load_mask()
    message = str(info.value)
    assert "b.png" in message and "6x3" in message and "6x2" in message


def test_mask_folder_without_labels(tmp_path):
    ds = MaskFolderDataset(_mask_set(tmp_path, labels=None))
    assert ds.class_names is None and ds[0].labels == () and ds[0].label == -1


def test_mask_folder_missing_pairs(tmp_path):
    root = _mask_set(tmp_path)
    (root / "masks/c.png").unlink()
    with pytest.raises(InputError, match="'c'"):
        MaskFolderDataset(root)
    _png(root / "masks/c.png", np.zeros((2, 6)))
    _png(root / "masks/d.png", np.zeros((2, 6)))
    with pytest.raises(InputError, match="'d'"):
        MaskFolderDataset(root)
    (root / "masks/d.png").unlink()
    _rgb(root / "images/a.png", 6, 2)
    with pytest.raises(InputError, match="'a'"):
        MaskFolderDataset(root)


@pytest.mark.parametrize(
    "labels, match",
    [
        ("a,dog\nb\nc,dog\n", r"labels\.csv:2: expected"),
        ("a,dog\nb,cat\n\nx,dog\n", r"labels\.csv:4: no image for stem 'x'"),
        ("a,dog\nb,cat\nc,dog\na,cat\n", r"labels\.csv:4: second label for 'a'"),
        ("a,dog\nb,cat\n", r"labels\.csv: no label for image 'c'"),
    ],
)
def test_mask_folder_bad_labels(tmp_path, labels, match):
    with pytest.raises(InputError, match=match):
        MaskFolderDataset(_mask_set(tmp_path, labels))


def test_mask_box():
    assert mask_box(np.zeros((3, 4), bool)).shape == (0, 4)
    mask = np.zeros((5, 7), bool)
    mask[1:3, 2:5] = True
    box = mask_box(mask)
    assert box.dtype == np.float32
    np.testing.assert_array_equal(box, [[2, 1, 5, 3]])
    with pytest.raises(InputError):
        mask_box(np.zeros((2, 3, 4)))


# -- COCO ----------------------------------------------------------------------------------------


def _coco_json(tmp_path: Path, **changes) -> Path:
    data = {
        "images": [
            {"id": 10, "file_name": "x.jpg", "width": 8, "height": 6},
            {"id": 11, "file_name": "y.jpg", "width": 8, "height": 6},
        ],
        "categories": [
            {"id": 7, "name": "cow"},
            {"id": 1, "name": "person"},
            {"id": 3, "name": "car"},
        ],
        "annotations": [
            {  # polygon covering pixel columns 1..3, rows 1..2
                "id": 100,
                "image_id": 10,
                "category_id": 7,
                "bbox": [1, 1, 3, 2],
                "iscrowd": 0,
                "segmentation": [[1, 1, 4, 1, 4, 3, 1, 3]],
            },
            {  # crowd, uncompressed RLE (column-major counts): column 5 rows 2..4
                "id": 101,
                "image_id": 10,
                "category_id": 1,
                "bbox": [5, 2, 1, 3],
                "iscrowd": 1,
                "segmentation": {"size": [6, 8], "counts": [32, 3, 13]},
            },
            {  # degenerate: dropped and counted
                "id": 102,
                "image_id": 10,
                "category_id": 3,
                "bbox": [2, 2, 0, 4],
                "iscrowd": 0,
                "segmentation": [[2, 2, 2, 2, 2, 6]],
            },
        ],
    }
    data.update(changes)
    path = tmp_path / "instances_val.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_boxes_labels_and_masks(tmp_path):
    path = _coco_json(tmp_path)
    before = _digest(tmp_path)
    ds = CocoDataset(path)
    assert ds.class_names == ["person", "car", "cow"] and ds.category_ids == [1, 3, 7]
    assert len(ds) == 1 and ds.image_ids == ["x.jpg"] and ds.coco_image_ids == [10]
    assert ds.skipped == 1
    assert ds.image_dir == tmp_path  # no images/ folder beside the JSON
    s = _check_interface(ds)[0]
    assert s.path == tmp_path / "x.jpg" and s.size == (8, 6)
    np.testing.assert_array_equal(s.boxes, [[1, 1, 4, 3], [5, 2, 6, 5]])  # x, y, x + w, y + h
    np.testing.assert_array_equal(s.box_labels, [2, 0])
    np.testing.assert_array_equal(s.box_ignore, [False, True])
    assert s.labels == (0, 2)
    masks = s.instance_mask_loader()
    assert masks.shape == (2, 6, 8) and masks.dtype == bool
    np.testing.assert_array_equal(mask_box(masks[0]), s.boxes[:1])
    np.testing.assert_array_equal(mask_box(masks[1]), s.boxes[1:])
    assert masks[0].sum() == 6 and masks[1].sum() == 3
    foreground, ignore = s.load_mask()
    np.testing.assert_array_equal(foreground, masks[0])
    np.testing.assert_array_equal(ignore, masks[1])
    assert _digest(tmp_path) == before


def test_coco_include_empty_and_image_dir(tmp_path):
    path = _coco_json(tmp_path)
    _rgb(tmp_path / "images/x.jpg", 8, 6)
    ds = CocoDataset(path, include_empty=True)
    assert ds.image_ids == ["x.jpg", "y.jpg"]
    assert ds.image_dir == tmp_path / "images"
    empty = ds[1]
    assert empty.boxes.shape == (0, 4) and empty.labels == ()
    foreground, ignore = empty.load_mask()
    assert foreground.shape == (6, 8) and not foreground.any() and not ignore.any()
    assert CocoDataset(path, image_dir=tmp_path / "elsewhere")[0].path == (
        tmp_path / "elsewhere/x.jpg"
    )


@pytest.mark.parametrize(
    "text, match",
    [
        ("{not json", "not valid JSON"),
        ('{"annotations": []}', "no 'images' list"),
    ],
)
def test_coco_bad_files(tmp_path, text, match):
    path = tmp_path / "instances.json"
    path.write_text(text)
    with pytest.raises(InputError, match=match) as info:
        CocoDataset(path)
    assert str(path) in str(info.value)


def test_coco_bad_annotations(tmp_path):
    bad_category = [{"id": 5, "image_id": 10, "category_id": 99, "bbox": [0, 0, 1, 1]}]
    with pytest.raises(InputError, match="annotation 5 has unknown category_id 99"):
        CocoDataset(_coco_json(tmp_path, annotations=bad_category))
    bad_box = [{"id": 6, "image_id": 10, "category_id": 1, "bbox": [0, 0, 1]}]
    with pytest.raises(InputError, match="annotation 6 needs 'bbox'"):
        CocoDataset(_coco_json(tmp_path, annotations=bad_box))
    with pytest.raises(InputError, match="not found"):
        CocoDataset(tmp_path / "missing.json")


def test_coco_without_pycocotools(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    monkeypatch.setitem(sys.modules, "pycocotools.coco", None)
    with pytest.raises(InputError, match="pip install pycocotools"):
        CocoDataset(_coco_json(tmp_path))


# -- VOC -----------------------------------------------------------------------------------------


def _voc_xml(filename: str, objects: list[tuple[str, int, tuple]], size=(10, 8)) -> str:
    parts = [
        f"<annotation><filename>{filename}</filename>",
        f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>",
    ]
    for name, difficult, (x0, y0, x1, y1) in objects:
        parts.append(
            f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>"
            f"<xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax>"
            f"</bndbox></object>"
        )
    return "".join(parts) + "</annotation>"


def _voc_standard(tmp_path: Path) -> Path:
    root = tmp_path / "VOC"
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets/Main").mkdir(parents=True)
    (root / "Annotations/001.xml").write_text(
        _voc_xml("001.jpg", [("dog", 0, (1, 1, 3, 4)), ("person", 1, (2, 3, 10, 8))])
    )
    (root / "Annotations/002.xml").write_text(_voc_xml("002.jpg", [("cat", 0, (5, 5, 5, 5))]))
    (root / "ImageSets/Main/val.txt").write_text("002\n\n001\n")
    return root


def test_voc_standard_layout(tmp_path):
    root = _voc_standard(tmp_path)
    before = _digest(root)
    ds = VocDataset(root)
    assert ds.kind == "voc" and ds.layout == "standard"
    assert ds.class_names == list(VOC_CLASSES)
    samples = _check_interface(ds)
    assert ds.image_ids == ["001", "002"]
    s = samples[0]
    assert s.path == root / "JPEGImages/001.jpg" and s.size == (10, 8)
    # 1-based inclusive -> edges: x0 - 1, y0 - 1, x1, y1
    np.testing.assert_array_equal(s.boxes, [[0, 0, 3, 4], [1, 2, 10, 8]])
    dog, person = VOC_CLASSES.index("dog"), VOC_CLASSES.index("person")
    np.testing.assert_array_equal(s.box_labels, [dog, person])
    np.testing.assert_array_equal(s.box_ignore, [False, True])
    assert s.labels == (dog, person)
    np.testing.assert_array_equal(samples[1].boxes, [[4, 4, 5, 5]])  # a one-pixel box
    assert not s.has_mask and s.instance_mask_loader is None
    assert VocDataset(root, split="val").image_ids == ["002", "001"]
    assert _digest(root) == before


def test_voc_flat_layout_and_other_classes(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    (root / "b.xml").write_text(_voc_xml("b.png", [("zebra", 0, (0, 2, 4, 6))]))
    (root / "a.xml").write_text(_voc_xml("a.png", [("dog", 0, (3, 3, 6, 6))], size=(0, 0)))
    ds = VocDataset(root)
    assert ds.layout == "flat" and ds.image_ids == ["a", "b"]
    assert ds.class_names == ["dog", "zebra"]  # not all VOC classes: sorted names found
    assert ds[0].path == root / "a.png" and ds[0].size is None
    np.testing.assert_array_equal(ds[1].boxes, [[0, 1, 4, 6]])  # xmin 0 (0-based tools) -> 0
    assert ds[1].labels == (1,)
    assert VocDataset(root, class_names=["zebra", "dog", "cat"])[0].labels == (1,)
    with pytest.raises(InputError, match="not in the given class_names"):
        VocDataset(root, class_names=["dog"])
    with pytest.raises(InputError, match="standard VOC layout"):
        VocDataset(root, split="val")


@pytest.mark.parametrize(
    "text, match",
    [
        ("<annotation><object>", "malformed XML"),
        ("<html></html>", "not a VOC annotation"),
        (
            "<annotation><object><name>dog</name><bndbox><xmin>1</xmin></bndbox></object>"
            "</annotation>",
            "object 1 needs",
        ),
    ],
)
def test_voc_bad_xml_names_file(tmp_path, text, match):
    root = _voc_standard(tmp_path)
    (root / "Annotations/003.xml").write_text(text)
    with pytest.raises(InputError, match=match) as info:
        VocDataset(root)
    assert "003.xml" in str(info.value) and "\n" not in str(info.value)


def test_voc_split_errors(tmp_path):
    root = _voc_standard(tmp_path)
    (root / "ImageSets/Main/bad.txt").write_text("001\n002\n004\n")
    with pytest.raises(InputError, match=r"bad\.txt:3: no annotation file"):
        VocDataset(root, split="bad")
    with pytest.raises(InputError, match="train.txt"):
        VocDataset(root, split="train")


# -- open_dataset --------------------------------------------------------------------------------


def test_open_dataset_on_small_folders(tmp_path):
    assert open_dataset(_voc_standard(tmp_path)).kind == "voc"
    assert open_dataset(_voc_standard(tmp_path / "s"), split="val").image_ids == ["002", "001"]
    assert open_dataset(_mask_set(tmp_path)).kind == "mask_folder"
    coco_dir = tmp_path / "coco"
    coco_dir.mkdir()
    _coco_json(coco_dir)
    assert open_dataset(coco_dir).kind == "coco"
    (coco_dir / "instances_train.json").write_text("{}")
    with pytest.raises(InputError, match="several COCO files"):
        open_dataset(coco_dir)


def test_open_dataset_unknown(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(InputError, match="unknown dataset format") as info:
        open_dataset(tmp_path)
    assert str(info.value).startswith(str(tmp_path))
    with pytest.raises(InputError, match="unknown dataset format"):
        open_dataset(tmp_path / "readme.txt")
    with pytest.raises(InputError, match="not found"):
        open_dataset(tmp_path / "nowhere")


def test_coco_annotation_without_id(tmp_path):
    no_id = [{"image_id": 10, "category_id": 1, "bbox": [0, 0, 1, 1]}]
    with pytest.raises(InputError, match="annotation entry 0 needs 'id'"):
        CocoDataset(_coco_json(tmp_path, annotations=no_id))
