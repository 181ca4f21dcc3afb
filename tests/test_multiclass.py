"""Fast multi-class evaluation: one forward pass serves every class of an image."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import NUM_CLASSES, TinyCNN, seeded
from test_mosaics import make_set

import wsolkit
from wsolkit.apps.class_scoring import class_maps
from wsolkit.apps.evaluate import EvaluateSettings, evaluate
from wsolkit.apps.mosaics import build_mosaics
from wsolkit.data import load_image, open_dataset
from wsolkit.eval import DetectionAP, PointingAP, PointingGame, peaks
from wsolkit.eval.protocol import protocol_map, protocol_source
from wsolkit.maps import forward, get_method
from wsolkit.maps.targets import Targets
from wsolkit.refine import localize, scale_boxes

GRADIENT_METHODS = ["gradcam", "gradcampp", "xgradcam", "layercam"]


def tiny_classifier() -> wsolkit.Classifier:
    classifier = wsolkit.as_classifier(seeded(TinyCNN, seed=4))
    names = [f"class {i}" for i in range(NUM_CLASSES)]
    return dataclasses.replace(classifier, class_names=names, input_size=(48, 48))


@pytest.fixture
def mosaics(tmp_path):
    """2x2 mosaics of noise images of 5 classes, one or two boxes per tile."""
    labels = [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 1, 3]
    rng = np.random.default_rng(0)
    boxes = {k: [(int(x), int(y), int(x) + 30, int(y) + 15)] for k, (x, y) in
             enumerate(rng.integers(0, 40, (len(labels), 2)))}
    boxes[2].append((0, 0, 79, 39))
    source = make_set(tmp_path / "src", labels, boxes)
    noise = np.random.default_rng(1)
    for k in range(len(labels)):  # textured tiles, so maps differ between classes
        path = source / "images" / f"img{k}.png"
        from PIL import Image
        Image.fromarray(noise.integers(0, 255, (40, 80, 3), np.uint8)).save(path)
    for name in ("class_names.txt",):
        (source / name).write_text("\n".join(f"class {i}" for i in range(NUM_CLASSES)) + "\n")
    build_mosaics(open_dataset(source), tmp_path / "mosaics", grid=2, seed=0, repeats=2,
                  tile=32)
    return open_dataset(tmp_path / "mosaics" / "instances.json")


def slow_reference(dataset, model, method_name: str, threshold: float = 0.5) -> dict:
    """The protocol computed the slow way: one call (one forward pass) per image and class."""
    method = get_method(method_name)(model)
    pointing_ap, detection, pointing = (PointingAP(NUM_CLASSES), DetectionAP(NUM_CLASSES),
                                        PointingGame())
    for sample in dataset:
        image = load_image(sample.path)
        x = model.preprocess_batch([image])
        grids, values = [], []
        for c in range(NUM_CLASSES):
            single = method(x, target=c)
            grids.append(protocol_map(protocol_source(method, single.raw[0])))
            values.append(float(single.raw.max()))
            logits = single.logits[0]
        probabilities = logits.softmax(0).numpy()
        grids = np.stack(grids)
        size = image.size
        gt = scale_boxes(sample.boxes, (size[1], size[0]), (224, 224))
        pointing_ap.update(np.array(values), peaks(grids)[1], gt, sample.box_labels)
        found = [localize(g, "fraction", threshold, mode="all") if g.any() else None
                 for g in grids]
        boxes = np.concatenate([f.boxes for f in found if f is not None]).reshape(-1, 4)
        scores = np.concatenate([f.scores * probabilities[c] for c, f in enumerate(found)
                                 if f is not None])
        labels = np.concatenate([np.full(len(f.boxes), c) for c, f in enumerate(found)
                                 if f is not None])
        detection.update(boxes, scores, labels, gt, sample.box_labels, sample.box_ignore)
        for c in np.unique(sample.box_labels).tolist():
            pointing.update(grids[c], gt[sample.box_labels == c], class_id=c)
    return {"pointing_ap": pointing_ap.compute(), "detection_ap": detection.compute(),
            "pointing_per_class": pointing.compute()}


@pytest.mark.parametrize("method", ["cam", "gradcam", "gradcampp"])
def test_one_pass_for_every_class_equals_one_pass_per_class(mosaics, method):
    model = tiny_classifier()
    settings = EvaluateSettings(method=method, min_class_probability=0.0, batch_size=3)
    fast = evaluate(mosaics, settings, model).metrics
    slow = slow_reference(mosaics, model, method)
    for key in ("pointing_ap", "detection_ap", "pointing_per_class"):
        assert _flat(fast[key]) == pytest.approx(_flat(slow[key]), abs=1e-9), key
    assert fast["detection_ap"]["count"] == len(mosaics) == 5
    assert fast["detection_ap"]["mAP"] + fast["pointing_ap"]["mAP"] > 0  # not all zeros


def _flat(metrics: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_classification_map_against_hand_ranking(mosaics):
    model = tiny_classifier()
    metrics = evaluate(mosaics, EvaluateSettings(method="cam"), model).metrics
    probabilities, truth = [], []
    for sample in mosaics:
        with torch.no_grad():
            x = model.preprocess_batch([load_image(sample.path)])
            probabilities.append(model.module(x)[0].softmax(0).numpy())
        truth.append([c in sample.labels for c in range(NUM_CLASSES)])
    probabilities, truth = np.array(probabilities), np.array(truth)
    aps = []
    for c in range(NUM_CLASSES):
        if not truth[:, c].any():
            continue
        order = np.argsort(-probabilities[:, c], kind="stable")
        hits = truth[order, c]
        precision = [hits[:j + 1].mean() for j in range(len(hits))]
        # VOC all-points AP: at each positive, the best precision at that rank or lower
        aps.append(np.mean([max(precision[k:]) for k in np.flatnonzero(hits)]))
    assert metrics["classification_map"]["mAP"] == pytest.approx(100 * np.mean(aps), abs=1e-6)


def test_detection_rule_keeps_probable_classes_only():
    model = tiny_classifier()
    method = get_method("cam")(model)
    image = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        p = model.module(image)[0].softmax(0).numpy()
    for low in (0.0, 0.15, 0.25, 1.0):
        maps = class_maps(method, image, NUM_CLASSES, min_probability=low, present=(1,))
        expected = sorted({c for c in range(NUM_CLASSES) if p[c] >= low} | {int(p.argmax())})
        assert maps.detect == expected
        assert sorted(maps.grids) == sorted(set(expected) | {1})
        assert maps.peak_values.shape == (NUM_CLASSES,)  # every class's confidence


def test_expanded_targets_run_one_forward_pass_per_image():
    model = tiny_classifier()
    calls = []
    handle = model.module.register_forward_pre_hook(lambda m, args: calls.append(len(args[0])))
    try:
        images = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
        targets = Targets(torch.tensor([0, 1, 2, 3, 4, 4, 0]),
                          torch.tensor([0, 0, 0, 0, 0, 1, 1]))
        for name in ("cam", "gradcam"):
            method = get_method(name)(model)
            method(images)  # the first call also detects the CAM head (one forward pass)
            calls.clear()
            result = method(images, target=targets)
            assert calls == [2] and result.raw.shape[0] == 7
    finally:
        handle.remove()


@pytest.mark.parametrize("name", GRADIENT_METHODS + ["cam"])
def test_rows_sharing_images_match_separate_images(name):
    model = tiny_classifier()
    method = get_method(name)(model)
    images = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(5))
    result = method(images, target="top3")
    rows = result.image_index.tolist()
    separate = method(images[rows], target=result.classes.tolist())
    torch.testing.assert_close(result.raw, separate.raw, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(result.maps, separate.maps, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(result.scores, separate.scores)


def test_gradient_fallback_without_vmap_gives_the_same(monkeypatch):
    model = tiny_classifier()
    method = get_method("gradcam")(model)
    images = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(6))
    batched = method(images, target="top4").raw

    def no_vmap(*args, **kwargs):
        raise RuntimeError("no batching rule")

    monkeypatch.setattr(forward, "_batched_gradients", no_vmap)
    monkeypatch.setattr(forward, "linear_head_gradients", lambda *args: None)  # the generic path
    looped = method(images, target="top4").raw
    torch.testing.assert_close(batched, looped, atol=1e-6, rtol=1e-5)


def test_row_gradients_in_chunks_match_autograd_one_by_one(monkeypatch):
    monkeypatch.setattr(forward, "GRADIENT_CHUNK_ELEMENTS", 1)  # one row per chunk
    leaf = torch.randn(3, 2, 4, 4, requires_grad=True)
    weights = torch.randn(5, 2)
    logits = torch.einsum("ck,ukhw->uc", weights, leaf.pow(2))  # (3 images, 5 classes)
    index = torch.tensor([2, 0, 2, 1])
    classes = torch.tensor([4, 1, 0, 3])
    grads = forward.row_gradients(logits.reshape(-1), leaf, index, index * 5 + classes)
    for row in range(4):
        # d/dA of sum_k w_ck A_k^2 is 2 w_ck A_k on the row's own image
        expected = 2 * weights[classes[row], :, None, None] * leaf[index[row]].detach()
        torch.testing.assert_close(grads[row], expected)


def _tiny_head_pass(pool: torch.nn.Module):
    """TinyCNN's hooked features as a leaf and logits through ``pool`` and its linear head."""
    model = seeded(TinyCNN, seed=4)
    images = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(8))
    leaf = model.features(images).detach().requires_grad_()
    logits = model.fc(pool(leaf).flatten(1))
    return model, leaf, logits


def test_linear_head_gradients_match_autograd_class_by_class():
    model, leaf, logits = _tiny_head_pass(torch.nn.AdaptiveAvgPool2d(1))
    classes = torch.tensor([4, 0, 2, 2, 1])
    grads = forward.linear_head_gradients(model.fc, logits, leaf, classes)
    assert grads is not None and grads.shape == (5, *leaf.shape[1:])
    assert grads.stride(2) == grads.stride(3) == 0  # a view: nothing per location stored
    for row, c in enumerate(classes.tolist()):
        for image in range(2):  # the same for either image: the head is linear in the pool
            (expected,) = torch.autograd.grad(logits[image, c], leaf, retain_graph=True)
            torch.testing.assert_close(grads[row], expected[image])


def test_linear_head_gradients_refuse_a_head_that_is_not_average_pooled():
    model, leaf, logits = _tiny_head_pass(torch.nn.AdaptiveMaxPool2d(1))
    assert forward.linear_head_gradients(model.fc, logits, leaf, torch.tensor([0, 1])) is None
    model, leaf, _ = _tiny_head_pass(torch.nn.AdaptiveAvgPool2d(1))
    squared = model.fc(leaf.pow(2).mean(dim=(2, 3)))  # the same fc, but not linear in leaf
    assert forward.linear_head_gradients(model.fc, squared, leaf, torch.tensor([0, 1])) is None


class MaxPooledTinyCNN(TinyCNN):
    """TinyCNN whose head max-pools: the pooled-average gradient shortcut must not apply."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = torch.nn.AdaptiveMaxPool2d(1)


@pytest.mark.parametrize("name", ["gradcam", "gradcampp", "layercam"])
def test_every_class_gradients_equal_one_backward_per_class(name):
    for module in (seeded(TinyCNN, seed=4), seeded(MaxPooledTinyCNN, seed=4)):
        model = wsolkit.as_classifier(module, layer="features.act", fc="fc")
        method = get_method(name)(model)
        images = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(9))
        classes = torch.arange(NUM_CLASSES)
        shared = method(images, target=Targets(classes, torch.zeros_like(classes)))
        for c in range(NUM_CLASSES):  # independent: a forward and a backward per class
            single = method(images, target=c)
            torch.testing.assert_close(shared.raw[c], single.raw[0], atol=1e-6, rtol=1e-5)
