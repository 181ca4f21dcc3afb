"""`wsolkit localize --engine ray` (Ray Data, local mode) gives the local engine's rows."""

import json
import shutil
from pathlib import Path

import pytest

from wsolkit.apps import JobOptions, LocalizeSettings, localize_files
from wsolkit.cli.main import main

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-dev" / "images"


def rows(out: Path) -> dict[str, dict]:
    found = [json.loads(line) for shard in sorted(out.glob("rows-*.jsonl"))
             for line in shard.read_text().splitlines()]
    by_image = {row["image"]: row for row in found}
    assert len(by_image) == len(found)  # no image twice
    return by_image


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    if not DEV.is_dir():
        pytest.skip(f"{DEV} missing")
    pytest.importorskip("ray.data", reason="pip install 'wsolkit[ray]'")
    folder = tmp_path_factory.mktemp("in")
    for path in sorted(DEV.iterdir())[:5]:
        shutil.copy(path, folder / path.name)
    (folder / "truncated.jpg").write_bytes(sorted(DEV.iterdir())[5].read_bytes()[:900])
    return folder


@pytest.mark.parametrize("method", ["cam", "gradcam"])
def test_ray_engine_rows_equal_local_engine_rows(embedded_model, images, tmp_path, capsys,
                                                 method):
    paths = sorted(images.iterdir())
    local = tmp_path / "local"
    localize_files(embedded_model, paths, local, LocalizeSettings(method=method, batch_size=4),
                   job=JobOptions(workers=0))
    out = tmp_path / "ray"
    code = main(["localize", str(images), "--out", str(out), "--quiet", "--engine", "ray",
                 "--method", method, "--batch-size", "4", "--actors", "2", "--shard-size", "4",
                 "--device", "cpu"])
    assert code == 1  # truncated.jpg
    ray_rows, local_rows = rows(out), rows(local)
    assert set(ray_rows) == {str(p) for p in paths}
    assert ray_rows == local_rows
    failed = ray_rows[str(images / "truncated.jpg")]
    assert failed["status"] == "failed" and "truncated" in failed["error"]
    summary = json.loads((out / "results.json").read_text())
    assert summary["counts"] == {"ok": 5, "failed": 1} and summary["layer"] == "features.head"
    assert "truncated.jpg" in capsys.readouterr().err


def test_ray_engine_resumes_without_duplicates(images, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(images.parent)  # relative paths: rows name them as given
    out = tmp_path / "out"
    first = sorted(images.iterdir())[:3]
    args = ["--out", str(out), "--quiet", "--engine", "ray", "--method", "cam",
            "--device", "cpu"]
    assert main(["localize", *(f"{images.name}/{p.name}" for p in first), *args]) == 0
    assert main(["localize", images.name, *args]) == 1
    done = rows(out)
    assert set(done) == {f"{images.name}/{p.name}" for p in sorted(images.iterdir())}
    assert done[f"{images.name}/truncated.jpg"]["error"].startswith(f"{images.name}/truncated")
    assert "(3 already done)" in capsys.readouterr().err


def test_ray_engine_refuses_overlays(images, tmp_path, capsys):
    assert main(["localize", str(images), "--out", str(tmp_path / "o"), "--quiet", "--engine",
                 "ray", "--overlays", "--device", "cpu"]) == 2
    assert "--engine ray draws no overlays" in capsys.readouterr().err


def test_without_ray_the_error_names_the_extra(embedded_model, tmp_path, monkeypatch):
    import sys

    from wsolkit.apps.ray_engine import localize_files_ray
    from wsolkit.errors import DependencyError

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(DependencyError, match=r"pip install 'wsolkit\[ray\]'"):
        localize_files_ray(embedded_model, [Path("a.jpg")], tmp_path / "o", LocalizeSettings())
    assert not (tmp_path / "o").exists()
