"""`wsolkit evaluate` on the engine: decoding workers and Ray actors give the same metrics as
a plain one-process loop (docs/scale.md)."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from wsolkit.apps.engine import JobOptions
from wsolkit.apps.evaluate import EvaluateSettings, evaluate
from wsolkit.apps.mosaics import build_mosaics
from wsolkit.cli.main import main
from wsolkit.data import load_image, open_dataset
from wsolkit.eval import BoxAccuracy
from wsolkit.maps import get_method

IMAGENET = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-dev"
LIMIT = 10


@pytest.fixture(scope="module")
def imagenet():
    if not IMAGENET.is_dir():
        pytest.skip(f"{IMAGENET} missing")
    return open_dataset(IMAGENET)


def plain_loop(dataset, model, batch_size: int) -> dict:
    """Box metrics the plain way: load, one call per batch, the raw map resized to
    224x224 (bicubic) and min-max normalized here (ReLU only for methods that
    apply one; cam does not), BoxAccuracy.update per image."""
    method = get_method("cam")(model)
    accuracy = BoxAccuracy(cam_curve_interval=0.01)
    samples = list(dataset)[:LIMIT]
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        images = [load_image(sample.path) for sample in chunk]
        result = method(model.preprocess_batch(images), target="gt",
                        labels=[sample.label for sample in chunk])
        for index, (sample, image) in enumerate(zip(chunk, images, strict=True)):
            raw = result.raw[index]
            raw = (raw.clamp(min=0) if method.relu else raw).double().numpy()
            grid = cv2.resize(raw, (224, 224), interpolation=cv2.INTER_CUBIC)
            grid -= grid.min()  # wsolevaluation's normalize_scoremap, operation for operation
            grid /= grid.max()
            predicted = int(result.logits[index].argmax())
            accuracy.update(grid.astype(np.float32), sample.boxes, image.size,
                            correct_class=predicted == sample.label)
    return accuracy.compute()


def test_decoding_workers_give_the_plain_loops_numbers(embedded_model, imagenet):
    settings = EvaluateSettings(method="cam", batch_size=4, limit=LIMIT)
    here = evaluate(imagenet, settings, embedded_model, job=JobOptions(workers=0))
    workers = evaluate(imagenet, settings, embedded_model, job=JobOptions(workers=2))
    assert here.metrics == workers.metrics
    assert [i.sample.image_id for i in here.images] == [i.sample.image_id for i in workers.images]
    reference = plain_loop(imagenet, embedded_model, batch_size=4)
    for key in ("MaxBoxAcc", "MaxBoxAccV2", "top1_loc", "gt_known"):
        if key in reference:
            assert here.metrics["boxes"][key] == reference[key], key


@pytest.fixture(scope="module")
def mosaics(tmp_path_factory, imagenet):
    """Multi-label mosaics of real imagenet-dev photos: the every-class metrics apply."""
    out = tmp_path_factory.mktemp("mosaics")
    build_mosaics(imagenet, out, grid=2, seed=0, repeats=1, tile=112)
    return open_dataset(out / "instances.json")


def test_ray_engine_gives_the_local_engines_metrics(embedded_model, imagenet, mosaics, tmp_path):
    pytest.importorskip("ray.data", reason="pip install 'wsolkit[ray]'")
    from wsolkit.apps.ray_engine import RayOptions, ray_session

    options = RayOptions(actors=2)
    single = EvaluateSettings(method="cam", batch_size=3, limit=LIMIT)
    multi = EvaluateSettings(method="cam", batch_size=2, limit=4)
    with ray_session(options):  # one Ray start for both runs
        ray_single = evaluate(imagenet, single, embedded_model, ray=options)
        ray_multi = evaluate(mosaics, multi, embedded_model, ray=options)
    local_single = evaluate(imagenet, single, embedded_model)
    local_multi = evaluate(mosaics, multi, embedded_model)
    assert ray_single.metrics == local_single.metrics
    assert "pointing_ap" in local_multi.metrics and "detection_ap" in local_multi.metrics
    assert ray_multi.metrics == local_multi.metrics
    assert [i.sample.image_id for i in ray_single.images] == \
        [i.sample.image_id for i in local_single.images]


def test_cli_evaluate_with_workers(tmp_path, capsys):
    if not IMAGENET.is_dir():
        pytest.skip(f"{IMAGENET} missing")
    code = main(["evaluate", str(IMAGENET), "--limit", "4", "--batch-size", "2", "--workers",
                 "1", "--out", str(tmp_path / "report"), "--quiet", "--device", "cpu"])
    assert code == 0
    assert (tmp_path / "report" / "metrics.json").is_file()
    assert main(["evaluate", str(IMAGENET), "--limit", "4", "--workers", "-1", "--out",
                 str(tmp_path / "r2"), "--quiet"]) == 2
    assert "--workers -1" in capsys.readouterr().err
