import hashlib
from pathlib import Path

import numpy as np
import pytest

from wsolkit.data.sample import Sample
from wsolkit.data.wsol_metadata import WSOLMetadataDataset
from wsolkit.errors import InputError

SHARED = Path(__file__).resolve().parents[2] / "shared/data"
DEV = SHARED / "imagenet-dev"
SAMPLE = SHARED / "imagenet-sample"

FIRST_ID = "images/ILSVRC2012_val_00000347.JPEG"


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.txt"))
    }


def _write(folder: Path, **files: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / f"{name}.txt").write_text(text)
    return folder


def _good_files() -> dict[str, str]:
    return {
        "image_ids": "a/1.jpg\na/2.jpg\nb/3.jpg\n",
        "class_labels": "a/1.jpg,0\na/2.jpg,2\nb/3.jpg,1\n",
        "image_sizes": "a/1.jpg,100,80\na/2.jpg,50,60\nb/3.jpg,30,40\n",
        "localization": (
            "a/1.jpg,1,2,30,40\na/2.jpg,0,0,49,59\na/1.jpg,10,11,12,13\nb/3.jpg,5,6,7,8\n"
        ),
    }


@pytest.fixture
def dev():
    if not DEV.is_dir():
        pytest.skip(f"shared data not found at {DEV}")
    return DEV


def test_reads_imagenet_dev(dev):
    before = _digest(dev)
    ds = WSOLMetadataDataset(dev)
    assert len(ds) == 394
    assert len(ds.image_ids) == 394
    assert ds.image_ids[0] == FIRST_ID
    names = ds.class_names
    assert names is not None and len(names) == 1000
    assert names[0] == "n01440764 tench, Tinca tinca"

    samples = list(ds)
    assert len(samples) == 394
    assert sum(s.boxes.shape[0] for s in samples) == 622
    assert all(s.boxes.shape[0] >= 1 for s in samples)
    assert all(s.size == (227, 227) for s in samples)
    assert all(0 <= s.label < 1000 for s in samples)

    first = ds[0]
    assert isinstance(first, Sample)
    assert first.image_id == FIRST_ID
    assert first.path == dev / FIRST_ID
    assert first.label == 472 and first.labels == (472,)
    assert first.boxes.dtype == np.float32
    assert first.boxes.shape == (8, 4)
    # localization.txt: 9,106,50,177 and 169,114,226,136 (inclusive) -> edges (+1 on x1, y1)
    np.testing.assert_array_equal(first.boxes[0], [9, 106, 51, 178])
    np.testing.assert_array_equal(first.boxes[1], [169, 114, 227, 137])
    np.testing.assert_array_equal(first.box_labels, [472] * 8)
    assert first.box_labels.dtype == np.int64
    assert first.box_ignore.dtype == bool and not first.box_ignore.any()
    assert not first.has_mask
    assert ds[-1].image_id == ds.image_ids[-1]
    assert _digest(dev) == before


def test_sample_is_frozen_and_boxes_are_copies(dev):
    ds = WSOLMetadataDataset(dev)
    sample = ds[0]
    with pytest.raises(AttributeError):
        sample.label = 3  # type: ignore[misc]
    sample.boxes[:] = -1
    np.testing.assert_array_equal(ds[0].boxes[0], [9, 106, 51, 178])
    ids = ds.image_ids
    ids.clear()
    assert len(ds.image_ids) == 394


def test_index_errors(tmp_path):
    ds = WSOLMetadataDataset(_write(tmp_path / "m", **_good_files()))
    assert len(ds) == 3
    with pytest.raises(IndexError):
        ds[3]
    with pytest.raises(IndexError):
        ds[-4]
    assert ds[np.int64(1)].image_id == "a/2.jpg"


def test_small_folder_contents(tmp_path):
    root = _write(tmp_path / "m", **_good_files())
    before = _digest(root)
    ds = WSOLMetadataDataset(str(root))
    assert ds.class_names is None
    assert ds.image_ids == ["a/1.jpg", "a/2.jpg", "b/3.jpg"]
    s = ds[0]
    assert s.label == 0 and s.size == (100, 80) and s.path == root / "a/1.jpg"
    np.testing.assert_array_equal(s.boxes, [[1, 2, 31, 41], [10, 11, 13, 14]])
    assert ds[1].label == 2 and ds[1].size == (50, 60)
    np.testing.assert_array_equal(ds[2].boxes, [[5, 6, 8, 9]])
    assert _digest(root) == before


def test_image_files_are_not_checked(tmp_path):
    root = _write(tmp_path / "m", **_good_files())
    assert not (root / "a/1.jpg").exists()
    assert len(WSOLMetadataDataset(root)) == 3


def test_missing_folder(tmp_path):
    with pytest.raises(InputError, match="nowhere"):
        WSOLMetadataDataset(tmp_path / "nowhere")


@pytest.mark.parametrize("name", ["image_ids", "class_labels", "image_sizes", "localization"])
def test_missing_file(tmp_path, name):
    files = _good_files()
    del files[name]
    root = _write(tmp_path / "m", **files)
    with pytest.raises(InputError, match=f"{name}.txt") as info:
        WSOLMetadataDataset(root)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "name, lines, line_no, expected",
    [
        (
            "localization",
            ["a/1.jpg,1,2,30,40", "a/2.jpg,0,0,49,59", "b/3.jpg,5,6,7"],
            3,
            "expected 'image_id,x0,y0,x1,y1'",
        ),
        (
            "localization",
            ["a/1.jpg,1,2,30,40", "b/3.jpg,5,6,x,8", "a/2.jpg,0,0,49,59"],
            2,
            "expected 'image_id,x0,y0,x1,y1'",
        ),
        (
            "localization",
            ["a/1.jpg,1,2,30,40", "a/2.jpg,0,0,49,59", "b/3.jpg,9,6,7,8"],
            3,
            "x0 <= x1",
        ),
        (
            "class_labels",
            ["a/1.jpg,0", "a/2.jpg,two", "b/3.jpg,1"],
            2,
            "expected 'image_id,class_index'",
        ),
        (
            "class_labels",
            ["a/1.jpg,0", "a/2.jpg", "b/3.jpg,1"],
            2,
            "expected 'image_id,class_index'",
        ),
        (
            "class_labels",
            ["a/1.jpg,0", "a/2.jpg,-1", "b/3.jpg,1"],
            2,
            "expected 'image_id,class_index'",
        ),
        (
            "class_labels",
            ["a/1.jpg,0", "a/2.jpg,2", "b/3.jpg,1", "a/1.jpg,4"],
            4,
            "second class label",
        ),
        (
            "image_sizes",
            ["a/1.jpg,100,80", "a/2.jpg,50", "b/3.jpg,30,40"],
            2,
            "expected 'image_id,width,height'",
        ),
        (
            "image_sizes",
            ["a/1.jpg,100,80", "a/2.jpg,50,60", "b/3.jpg,0,40"],
            3,
            "expected 'image_id,width,height'",
        ),
        ("image_ids", ["a/1.jpg", "a/2.jpg", "b/3.jpg", "a/2.jpg"], 4, "duplicate image id"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, name, lines, line_no, expected):
    files = _good_files()
    files[name] = "\n".join(lines) + "\n"
    root = _write(tmp_path / "m", **files)
    before = _digest(root)
    with pytest.raises(InputError) as info:
        WSOLMetadataDataset(root)
    message = str(info.value)
    assert f"{name}.txt:{line_no}:" in message
    assert expected in message
    assert "\n" not in message
    assert _digest(root) == before


def test_blank_lines_keep_line_numbers(tmp_path):
    files = _good_files()
    files["localization"] = "a/1.jpg,1,2,30,40\n\na/2.jpg,0,0,49,59\n\nb/3.jpg,5,6,7,8,9,9\n"
    root = _write(tmp_path / "m", **files)
    with pytest.raises(InputError, match=r"localization\.txt:5: expected"):
        WSOLMetadataDataset(root)


def test_id_without_label_is_named(tmp_path):
    files = _good_files()
    files["class_labels"] = "a/1.jpg,0\nb/3.jpg,1\n"
    root = _write(tmp_path / "m", **files)
    with pytest.raises(InputError, match="a/2.jpg") as info:
        WSOLMetadataDataset(root)
    assert "class_labels.txt" in str(info.value)


def test_id_without_size_or_box_is_named(tmp_path):
    files = _good_files()
    files["image_sizes"] = "a/1.jpg,100,80\na/2.jpg,50,60\n"
    with pytest.raises(InputError, match="image_sizes.txt.*b/3.jpg"):
        WSOLMetadataDataset(_write(tmp_path / "m1", **files))
    files = _good_files()
    files["localization"] = "a/1.jpg,1,2,30,40\nb/3.jpg,5,6,7,8\n"
    with pytest.raises(InputError, match="localization.txt.*a/2.jpg"):
        WSOLMetadataDataset(_write(tmp_path / "m2", **files))


def test_extra_records_for_unlisted_ids_are_ignored(tmp_path):
    files = _good_files()
    files["class_labels"] += "z/9.jpg,5\n"
    files["localization"] += "z/9.jpg,1,1,2,2\n"
    ds = WSOLMetadataDataset(_write(tmp_path / "m", **files))
    assert len(ds) == 3


def test_class_names_and_label_range(tmp_path):
    files = _good_files()
    files["class_names"] = "cat\ndog\nbird\n"
    ds = WSOLMetadataDataset(_write(tmp_path / "m1", **files))
    assert ds.class_names == ["cat", "dog", "bird"]
    files["class_names"] = "cat\ndog\n"
    with pytest.raises(InputError, match=r"class_labels\.txt:2: class index 2"):
        WSOLMetadataDataset(_write(tmp_path / "m2", **files))


def test_empty_image_ids(tmp_path):
    files = _good_files()
    files["image_ids"] = "\n"
    with pytest.raises(InputError, match="no image ids"):
        WSOLMetadataDataset(_write(tmp_path / "m", **files))


def test_without_boxes(tmp_path):
    files = _good_files()
    del files["localization"]
    ds = WSOLMetadataDataset(_write(tmp_path / "m", **files), require_boxes=False)
    assert ds[0].boxes.shape == (0, 4) and ds[0].boxes.dtype == np.float32


def test_reads_imagenet_sample_without_boxes():
    if not SAMPLE.is_dir():
        pytest.skip(f"shared data not found at {SAMPLE}")
    ds = WSOLMetadataDataset(SAMPLE, require_boxes=False)
    assert len(ds) == 1000
    assert sorted(s.label for s in ds) == list(range(1000))


# -- mask lines (wsolevaluation's OpenImages split) ----------------------------------------------


def _png(path: Path, values) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(values, np.uint8), mode="L").save(path)


def _mask_folder(tmp_path: Path, localization: str) -> Path:
    root = _write(
        tmp_path / "m",
        image_ids="a.jpg\nb.jpg\n",
        class_labels="a.jpg,3\nb.jpg,1\n",
        image_sizes="a.jpg,6,4\nb.jpg,6,4\n",
        localization=localization,
    )
    one = np.zeros((4, 6), np.uint8)
    one[0, :2] = 255
    two = np.zeros((4, 6), np.uint8)
    two[3, 5] = 1  # any nonzero value is foreground
    ignore = np.zeros((4, 6), np.uint8)
    ignore[0, :4] = 255  # overlaps mask one at (0, 0) and (0, 1): foreground wins
    _png(root / "masks/a1.png", one)
    _png(root / "masks/a2.png", two)
    _png(root / "ignore/a.png", ignore)
    _png(root / "masks/small.png", np.zeros((4, 5), np.uint8))
    return root


def test_mask_lines_union_and_ignore(tmp_path):
    root = _mask_folder(
        tmp_path, "a.jpg,masks/a1.png,ignore/a.png\nb.jpg,1,1,2,2\na.jpg,masks/a2.png,\n"
    )
    before = _digest(root)
    ds = WSOLMetadataDataset(root)
    a, b = ds[0], ds[1]
    assert a.has_mask and not b.has_mask
    assert a.boxes.shape == (0, 4) and a.labels == (3,)
    np.testing.assert_array_equal(b.boxes, [[1, 1, 3, 3]])
    foreground, ignore = a.load_mask()
    assert foreground.dtype == bool and foreground.shape == (4, 6)
    expected = np.zeros((4, 6), bool)
    expected[0, :2] = True
    expected[3, 5] = True
    np.testing.assert_array_equal(foreground, expected)
    expected_ignore = np.zeros((4, 6), bool)
    expected_ignore[0, 2:4] = True
    np.testing.assert_array_equal(ignore, expected_ignore)
    with pytest.raises(InputError, match="no masks"):
        b.load_mask()
    assert _digest(root) == before


def test_mask_of_wrong_size_names_file_and_sizes(tmp_path):
    root = _mask_folder(tmp_path, "a.jpg,masks/small.png,\nb.jpg,1,1,2,2\n")
    sample = WSOLMetadataDataset(root)[0]  # masks are not opened at construction
    with pytest.raises(InputError) as info:
        sample.load_mask()
    message = str(info.value)
    assert "small.png" in message and "5x4" in message and "6x4" in message
    assert "\n" not in message


def test_missing_mask_file_fails_at_load(tmp_path):
    root = _mask_folder(tmp_path, "a.jpg,masks/none.png,\nb.jpg,1,1,2,2\n")
    sample = WSOLMetadataDataset(root)[0]
    with pytest.raises(InputError, match="none.png"):
        sample.load_mask()


def test_mask_paths_relative_to_data_root(tmp_path):
    root = _mask_folder(tmp_path, "a.jpg,m/masks/a1.png,\nb.jpg,1,1,2,2\n")
    ds = WSOLMetadataDataset(root, data_root=tmp_path)
    assert ds[0].path == tmp_path / "a.jpg"
    assert ds[0].load_mask()[0].sum() == 2


@pytest.mark.parametrize(
    "localization, line_no",
    [
        ("a.jpg,masks/a1.png,\nb.jpg,1,2\n", 2),  # 3 fields, second numeric: a bad box line
        ("a.jpg,,\nb.jpg,1,1,2,2\n", 1),  # empty mask path
        ("a.jpg,masks/a1.png\nb.jpg,1,1,2,2\n", 1),  # 2 fields
    ],
)
def test_malformed_mask_lines(tmp_path, localization, line_no):
    root = _mask_folder(tmp_path, localization)
    with pytest.raises(InputError, match=rf"localization\.txt:{line_no}: "):
        WSOLMetadataDataset(root)
