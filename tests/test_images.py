import hashlib
import io
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from wsolkit.data import IMAGE_EXTENSIONS, MAX_SIDE, MIN_SIDE, expand_paths, load_image
from wsolkit.errors import ImageError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rgb(image: Image.Image) -> np.ndarray:
    assert isinstance(image, Image.Image)
    assert image.mode == "RGB"
    array = np.asarray(image)
    assert array.dtype == np.uint8
    return array


def _save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def _noise_rgb(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


# --------------------------------------------------------------------------- load_image: modes


def test_rgb_jpeg_round_trip(tmp_path):
    path = _save(Image.new("RGB", (40, 50), (200, 100, 50)), tmp_path / "rgb.jpg", quality=95)
    array = _rgb(load_image(path))
    assert array.shape == (50, 40, 3)
    assert np.abs(array.astype(int) - [200, 100, 50]).max() <= 3


def test_accepts_str_and_path(tmp_path):
    path = _save(Image.new("RGB", (32, 32), (1, 2, 3)), tmp_path / "p.png")
    assert np.array_equal(_rgb(load_image(str(path))), _rgb(load_image(path)))


def test_grayscale(tmp_path):
    gray = np.tile(np.arange(64, dtype=np.uint8) * 4, (40, 1))
    path = _save(Image.fromarray(gray, "L"), tmp_path / "gray.png")
    array = _rgb(load_image(path))
    assert array.shape == (40, 64, 3)
    for channel in range(3):
        assert np.array_equal(array[:, :, channel], gray)


def test_gray_alpha(tmp_path):
    image = Image.new("LA", (48, 48), (90, 0))
    path = _save(image, tmp_path / "la.png")
    assert np.all(_rgb(load_image(path)) == 90)


def test_rgba_drops_alpha(tmp_path):
    rgba = np.zeros((40, 40, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = 10, 20, 30
    rgba[:, :20, 3] = 255  # left half opaque, right half fully transparent
    path = _save(Image.fromarray(rgba, "RGBA"), tmp_path / "rgba.png")
    array = _rgb(load_image(path))
    assert np.all(array == [10, 20, 30])


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    levels = np.arange(256, dtype=np.uint16) * 257  # 0, 257, ..., 65535
    gradient = np.tile(levels, (40, 1))
    path = _save(Image.fromarray(gradient), tmp_path / "deep.png")
    with Image.open(path) as raw:
        assert raw.mode in ("I;16", "I")  # really stored as 16-bit
    array = _rgb(load_image(path))
    assert array.shape == (40, 256, 3)
    assert np.array_equal(array[0, :, 0], np.arange(256))
    assert np.array_equal(array[..., 0], array[..., 2])


def test_32bit_integer_tiff_is_scaled(tmp_path):
    values = np.tile(np.array([0, 32768, 65535, 70000, -5] * 8, dtype=np.int32), (32, 1))
    path = _save(Image.fromarray(values, "I"), tmp_path / "int.tif")
    array = _rgb(load_image(path))
    assert list(array[0, :5, 1]) == [0, 128, 255, 255, 0]


def test_float_tiff(tmp_path):
    unit = np.tile(np.linspace(0.0, 1.0, 40, dtype=np.float32), (32, 1))
    path = _save(Image.fromarray(unit, "F"), tmp_path / "unit.tif")
    array = _rgb(load_image(path))
    assert array[0, 0, 0] == 0 and array[0, -1, 0] == 255
    assert np.array_equal(array[..., 0], np.rint(unit * 255).astype(np.uint8))

    wide = np.full((32, 32), 300.0, dtype=np.float32)
    wide[:, :16] = 100.0
    path = _save(Image.fromarray(wide, "F"), tmp_path / "wide.tif")
    array = _rgb(load_image(path))
    assert array[0, 0, 0] == 100 and array[0, -1, 0] == 255


def test_palette(tmp_path):
    image = Image.new("P", (40, 40), 1)
    image.putpalette([0, 0, 0, 250, 20, 10] + [0] * (254 * 3))
    image.paste(0, (0, 0, 20, 40))
    path = _save(image, tmp_path / "pal.png")
    array = _rgb(load_image(path))
    assert np.all(array[:, :20] == [0, 0, 0])
    assert np.all(array[:, 20:] == [250, 20, 10])


def test_palette_with_transparency_gives_no_warning(tmp_path):
    image = Image.new("P", (40, 40), 1)
    image.putpalette([0, 0, 0, 250, 20, 10] + [0] * (254 * 3))
    path = _save(image, tmp_path / "palt.png", transparency=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        array = _rgb(load_image(path))
    assert np.all(array == [250, 20, 10])


def test_gif(tmp_path):
    path = _save(Image.new("RGB", (40, 40), (255, 0, 0)).convert("P"), tmp_path / "a.gif")
    array = _rgb(load_image(path))
    assert np.all(array == [255, 0, 0])


def test_cmyk_jpeg(tmp_path):
    path = _save(Image.new("CMYK", (48, 48), (0, 255, 255, 0)), tmp_path / "cmyk.jpg")
    with Image.open(path) as raw:
        assert raw.mode == "CMYK"
    array = _rgb(load_image(path)).astype(int)
    assert np.abs(array - [255, 0, 0]).max() <= 8


def test_one_bit(tmp_path):
    image = Image.new("1", (40, 40), 0)
    image.paste(1, (0, 0, 40, 10))
    path = _save(image, tmp_path / "bits.png")
    array = _rgb(load_image(path))
    assert np.all(array[:10] == 255) and np.all(array[10:] == 0)


def test_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((40, 80, 3), dtype=np.uint8)
    stored[:, :40] = [255, 0, 0]  # left half red
    stored[:, 40:] = [0, 0, 255]  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    path = _save(Image.fromarray(stored), tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    array = _rgb(load_image(path)).astype(int)
    assert array.shape == (80, 40, 3)
    assert np.abs(array[10, 20] - [255, 0, 0]).max() <= 10  # stored left is now the top
    assert np.abs(array[70, 20] - [0, 0, 255]).max() <= 10


def test_result_is_independent_of_file(tmp_path):
    path = _save(_noise_rgb(64, 48), tmp_path / "n.png")
    image = load_image(path)
    expected = np.asarray(Image.open(io.BytesIO(path.read_bytes())).convert("RGB"))
    path.unlink()
    assert np.array_equal(_rgb(image), expected)


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee", "rocket"])
def test_examples_load(name):
    path = EXAMPLES / f"{name}.jpg"
    image = load_image(path)
    assert image.mode == "RGB"
    assert MIN_SIDE <= min(image.size) and max(image.size) <= 640


def test_file_is_not_modified(tmp_path):
    stored = _noise_rgb(80, 40)
    exif = Image.Exif()
    exif[0x0112] = 8
    paths = [
        _save(stored, tmp_path / "rot.jpg", exif=exif.tobytes()),
        _save(stored.convert("CMYK"), tmp_path / "cmyk.jpg"),
        _save(Image.fromarray(np.full((40, 40), 999, np.uint16)), tmp_path / "deep.png"),
        _save(stored.convert("RGBA"), tmp_path / "rgba.png"),
    ]
    before = {p: (_sha(p), os.stat(p).st_mtime_ns) for p in paths}
    for p in paths:
        load_image(p)
    assert {p: (_sha(p), os.stat(p).st_mtime_ns) for p in paths} == before


# --------------------------------------------------------------------------- load_image: errors


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    valid = _save(_noise_rgb(128, 128), tmp_path / "valid.jpg", quality=95)
    data = valid.read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a picture\nsecond line\n")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    return {
        "missing": tmp_path / "missing.jpg",
        "folder": folder,
        "text": text,
        "empty": empty,
        "truncated": truncated,
        "tiny": _save(Image.new("RGB", (20, 20)), tmp_path / "tiny.png"),
        "thin": _save(Image.new("RGB", (100, MIN_SIDE - 1)), tmp_path / "thin.png"),
        "huge": _save(Image.new("RGB", (MAX_SIDE + 1, 40), (5, 5, 5)), tmp_path / "huge.png"),
    }


@pytest.mark.parametrize(
    ("kind", "pattern"),
    [
        ("missing", "file not found"),
        ("folder", "is a folder"),
        ("text", r"not a readable image \(.+\)"),
        ("empty", r"not a readable image \(empty file\)"),
        ("truncated", "truncated or corrupt image data"),
        ("tiny", r"20x20 px, too small"),
        ("thin", rf"100x{MIN_SIDE - 1} px, too small"),
        ("huge", rf"{MAX_SIDE + 1}x40 px, too large"),
    ],
)
def test_errors_are_one_line_and_name_the_path(tmp_path, kind, pattern):
    path = _bad_files(tmp_path)[kind]
    with pytest.raises(ImageError, match=pattern) as info:
        load_image(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert message.count(str(path)) == 1


def test_truncated_even_if_pillow_could_open_it(tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)
    path = _bad_files(tmp_path)["truncated"]
    with Image.open(path) as raw:  # the header alone is fine
        assert raw.size == (128, 128)
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(path)


def test_size_checked_before_decoding(tmp_path, monkeypatch):
    path = _bad_files(tmp_path)["huge"]

    def fail(*args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", fail)
    with pytest.raises(ImageError, match="too large"):
        load_image(path)


def test_size_limits_are_inclusive(tmp_path):
    small = _save(Image.new("RGB", (MIN_SIDE, MIN_SIDE)), tmp_path / "small.png")
    assert load_image(small).size == (MIN_SIDE, MIN_SIDE)
    big = _save(Image.new("L", (MAX_SIDE, MIN_SIDE)), tmp_path / "big.png")
    assert load_image(big).size == (MAX_SIDE, MIN_SIDE)


# --------------------------------------------------------------------------- expand_paths


@pytest.fixture
def tree(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = Path("photos")
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".cache").mkdir()
    for rel in [
        "b.jpg",
        "A.PNG",
        "c.Jpeg",
        "d.webp",
        "e.tif",
        "f.TIFF",
        "g.bmp",
        "h.gif",
        "notes.txt",
        ".hidden.jpg",
        "sub/s.jpg",
        "sub/deeper/t.png",
        ".cache/x.jpg",
    ]:
        (root / rel).write_bytes(b"x")
    Path("empty").mkdir()
    Path("docs").mkdir()
    (Path("docs") / "readme.md").write_text("hi")
    return root


TOP = ["A.PNG", "b.jpg", "c.Jpeg", "d.webp", "e.tif", "f.TIFF", "g.bmp", "h.gif"]


def test_image_extensions():
    assert {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"} == set(
        IMAGE_EXTENSIONS)


def test_animated_gif_reads_its_first_frame(tmp_path):
    first = np.zeros((40, 48, 3), np.uint8)
    first[:, :24] = (255, 0, 0)
    second = np.full((40, 48, 3), (0, 0, 255), np.uint8)
    path = tmp_path / "a.gif"
    Image.fromarray(first).save(path, save_all=True, duration=100, loop=0,
                                append_images=[Image.fromarray(second)])
    with Image.open(path) as check:
        assert check.n_frames == 2
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (48, 40)
    np.testing.assert_array_equal(np.asarray(image), first)  # red | black, not the blue frame


def test_folder_non_recursive(tree):
    files, problems = expand_paths(["photos"])
    assert problems == []
    assert files == [tree / n for n in TOP]
    assert all(isinstance(f, Path) for f in files)


def test_folder_recursive(tree):
    files, problems = expand_paths(["photos"], recursive=True)
    assert problems == []
    expected = [tree / n for n in TOP] + [tree / "sub/deeper/t.png", tree / "sub/s.jpg"]
    assert files == sorted(expected)


def test_explicit_file_kept_whatever_its_extension(tree):
    files, problems = expand_paths(["photos/notes.txt", "photos/.hidden.jpg"])
    assert problems == []
    assert files == [tree / ".hidden.jpg", tree / "notes.txt"]


def test_globs(tree):
    files, problems = expand_paths(["photos/*.jpg"])
    assert (files, problems) == ([tree / "b.jpg"], [])
    files, _ = expand_paths(["photos/*"])  # folders and non-images matched are skipped
    assert files == [tree / n for n in TOP]
    files, _ = expand_paths(["photos/**/*.jpg"])
    assert files == [tree / "b.jpg", tree / "sub/s.jpg"]


def test_deduplicated_and_sorted(tree):
    files, problems = expand_paths(
        ["photos/sub/s.jpg", "photos", "photos/b.jpg", "./photos/b.jpg", "photos/*.jpg",
         str(Path.cwd() / "photos" / "b.jpg")]
    )
    assert problems == []
    assert files == sorted([tree / n for n in TOP] + [tree / "sub/s.jpg"])
    assert len({os.path.realpath(f) for f in files}) == len(files)


def test_problems_are_reported_not_raised(tree):
    files, problems = expand_paths(
        ["missing.jpg", "empty", "docs", "nothing/*.png", "docs/*", "photos/b.jpg", ""]
    )
    assert files == [tree / "b.jpg"]
    assert problems == [
        ("missing.jpg", "no such file or folder"),
        ("empty", "no image files in folder"),
        ("docs", "no image files in folder"),
        ("nothing/*.png", "no files match the pattern"),
        ("docs/*", "no image files match the pattern"),
        ("", "empty path"),
    ]


def test_single_string_is_one_input(tree):
    files, problems = expand_paths("photos/b.jpg")
    assert (files, problems) == ([tree / "b.jpg"], [])


def test_existing_name_with_glob_characters_is_literal(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("img[1].jpg").write_bytes(b"x")
    Path("img1.jpg").write_bytes(b"x")
    files, problems = expand_paths(["img[1].jpg"])
    assert (files, problems) == ([Path("img[1].jpg")], [])
