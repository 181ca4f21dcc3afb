import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsolkit.cli.main import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


def rows(out: Path) -> list[dict]:
    """Every row of a localize job's shards, read with plain json."""
    return [json.loads(line) for shard in sorted(out.glob("rows-*.jsonl"))
            for line in shard.read_text().splitlines()]


@pytest.fixture
def inputs(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(EXAMPLES / "chelsea.jpg", folder / "chelsea.jpg")
    shutil.copy(EXAMPLES / "coffee.jpg", folder / "coffee.jpg")
    return folder


def test_methods_lists_every_method(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("cam", "gradcam", "gradcampp", "smoothgradcampp", "xgradcam", "layercam",
                 "scorecam", "objectness"):
        assert any(line.startswith(name + " ") for line in out.splitlines())


def test_localize_writes_overlays_and_json(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["localize", str(inputs), "--out", str(out), "--quiet", "--overlays"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "gradcam" and results["model"] == "efficientnet_lite0"
    assert results["layer"] == "features.head"
    assert results["counts"] == {"ok": 2} and results["status"] == "complete"
    records = rows(out)
    assert [Path(r["image"]).name for r in records] == ["chelsea.jpg", "coffee.jpg"]
    for record in records:
        overlay = Image.open(out / record["overlay"])
        assert overlay.size == (record["width"], record["height"])
        (target,) = record["targets"]
        assert target["class"] == record["prediction"]["class"]
        (box,) = target["boxes"]
        x0, y0, x1, y1 = box["box"]
        assert 0 <= x0 < x1 <= record["width"] and 0 <= y0 < y1 <= record["height"]
        assert 0 < box["score"] <= 1
    assert "cat" in records[0]["prediction"]["name"]


def test_bad_files_are_reported_and_skipped(inputs, tmp_path, capsys):
    (inputs / "notes.jpg").write_text("not an image")
    good = (EXAMPLES / "rocket.jpg").read_bytes()
    (inputs / "cut.jpg").write_bytes(good[: len(good) // 2])
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(inputs / "tiny.png")
    before = snapshot(inputs)
    out = tmp_path / "out"
    code = main(["localize", str(inputs), str(tmp_path / "missing.jpg"), "--out", str(out),
                 "--quiet", "--batch-size", "2"])
    assert code == 1
    err = capsys.readouterr().err
    for name in ("notes.jpg", "cut.jpg", "tiny.png", "missing.jpg"):
        (line,) = [line for line in err.splitlines() if name in line]
        assert line.strip().startswith(str(tmp_path))
    records = rows(out)
    assert sum(r["status"] == "ok" for r in records) == 2
    failed = {Path(r["image"]).name: r["error"] for r in records if r["status"] == "failed"}
    assert set(failed) == {"notes.jpg", "cut.jpg", "tiny.png"}
    assert "too small" in failed["tiny.png"] and failed["cut.jpg"].startswith(str(inputs))
    assert json.loads((out / "results.json").read_text())["counts"] == {"ok": 2, "failed": 3}
    assert snapshot(inputs) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]


def test_outputs_never_overwrite_inputs(inputs, capsys):
    clash = inputs / "chelsea.gradcam.png"
    Image.fromarray(np.full((40, 40, 3), 7, np.uint8)).save(clash)
    before = snapshot(inputs)
    assert main(["localize", str(inputs / "chelsea.jpg"), str(clash), "--out", str(inputs),
                 "--quiet", "--overlays"]) == 0
    after = snapshot(inputs)
    assert all(after[name] == digest for name, digest in before.items())
    assert "chelsea-2.gradcam.png" in after


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "nope"], "unknown method 'nope'"),
        (["--layer", "features.nope"], "layer 'features.nope' not found"),
        (["--target", "5000"], "out of range"),
        (["--target", "not a class"], "--target 'not a class'"),
        (["--batch-size", "0"], "--batch-size 0"),
        (["--model", "nope"], "unknown model 'nope'"),
        (["--option", "samples"], "expected KEY=VALUE"),
    ],
)
def test_usage_errors_are_one_line(inputs, tmp_path, capsys, args, message):
    code = main(["localize", str(inputs / "chelsea.jpg"), "--out", str(tmp_path / "o"),
                 "--quiet", *args])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("wsolkit: error:")


def test_empty_folder_is_an_error(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["localize", str(empty), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{empty}: no image files in folder" in err
    assert not (tmp_path / "o").exists()


def test_class_name_target_and_topk(inputs, tmp_path):
    out = tmp_path / "out"
    assert main(["localize", str(inputs / "chelsea.jpg"), "--out", str(out), "--quiet",
                 "--target", "tabby", "--method", "cam"]) == 0
    (record,) = rows(out)
    assert record["targets"][0]["name"] == "tabby"
    out = tmp_path / "out3"
    assert main(["localize", str(inputs / "chelsea.jpg"), "--out", str(out), "--quiet",
                 "--target", "top3", "--all-components"]) == 0
    (record,) = rows(out)
    assert len(record["targets"]) == 3
    assert record["targets"][0]["class"] == record["prediction"]["class"]
