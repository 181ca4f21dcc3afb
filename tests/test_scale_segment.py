"""`wsolkit segment` on the streaming engine (docs/scale.md): COCO RLE rows, GrabCut process
pool, resume, failed rows, manifest, and the Ray engine giving the local engine's rows."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from wsolkit.apps.engine import JobOptions
from wsolkit.apps.segment import SegmentSettings, image_heatmaps, segment_heatmap
from wsolkit.apps.segment_core import segment_files
from wsolkit.cli.main import main
from wsolkit.data.images import load_image
from wsolkit.data.rle import decode_rle, encode_rle, rle_counts, string_counts
from wsolkit.maps import get_method

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-dev" / "images"
FAST = SegmentSettings(max_side=64, crf=False, batch_size=2)


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for shard in sorted(out.glob("rows-*.jsonl"))
            for line in shard.read_text().splitlines()]


# --- COCO RLE, checked against runs written out by hand ------------------------------------


def test_rle_of_a_hand_made_mask():
    mask = np.array([[0, 1, 1, 0],
                     [0, 1, 0, 0],
                     [1, 1, 0, 0]], bool)
    # column by column: 0 0 1 | 1 1 1 | 1 0 0 | 0 0 0 -> 2 zeros, 5 ones, 5 zeros
    assert rle_counts(mask) == [2, 5, 5]
    assert encode_rle(mask, compressed=False) == {"size": [3, 4], "counts": [2, 5, 5]}
    assert encode_rle(mask) == {"size": [3, 4], "counts": "255"}  # chr(48 + count)
    assert np.array_equal(decode_rle(encode_rle(mask)), mask)


def test_rle_starts_with_an_empty_run_of_zeros_when_the_first_pixel_is_set():
    mask = np.array([[1, 0], [1, 0]], bool)
    assert rle_counts(mask) == [0, 2, 2]
    assert encode_rle(mask)["counts"] == "022"


def test_rle_string_of_long_and_negative_differences():
    # a 44x1 column: 3 ones, 40 zeros, 1 one -> counts 0, 3, 40, 1
    mask = np.zeros((44, 1), bool)
    mask[:3] = mask[43] = True
    assert rle_counts(mask) == [0, 3, 40, 1]
    # 40 = 8 + 1*32: '8'|0x20 -> chr(48 + 40) 'X', then chr(48 + 1) '1';
    # the 4th count is stored as 1 - 3 = -2: 5 low bits 11110 (sign bit set, rest -1) -> 'N'
    assert encode_rle(mask)["counts"] == "03X1N"
    assert string_counts("03X1N") == [0, 3, 40, 1]


def test_rle_matches_pycocotools_on_random_masks():
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (7, 5), (64, 48), (300, 200)]:
        mask = rng.random(shape) < rng.random()
        theirs = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        mine = encode_rle(mask)
        assert mine["counts"] == theirs["counts"].decode("ascii")
        assert np.array_equal(mask_utils.decode({"size": mine["size"],
                                                 "counts": mine["counts"].encode()}), mask)
        assert np.array_equal(decode_rle(mine), mask)


# --- the job -------------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("astronaut.jpg", "chelsea.jpg", "coffee.jpg"):
        shutil.copy(EXAMPLES / name, src / name)
    (src / "broken.jpg").write_bytes(b"not an image at all")
    return src


def test_rows_hold_the_mask_of_the_one_image_pipeline(embedded_model, folder, tmp_path):
    paths = sorted(folder.iterdir())
    out = tmp_path / "out"
    report = segment_files(embedded_model, paths, out, FAST, job=JobOptions(workers=0))
    assert (report.written, len(report.failures)) == (4, 1)
    found = {Path(r["image"]).name: r for r in rows(out)}
    assert found["broken.jpg"]["status"] == "failed"
    method = get_method(FAST.method)(embedded_model)
    for name in ("astronaut.jpg", "chelsea.jpg", "coffee.jpg"):
        image = load_image(folder / name)
        heat = image_heatmaps(method, [image], FAST)[0][0]
        expected, _ = segment_heatmap(np.asarray(image), heat, FAST)
        target = found[name]["targets"][0]
        mask = mask_utils.decode({"size": target["mask"]["size"],
                                  "counts": target["mask"]["counts"].encode()}).astype(bool)
        assert np.array_equal(mask, expected)
        ys, xs = np.nonzero(expected)
        assert target["boxes"][0]["box"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert target["foreground_fraction"] == round(float(expected.mean()), 6)
        assert (found[name]["width"], found[name]["height"]) == image.size
    summary = json.loads((out / "results.json").read_text())
    assert summary["counts"] == {"ok": 3, "failed": 1} and summary["status"] == "complete"
    assert not list(out.glob("*.png"))  # mask files and overlays only on request


def test_grabcut_pool_and_decoding_workers_give_the_same_rows(embedded_model, folder, tmp_path):
    paths = sorted(folder.iterdir())
    settings = SegmentSettings(max_side=64, batch_size=2)  # with the dense CRF
    segment_files(embedded_model, paths, tmp_path / "a", settings, job=JobOptions(workers=0))
    segment_files(embedded_model, paths, tmp_path / "b", settings,
                  job=JobOptions(workers=2, jobs=2))
    assert rows(tmp_path / "a") == rows(tmp_path / "b")


def test_resume_after_interruption_writes_every_image_once(embedded_model, folder, tmp_path):
    paths = sorted(folder.iterdir())
    segment_files(embedded_model, paths, tmp_path / "fresh", FAST, job=JobOptions(workers=0))
    calls = []

    def stop_after_one_batch(count: int) -> None:
        calls.append(count)
        raise KeyboardInterrupt

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        segment_files(embedded_model, paths, out, FAST, progress=stop_after_one_batch,
                      job=JobOptions(workers=0, shard_size=1, jobs=2))
    assert json.loads((out / "results.json").read_text())["status"] == "interrupted"
    assert [r["image"] for r in rows(out)] == [str(p) for p in paths[:2]]
    report = segment_files(embedded_model, paths, out, FAST, job=JobOptions(workers=0))
    assert (report.resumed, report.written) == (2, 2)
    assert rows(out) == rows(tmp_path / "fresh")
    with pytest.raises(Exception, match="other settings"):
        segment_files(embedded_model, paths, out, SegmentSettings(max_side=32, crf=False))


def test_cli_manifest_mask_files_and_failed_rows(folder, tmp_path, capsys):
    manifest = tmp_path / "list.txt"
    manifest.write_text(f"{folder / 'chelsea.jpg'}\n# comment\n{folder / 'missing.jpg'}\n")
    out = tmp_path / "out"
    code = main(["segment", "--manifest", str(manifest), "--out", str(out), "--quiet",
                 "--max-side", "64", "--no-crf", "--workers", "0", "--jobs", "1",
                 "--mask-files", "--overlay-sample", "1", "--device", "cpu"])
    assert code == 1
    found = {Path(r["image"]).name: r for r in rows(out)}
    assert found["missing.jpg"]["status"] == "failed"
    target = found["chelsea.jpg"]["targets"][0]
    png = np.asarray(Image.open(out / target["mask_file"])) > 0
    assert np.array_equal(png, decode_rle(target["mask"]))
    assert (out / found["chelsea.jpg"]["overlay"]).is_file()
    assert "missing.jpg" in capsys.readouterr().err


# --- Ray engine ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dev_images(tmp_path_factory):
    if not DEV.is_dir():
        pytest.skip(f"{DEV} missing")
    pytest.importorskip("ray.data", reason="pip install 'wsolkit[ray]'")
    folder = tmp_path_factory.mktemp("dev")
    for path in sorted(DEV.iterdir())[:4]:
        shutil.copy(path, folder / path.name)
    (folder / "truncated.jpg").write_bytes(sorted(DEV.iterdir())[4].read_bytes()[:900])
    return folder


def test_ray_engine_segment_rows_equal_local_engine_rows(embedded_model, dev_images, tmp_path):
    paths = sorted(dev_images.iterdir())
    local = tmp_path / "local"
    segment_files(embedded_model, paths, local, SegmentSettings(max_side=64, batch_size=2),
                  job=JobOptions(workers=0))
    out = tmp_path / "ray"
    code = main(["segment", str(dev_images), "--out", str(out), "--quiet", "--engine", "ray",
                 "--max-side", "64", "--batch-size", "2", "--actors", "2", "--device", "cpu"])
    assert code == 1  # truncated.jpg
    by_image = {r["image"]: r for r in rows(out)}
    assert len(by_image) == len(paths)
    assert by_image == {r["image"]: r for r in rows(local)}
    assert by_image[str(dev_images / "truncated.jpg")]["status"] == "failed"
    summary = json.loads((out / "results.json").read_text())
    assert summary["counts"] == {"ok": 4, "failed": 1}
    assert summary["layer"] == json.loads((local / "results.json").read_text())["layer"]
