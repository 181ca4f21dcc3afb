"""Bad command-line input: one-line errors naming the argument or file, inputs left as found."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

import wsolkit
from wsolkit.cli.main import main
from wsolkit.errors import InputError
from wsolkit.maps import get_method, make_method

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(),
                                     p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


def one_line_error(capsys, message: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("wsolkit: error:"), err
    assert message in err[0], err[0]
    return err[0]


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "in" / "chelsea.jpg"
    path.parent.mkdir()
    shutil.copy(EXAMPLES / "chelsea.jpg", path)
    return path


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "afile.txt"
    path.write_text("x")
    return path


@pytest.mark.parametrize("command", ["localize", "proposals"])
def test_out_that_is_a_file_is_a_usage_error(command, image, a_file, capsys):
    for out, message in ((a_file, f"--out {a_file}: exists and is not a folder"),
                         (a_file / "sub", f"--out {a_file / 'sub'}: cannot be a folder")):
        assert main([command, str(image), "--out", str(out), "--quiet"]) == 2
        one_line_error(capsys, message)
    assert a_file.read_text() == "x"


def test_evaluate_checks_out_and_save_maps_first(tmp_path, a_file, capsys):
    missing = str(tmp_path / "no-dataset")
    assert main(["evaluate", missing, "--out", str(a_file), "--quiet"]) == 2
    one_line_error(capsys, f"--out {a_file}: exists and is not a folder")
    assert main(["evaluate", missing, "--out", str(tmp_path / "o"), "--save-maps",
                 str(a_file / "maps"), "--quiet"]) == 2
    one_line_error(capsys, f"--save-maps {a_file / 'maps'}: cannot be a folder")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--option", "foo=1"],
         "option 'foo' is unknown to gradcam; it takes fc, fuse, layer, reshape,"),
        (["--method", "smoothgradcampp", "--option", "samples=abc"],
         "option samples='abc' of smoothgradcampp: expected an integer"),
        (["--method", "scorecam", "--option", "max_channels=2", "--option", "batch_size=x"],
         "option batch_size='x' of scorecam: expected an integer"),
        (["--option", "layer=features.head"], "--option 'layer=features.head': use --layer"),
        (["--weights", "w.pth"], "--weights w.pth: only torchvision:<arch> and timm:<name>"),
    ],
)
def test_bad_method_options_and_weights_are_one_line(image, tmp_path, capsys, args, message):
    out = tmp_path / "o"
    assert main(["localize", str(image), "--out", str(out), "--quiet", *args]) == 2
    one_line_error(capsys, message)
    assert not out.exists()


def test_method_option_check_is_shared_by_every_method(embedded_model):
    with pytest.raises(InputError, match="option 'max_channels' is unknown to cam"):
        make_method("cam", embedded_model, max_channels=3)
    with pytest.raises(InputError, match="noise='a' of smoothgradcampp: expected a number"):
        make_method("smoothgradcampp", embedded_model, noise="a")
    assert make_method("scorecam", embedded_model, max_channels=3, upsample="bicubic")
    with pytest.raises(InputError, match="option 'max_channels' is unknown to cam"):
        wsolkit.heatmaps(embedded_model, torch.zeros(1, 3, 32, 32), "cam", max_channels=3)


def test_method_constructors_are_plain_python(embedded_model):
    """Options are checked at the registry's boundary; a constructor is an ordinary call."""
    with pytest.raises(TypeError, match="max_channels"):
        get_method("cam")(embedded_model, max_channels=3)


def _empty_coco(tmp_path: Path) -> Path:
    path = tmp_path / "empty.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "width": 64,
                                            "height": 64}],
                                "annotations": [], "categories": [{"id": 1, "name": "cat"}]}))
    return path


def test_empty_dataset_errors_name_it(tmp_path, capsys):
    coco = _empty_coco(tmp_path)
    assert main(["evaluate", str(coco), "--out", str(tmp_path / "e"), "--quiet"]) == 2
    one_line_error(capsys, f"{coco}: the dataset has no images to score")
    assert main(["proposals", "--dataset", str(coco), "--out", str(tmp_path / "p"),
                 "--quiet"]) == 2
    one_line_error(capsys, f"--dataset {coco}: no annotated images")
    assert not (tmp_path / "p").exists()


def _voc(root: Path) -> Path:
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    shutil.copy(EXAMPLES / "chelsea.jpg", root / "JPEGImages" / "chelsea.jpg")
    (root / "Annotations" / "chelsea.xml").write_text(
        "<annotation><filename>chelsea.jpg</filename><size><width>451</width>"
        "<height>300</height></size><object><name>cat</name><bndbox><xmin>150</xmin>"
        "<ymin>20</ymin><xmax>300</xmax><ymax>250</ymax></bndbox></object></annotation>"
    )
    return root


def test_clean_boxes_never_replaces_the_input_voc_folder(tmp_path, capsys):
    root = _voc(tmp_path / "voc")
    before = snapshot(root)
    # The Annotations folder itself as input: OUT/Annotations would be the input.
    assert main(["clean-boxes", str(root / "Annotations"), "--images",
                 str(root / "JPEGImages"), "--out", str(root), "--quiet"]) == 2
    one_line_error(capsys, f"would replace the input {root / 'Annotations'}")
    assert main(["clean-boxes", str(root), "--out", str(root), "--quiet"]) == 2
    one_line_error(capsys, "is the input folder")
    assert snapshot(root) == before
    assert sorted(p.name for p in root.iterdir()) == ["Annotations", "JPEGImages"]


def test_clean_boxes_refuses_an_annotation_file_named_like_its_changes_file(tmp_path, capsys):
    root = tmp_path / "coco"
    (root / "images").mkdir(parents=True)
    shutil.copy(EXAMPLES / "chelsea.jpg", root / "images" / "chelsea.jpg")
    source = root / "changes.json"
    source.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "chelsea.jpg", "width": 451, "height": 300}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [150, 20, 150, 230],
                         "iscrowd": 0}],
        "categories": [{"id": 1, "name": "cat"}]}))
    before = snapshot(root)
    assert main(["clean-boxes", str(source), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    one_line_error(capsys, f"{source}: an annotation file named changes.json would clash")
    assert main(["clean-boxes", str(source), "--out", str(root), "--quiet"]) == 2
    one_line_error(capsys, f"would overwrite the input {source}")
    assert snapshot(root) == before


def test_library_names_parameters_and_the_cli_names_flags(tmp_path, capsys):
    """The same bad setting: the library's message says batch_size=, the CLI's --batch-size."""
    from wsolkit.apps.clean_boxes import CleanSettings
    from wsolkit.train.heads import HeadSettings

    with pytest.raises(InputError, match=r"^batch_size=0: must be a positive integer$"):
        CleanSettings(batch_size=0).check()
    with pytest.raises(InputError, match=r"^fraction=1\.5: must lie in \(0, 1\]$"):
        CleanSettings(fraction=1.5).check()
    with pytest.raises(InputError, match=r"^val_fraction must be in \[0, 1\); got 2\.0$"):
        HeadSettings(val_fraction=2.0).check()

    coco = tmp_path / "a.json"
    coco.write_text('{"images": [], "annotations": [], "categories": []}')
    for args, flag_text in (
        (["clean-boxes", str(coco), "--batch-size", "0"], "--batch-size 0: must be a positive"),
        (["clean-boxes", str(coco), "--tighten-fraction", "1.5"],
         "--tighten-fraction 1.5: must lie in (0, 1]"),
        (["train-head", str(coco), "--val-fraction", "2"], "--val-fraction must be in [0, 1)"),
    ):
        out = ["--out", str(tmp_path / ("o.pt" if args[0] == "train-head" else "o"))]
        assert main([*args, *out]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line == f"wsolkit: error: {flag_text}" or line.startswith(
            f"wsolkit: error: {flag_text}"), line
        assert "=" not in line.split(": ")[2]  # no library keyword left in the flag part


def test_flag_message_by_hand():
    import argparse

    from wsolkit.cli.options import flag_message

    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--save-maps")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--crf", action=argparse.BooleanOptionalAction)
    cases = {
        "save_maps=/a b: cannot be a folder": "--save-maps /a b: cannot be a folder",
        "out=/x: exists and is not a folder": "OUT /x: exists and is not a folder",
        "resume=True: c.pt was made with lr=0.1, not 0.2": "--resume: c.pt was made with lr=0.1,"
                                                           " not 0.2",
        "segment without it (crf=False)": "segment without it (--no-crf)",
        "crf=True": "--crf",
        "option crf=1 of x; --option 'out=3': use --out": "option crf=1 of x; --option 'out=3': "
                                                          "use --out",
        "save_maps must be a folder": "--save-maps must be a folder",
        "out must be a folder": "out must be a folder",  # positionals only as name=value
        "mode='fast': unknown": "mode='fast': unknown",  # not an argument of this command
    }
    for library, cli in cases.items():
        assert flag_message(library, parser) == cli
    assert flag_message("fraction=2: bad", parser, {"fraction": "--tighten-fraction"}) == \
        "--tighten-fraction 2: bad"
