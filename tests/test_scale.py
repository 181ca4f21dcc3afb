"""Large-job behaviour of `wsolkit localize`: JSONL shards, resume, failed rows, overlays,
decoding workers, --device (docs/scale.md)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsolkit.apps import JobOptions, LocalizeSettings, localize_files
from wsolkit.apps.localize import overlay_indices
from wsolkit.cli.main import main
from wsolkit.errors import InputError
from wsolkit.models.device import resolve_device

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for shard in sorted(out.glob("rows-*.jsonl"))
            for line in shard.read_text().splitlines()]


@pytest.fixture
def folder(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg"):
        shutil.copy(EXAMPLES / name, src / name)
    (src / "broken.jpg").write_bytes(b"not an image at all")
    return src


def files(folder: Path) -> list[Path]:
    return sorted(folder.iterdir())


SETTINGS = LocalizeSettings(method="cam", batch_size=2)


def test_resume_after_interruption_writes_every_image_once(embedded_model, folder, tmp_path):
    paths = files(folder)
    fresh = tmp_path / "fresh"
    localize_files(embedded_model, paths, fresh, SETTINGS, job=JobOptions(workers=0))
    calls = []

    def stop_after_two_batches(count: int) -> None:
        calls.append(count)
        if len(calls) == 2:
            raise KeyboardInterrupt

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        localize_files(embedded_model, paths, out, SETTINGS, progress=stop_after_two_batches,
                       job=JobOptions(workers=0, shard_size=3))
    assert json.loads((out / "results.json").read_text())["status"] == "interrupted"
    first = rows(out)
    assert [r["image"] for r in first] == [str(p) for p in paths[:4]]
    # a temporary of a shard write killed half-way must not be read or left behind
    (out / ".rows-000009.jsonl.0123abcd.tmp").write_text('{"image": "half')
    report = localize_files(embedded_model, paths, out, SETTINGS,
                            job=JobOptions(workers=0, shard_size=3))
    assert (report.resumed, report.written) == (4, 1)
    assert rows(out) == rows(fresh)  # same rows, same order, none twice
    assert not list(out.glob(".*.tmp"))
    assert json.loads((out / "results.json").read_text())["counts"] == {"ok": 4, "failed": 1}


def test_decoding_workers_give_the_rows_of_the_main_process(embedded_model, folder, tmp_path):
    paths = files(folder)
    localize_files(embedded_model, paths, tmp_path / "a", SETTINGS, job=JobOptions(workers=0))
    localize_files(embedded_model, paths, tmp_path / "b", SETTINGS, job=JobOptions(workers=2))
    assert rows(tmp_path / "a") == rows(tmp_path / "b")
    assert [r["status"] for r in rows(tmp_path / "a")] == ["ok", "failed", "ok", "ok", "ok"]


def test_oversized_and_unreadable_images_become_failed_rows(embedded_model, folder, tmp_path):
    Image.fromarray(np.zeros((40, 8001, 3), np.uint8)).save(folder / "wide.png")
    out = tmp_path / "out"
    localize_files(embedded_model, files(folder), out, SETTINGS, job=JobOptions(workers=1))
    failed = {Path(r["image"]).name: r["error"] for r in rows(out) if r["status"] == "failed"}
    assert set(failed) == {"broken.jpg", "wide.png"}
    assert "8001x40 px, too large" in failed["wide.png"]
    assert "not a readable image" in failed["broken.jpg"]


def test_overlays_only_on_request(folder, tmp_path, capsys):
    plain, sample = tmp_path / "plain", tmp_path / "sample"
    assert main(["localize", str(folder), "--out", str(plain), "--quiet", "--method", "cam",
                 "--workers", "0"]) == 1  # broken.jpg fails
    assert not list(plain.glob("*.png")) and all("overlay" not in r for r in rows(plain))
    assert main(["localize", str(folder), "--out", str(sample), "--quiet", "--method", "cam",
                 "--workers", "0", "--overlay-sample", "2"]) == 1
    # 5 inputs, 2 overlays spread evenly: inputs 0 and 4 (astronaut.jpg, rocket.jpg)
    assert sorted(p.name for p in sample.glob("*.png")) == ["astronaut.cam.png", "rocket.cam.png"]
    assert [r.get("overlay") for r in rows(sample)] == [
        "astronaut.cam.png", None, None, None, "rocket.cam.png"]


def test_overlay_sample_spreads_evenly():
    assert overlay_indices(5, 2) == {0, 4}
    assert overlay_indices(9, 3) == {0, 4, 8}
    assert overlay_indices(3, 10) == {0, 1, 2}
    assert overlay_indices(4, "all") == {0, 1, 2, 3} and overlay_indices(4, 0) == set()


def test_resume_refuses_other_settings(folder, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["localize", str(folder / "chelsea.jpg"), "--out", str(out), "--quiet", "--workers",
            "0"]
    assert main([*args, "--method", "cam"]) == 0
    assert main([*args, "--method", "gradcam"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"wsolkit: error: --out {out}: holds rows made with other")
    assert "(--method cam)" in err[-1]


def test_malformed_shard_line_names_file_and_line(folder, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "rows-000000.jsonl").write_text('{"image": "a.jpg", "status": "ok"}\n{oops\n')
    assert main(["localize", str(folder / "chelsea.jpg"), "--out", str(out), "--quiet",
                 "--workers", "0"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"{out / 'rows-000000.jsonl'}:2: not a JSON line" in line


@pytest.mark.parametrize(("value", "message"), [
    ("cuda:7", "--device cuda:7:"),
    ("tpu", "--device tpu:"),
    ("nonsense", "--device nonsense: not a device"),
])
def test_device_errors_are_one_line(folder, tmp_path, capsys, value, message):
    if value.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 CUDA devices")
    assert main(["localize", str(folder / "chelsea.jpg"), "--out", str(tmp_path / "o"),
                 "--quiet", "--device", value]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("wsolkit: error: ") and message in line


def test_device_auto_is_cuda_when_available_else_cpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == expected and resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(InputError, match="^device='gpu': not a device"):
        resolve_device("gpu")


@pytest.mark.parametrize("command", ["evaluate", "segment", "instances", "clean-boxes",
                                     "proposals", "finetune", "tune-beam", "train-head",
                                     "train-fcam", "localize"])
def test_every_model_command_takes_device(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "--device" in capsys.readouterr().out


def test_manifest_lists_paths_relative_to_itself(folder, tmp_path):
    manifest = folder / "list.txt"
    manifest.write_text("# two images and a missing one\nchelsea.jpg\n\n"
                        f'{{"image": "{folder / "coffee.jpg"}"}}\nmissing.jpg\nchelsea.jpg\n')
    out = tmp_path / "out"
    assert main(["localize", "--manifest", str(manifest), "--out", str(out), "--quiet",
                 "--method", "cam", "--workers", "0"]) == 1
    got = {Path(r["image"]).name: r["status"] for r in rows(out)}
    assert got == {"chelsea.jpg": "ok", "coffee.jpg": "ok", "missing.jpg": "failed"}
    assert len(rows(out)) == 3


@pytest.mark.parametrize(("line", "message"), [
    ('{"image": ', "list.jsonl:2: not a JSON line"),
    ('{"path": "a.jpg"}', 'list.jsonl:2: JSON line without an "image" path'),
])
def test_malformed_manifest_line_names_file_and_line(folder, tmp_path, capsys, line, message):
    manifest = folder / "list.jsonl"
    manifest.write_text(f'{{"image": "chelsea.jpg"}}\n{line}\n')
    assert main(["localize", "--manifest", str(manifest), "--out", str(tmp_path / "o"),
                 "--quiet"]) == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert err.startswith("wsolkit: error: ") and message in err
    assert not (tmp_path / "o").exists()


def test_no_paths_and_no_manifest_is_a_usage_error(tmp_path, capsys):
    assert main(["localize", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "give image PATHS or --manifest FILE" in capsys.readouterr().err


def test_saved_map_is_the_methods_heatmap_of_the_image(embedded_model, folder, tmp_path):
    import wsolkit
    from wsolkit.data.images import load_image

    out = tmp_path / "out"
    localize_files(embedded_model, [folder / "chelsea.jpg", folder / "broken.jpg"], out,
                   SETTINGS, job=JobOptions(workers=0, save_maps=True))
    ok, failed = rows(out)
    assert ok["map"] == "chelsea.cam.npy" and "map" not in failed
    saved = np.load(out / ok["map"])
    image = load_image(folder / "chelsea.jpg")
    expected = wsolkit.get_method("cam")(embedded_model)(
        embedded_model.preprocess(image)[None]).maps[0].numpy()
    assert saved.dtype == np.float16 and saved.shape == (224, 224)
    np.testing.assert_allclose(saved.astype(np.float32), expected, atol=1e-3)
