"""Tests of wsolkit.eval.pixel: PxAP, pixel IoU, F-measure, MAE and mask mIoU."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from wsolkit.errors import InputError
from wsolkit.eval.pixel import BoxMaskIoU, PixelMetrics, wsol_thresholds

BETA2 = 0.3


# ----------------------------------------------------------------------------- helpers
def smooth_map(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A [0, 1] float64 map made of a few Gaussian blobs, min exactly 0 and max exactly 1."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    out = np.zeros(shape)
    for _ in range(3):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        sigma = rng.uniform(2, 8)
        out += rng.uniform(0.3, 1) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    out -= out.min()
    return out / out.max()


def random_mask(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A random ellipse mask."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
    ry, rx = rng.uniform(2, shape[0] / 2), rng.uniform(2, shape[1] / 2)
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def quantized_dataset(seed: int = 0, count: int = 10):
    """(uint8 maps with min 0 and max 255, bool masks); includes an empty and a full mask."""
    rng = np.random.default_rng(seed)
    maps, masks = [], []
    for i in range(count):
        shape = (int(rng.integers(16, 28)), int(rng.integers(16, 28)))
        q = (smooth_map(rng, shape) * 255).astype(np.uint8)
        mask = random_mask(rng, shape)
        if i == 3:
            mask[:] = False
        if i == 7:
            mask[:] = True
        maps.append(q)
        masks.append(mask)
    return maps, masks


def brute_pxap(maps, fgs, ignores, thresholds) -> float:
    """wsolevaluation's PxAP by a loop over thresholds: >= 2, >= 1, >= t_{T-1}, ..., >= t_0."""
    values = np.concatenate([m[~ig] for m, ig in zip(maps, ignores, strict=True)])
    labels = np.concatenate([f[~ig] for f, ig in zip(fgs, ignores, strict=True)])
    positives = labels.sum()
    total, prev_recall = 0.0, None
    for thr in [2.0, 1.0, *thresholds[::-1]]:
        tp = np.sum((values >= thr) & labels)
        fp = np.sum((values >= thr) & ~labels)
        recall = tp / positives
        if prev_recall is not None and tp + fp > 0:
            total += tp / (tp + fp) * (recall - prev_recall)
        prev_recall = recall
    return total * 100


def brute_iou_curve(value, fg, thresholds):
    """Per-threshold (tp, fp, fn) of one image by a loop."""
    return np.array(
        [
            [np.sum((value >= t) & fg), np.sum((value >= t) & ~fg), np.sum((value < t) & fg)]
            for t in thresholds
        ],
        dtype=np.float64,
    )


def brute_f(q: np.ndarray, fg: np.ndarray):
    """Per-level precision, recall, F of one uint8 map, by a loop over levels 0..255."""
    precision, recall, fmeasure = [], [], []
    for k in range(256):
        pred = q >= k
        tp = np.sum(pred & fg)
        p = tp / pred.sum() if pred.sum() else 0.0
        r = tp / max(fg.sum(), 1)
        f = (1 + BETA2) * p * r / (BETA2 * p + r) if p * r > 0 else 0.0
        precision.append(p)
        recall.append(r)
        fmeasure.append(f)
    return np.array(precision), np.array(recall), np.array(fmeasure)


# ----------------------------------------------------------------------------- hand cases
def test_hand_4x4_counts_iou_and_pxap():
    # Foreground = left half (8 px): 6 at 0.9, 2 at 0.2. Background: 3 at 0.7, 5 at 0.1.
    heatmap = np.array(
        [
            [0.9, 0.9, 0.7, 0.1],
            [0.9, 0.9, 0.7, 0.1],
            [0.9, 0.9, 0.7, 0.1],
            [0.2, 0.2, 0.1, 0.1],
        ]
    )
    fg = np.zeros((4, 4), dtype=bool)
    fg[:, :2] = True
    metric = PixelMetrics(num_thresholds=2)  # thresholds 0 and 0.5
    metric.update(heatmap, fg)
    out = metric.compute()
    # t=0: TP 8, FP 8, FN 0 -> IoU 1/2; t=0.5: TP 6, FP 3, FN 2 -> IoU 6/11 (best).
    assert out["best_threshold"] == 0.5
    assert out["counts"] == {
        "images": 1, "foreground": 8, "background": 8, "ignored": 0, "tp": 6, "fp": 3, "fn": 2
    }
    assert out["IoU"] == pytest.approx(600 / 11)
    assert out["mIoU"] == pytest.approx(600 / 11)
    assert out["mIoU_oracle"] == pytest.approx(600 / 11)
    assert out["curves"]["thresholds"] == [0.0, 0.5]
    assert out["curves"]["precision"] == pytest.approx([0.5, 6 / 9])
    assert out["curves"]["recall"] == pytest.approx([1.0, 0.75])
    assert out["curves"]["iou"] == pytest.approx([50.0, 600 / 11])
    # wsolevaluation order >=2, >=1, >=0.5, >=0: tp 0 0 6 8, fp 0 0 3 8, recall 0 0 .75 1;
    # AP = (6/9) * 0.75 + (8/16) * 0.25 = 0.625.
    assert out["PxAP"] == pytest.approx(62.5)


def test_perfect_map_scores_100():
    rng = np.random.default_rng(1)
    metric = PixelMetrics()
    for _ in range(3):
        fg = random_mask(rng, (20, 24))
        metric.update(fg.astype(np.float64), fg)
    out = metric.compute()
    assert out["PxAP"] == pytest.approx(100.0)
    assert out["IoU"] == pytest.approx(100.0)
    assert out["mIoU"] == pytest.approx(100.0)
    assert out["F_ODS"] == pytest.approx(1.0)
    assert out["F_OIS"] == pytest.approx(1.0)
    assert out["MAE"] == 0.0


def test_anti_correlated_map_scores_low():
    fg = np.zeros((10, 10), dtype=bool)
    fg[2:7, 2:7] = True  # 25 % foreground
    metric = PixelMetrics()
    metric.update(1.0 - fg, fg)
    out = metric.compute()
    # Precision is 0 until the last threshold (everything positive): AP = foreground fraction.
    assert out["PxAP"] == pytest.approx(25.0)
    assert out["MAE"] == 1.0


def test_mae_by_hand():
    metric = PixelMetrics()
    metric.update(np.array([[0.2, 0.8], [1.0, 0.0]]), np.array([[False, True], [True, False]]))
    metric.update(
        np.array([[0.5, 0.25]]), np.array([[True, False]]), ignore=np.array([[False, True]])
    )
    # Image 1: (0.2 + 0.2 + 0 + 0) / 4 = 0.1; image 2 (second pixel ignored): 0.5.
    assert metric.compute()["MAE"] == pytest.approx(0.3)


def test_ois_and_ods_by_hand():
    # A: fg = {200}, bg = {0}: F = f0 at level 0, 1 at levels 1..200, 0 above.
    # B: fg = {240}, bg = {220}: F = f0 at levels 0..220, 1 at 221..240, 0 above.
    # with f0 = F(P=1/2, R=1) = 1.3 * 0.5 / (0.3 * 0.5 + 1).
    metric = PixelMetrics()
    metric.update(np.array([[200 / 255, 0.0]]), np.array([[True, False]]))
    metric.update(np.array([[240 / 255, 220 / 255]]), np.array([[True, False]]))
    out = metric.compute()
    f0 = 1.3 * 0.5 / 1.15
    assert out["F_OIS"] == pytest.approx(1.0)  # each image reaches F = 1 at its own level
    # Mean curve: f0 (level 0), (1 + f0) / 2 (1..200), f0 / 2 (201..220), 1 / 2 (221..240).
    assert out["F_ODS"] == pytest.approx((1.0 + f0) / 2)
    assert out["F_threshold"] == pytest.approx(1 / 255)  # first of the tied best levels


def test_ignore_pixels_do_not_count():
    rng = np.random.default_rng(2)
    heatmap = smooth_map(rng, (18, 22))
    fg = random_mask(rng, (18, 22))
    ignore = rng.random((18, 22)) < 0.3
    ignore[fg] &= rng.random(int(fg.sum())) < 0.5  # some foreground pixels ignored too

    with_ignore = PixelMetrics()
    with_ignore.update(heatmap, fg, ignore)
    garbage = heatmap.copy()
    garbage[ignore] = rng.random(int(ignore.sum()))
    with_garbage = PixelMetrics()
    with_garbage.update(garbage, fg ^ (ignore & (rng.random(fg.shape) < 0.5)), ignore)
    kept_only = PixelMetrics()  # the kept pixels as one (1, K) image
    kept_only.update(heatmap[~ignore][None, :], fg[~ignore][None, :])

    a, b, c = with_ignore.compute(), with_garbage.compute(), kept_only.compute()
    assert a["counts"]["ignored"] == int(ignore.sum())
    assert a["counts"]["foreground"] + a["counts"]["background"] == int((~ignore).sum())
    for key in ("PxAP", "IoU", "mIoU", "mIoU_oracle", "F_ODS", "F_OIS", "MAE", "best_threshold"):
        assert a[key] == b[key] == c[key], key
    assert a["curves"] == b["curves"] == c["curves"]


# ----------------------------------------------------------------------------- references
@pytest.mark.parametrize("num_thresholds", [100, 49])
def test_pxap_and_iou_match_brute_force(num_thresholds):
    rng = np.random.default_rng(3)
    thresholds = wsol_thresholds(num_thresholds)
    maps, fgs, ignores = [], [], []
    for i in range(4):
        shape = (12, 15)
        heatmap = smooth_map(rng, shape)
        if i % 2:  # values exactly on thresholds, and exactly 1
            heatmap = thresholds[(heatmap * (num_thresholds - 1)).astype(int)]
            heatmap[0, 0] = 1.0
        maps.append(heatmap)
        fgs.append(random_mask(rng, shape))
        ignores.append(rng.random(shape) < 0.2)
    metric = PixelMetrics(num_thresholds=num_thresholds)
    for heatmap, fg, ignore in zip(maps, fgs, ignores, strict=True):
        metric.update(heatmap, fg, ignore)
    out = metric.compute()
    assert out["PxAP"] == pytest.approx(brute_pxap(maps, fgs, ignores, thresholds), abs=1e-10)

    per_image = [
        brute_iou_curve(m[~ig], f[~ig], thresholds)
        for m, f, ig in zip(maps, fgs, ignores, strict=True)
    ]
    pooled = np.sum(per_image, axis=0)
    pooled_iou = pooled[:, 0] / pooled.sum(axis=1)
    best = int(np.argmax(pooled_iou))
    image_iou = np.array([c[:, 0] / c.sum(axis=1) for c in per_image])
    assert out["best_threshold"] == thresholds[best]
    assert out["IoU"] == pytest.approx(100 * pooled_iou[best])
    assert out["mIoU"] == pytest.approx(100 * image_iou[:, best].mean())
    assert out["mIoU_oracle"] == pytest.approx(100 * image_iou.max(axis=1).mean())
    assert out["curves"]["iou"] == pytest.approx(100 * pooled_iou)
    assert out["curves"]["recall"] == pytest.approx(pooled[:, 0] / (pooled[:, 0] + pooled[:, 2]))
    assert [out["counts"][k] for k in ("tp", "fp", "fn")] == pooled[best].tolist()


def test_fmeasure_matches_brute_force():
    maps, masks = quantized_dataset(seed=4, count=5)
    metric = PixelMetrics()
    curves = []
    for q, mask in zip(maps, masks, strict=True):
        metric.update(q / 255, mask)
        curves.append(brute_f(q, mask))
    out = metric.compute()
    precision, recall, fmeasure = (np.mean([c[i] for c in curves], axis=0) for i in range(3))
    assert out["curves"]["f_precision"] == pytest.approx(precision, abs=1e-12)
    assert out["curves"]["f_recall"] == pytest.approx(recall, abs=1e-12)
    assert out["curves"]["f_measure"] == pytest.approx(fmeasure, abs=1e-12)
    assert out["F_ODS"] == pytest.approx(fmeasure.max(), abs=1e-12)
    assert out["F_OIS"] == pytest.approx(np.mean([c[2].max() for c in curves]), abs=1e-12)


def test_matches_pysodmetrics():
    sod = pytest.importorskip("py_sod_metrics")
    maps, masks = quantized_dataset(seed=5, count=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Fmeasure's deprecation notice
        fm = sod.Fmeasure()
    mae = sod.MAE()
    metric = PixelMetrics()
    for q, mask in zip(maps, masks, strict=True):
        assert q.min() == 0 and q.max() == 255  # so pysodmetrics' min-max is a no-op
        gt = mask.astype(np.uint8) * 255
        fm.step(pred=q, gt=gt)
        mae.step(pred=q, gt=gt)
        metric.update(q / 255, mask)
    ours = metric.compute()
    ref = fm.get_results()
    # pysodmetrics lists levels 255 .. 0; ours are ascending.
    assert ours["F_ODS"] == pytest.approx(ref["fm"]["curve"].max(), abs=1e-6)
    assert ours["curves"]["f_measure"] == pytest.approx(ref["fm"]["curve"][::-1], abs=1e-6)
    assert ours["curves"]["f_precision"] == pytest.approx(ref["pr"]["p"][::-1], abs=1e-6)
    assert ours["curves"]["f_recall"] == pytest.approx(ref["pr"]["r"][::-1], abs=1e-6)
    assert ours["MAE"] == pytest.approx(mae.get_results()["mae"], abs=1e-6)


def test_wsol_thresholds_match_wsolevaluation():
    assert np.array_equal(wsol_thresholds(100), np.arange(0, 1, 0.01))
    assert np.array_equal(wsol_thresholds(1000), np.arange(0, 1, 0.001))
    assert len(wsol_thresholds(49)) == 49  # np.arange(0, 1, 1 / 49) has 50 values


# ----------------------------------------------------------------------------- state, inputs
def test_reset_clears_and_repeats():
    rng = np.random.default_rng(6)
    heatmap, fg = smooth_map(rng, (10, 12)), random_mask(rng, (10, 12))
    metric = PixelMetrics()
    metric.update(heatmap, fg)
    first = metric.compute()
    metric.update(1 - heatmap, fg)
    metric.reset()
    with pytest.raises(InputError, match="no images were added"):
        metric.compute()
    metric.update(heatmap, fg)
    assert metric.compute() == first


def test_inputs_not_modified():
    rng = np.random.default_rng(7)
    heatmap = smooth_map(rng, (10, 12)).astype(np.float32)
    fg, ignore = random_mask(rng, (10, 12)), rng.random((10, 12)) < 0.3
    copies = heatmap.copy(), fg.copy(), ignore.copy()
    metric = PixelMetrics()
    metric.update(heatmap, fg, ignore)
    metric.compute()
    boxes = BoxMaskIoU()
    boxes.update(fg, ~fg, ignore)
    for original, copy in zip((heatmap, fg, ignore), copies, strict=True):
        assert np.array_equal(original, copy) and original.dtype == copy.dtype


@pytest.mark.parametrize(
    ("heatmap", "foreground", "ignore", "message"),
    [
        (np.zeros((4, 5)), np.zeros((4, 6), bool), None,
         r"heatmap shape \(4, 5\) differs from foreground shape \(4, 6\)"),
        (np.zeros((4, 5)), np.zeros((4, 5), bool), np.zeros((5, 4), bool),
         r"heatmap shape \(4, 5\) differs from ignore shape \(5, 4\)"),
        (np.full((2, 2), np.nan), np.zeros((2, 2), bool), None, "NaN or inf"),
        (np.full((2, 2), np.inf), np.zeros((2, 2), bool), None, "NaN or inf"),
        (np.full((2, 2), 1.5), np.zeros((2, 2), bool), None, r"in \[0, 1\].*max 1.5"),
        (np.full((2, 2), -0.1), np.zeros((2, 2), bool), None, r"in \[0, 1\].*min -0.1"),
        (np.zeros((2, 2, 3)), np.zeros((2, 2), bool), None, r"\(H, W\).*\(2, 2, 3\)"),
        (np.zeros((2, 2)), np.zeros((2, 2), np.uint8), None, "foreground must be a bool"),
        (np.zeros((2, 2)), np.zeros((2, 2), bool), np.ones((2, 2), bool), "every pixel"),
    ],
)
def test_update_errors(heatmap, foreground, ignore, message):
    with pytest.raises(InputError, match=message):
        PixelMetrics().update(heatmap, foreground, ignore)


def test_compute_errors_and_bad_options():
    metric = PixelMetrics()
    with pytest.raises(InputError, match="no images were added"):
        metric.compute()
    metric.update(np.zeros((2, 2)), np.zeros((2, 2), bool))
    with pytest.raises(InputError, match="no foreground pixel"):
        metric.compute()
    with pytest.raises(InputError, match="num_thresholds"):
        PixelMetrics(num_thresholds=0)
    with pytest.raises(InputError, match="fmeasure_levels"):
        PixelMetrics(fmeasure_levels=1)
    with pytest.raises(InputError, match="beta2"):
        PixelMetrics(beta2=-1)


# ----------------------------------------------------------------------------- BoxMaskIoU
def test_box_mask_iou_by_hand():
    gt = np.zeros((4, 4), bool)
    gt[:2, :2] = True  # 4 px
    pred = np.zeros((4, 4), bool)
    pred[:2, :3] = True  # 6 px, 4 shared -> IoU 4/6
    ignore = np.zeros((4, 4), bool)
    ignore[:, 2] = True  # drops pred's third column -> IoU 1
    metric = BoxMaskIoU()
    metric.update(pred, gt)
    metric.update(pred, gt, ignore)
    metric.update(np.zeros((3, 3), bool), np.zeros((3, 3), bool))  # empty union counts as 1
    assert metric.compute() == {"mIoU": pytest.approx(100 * (4 / 6 + 1 + 1) / 3), "count": 3}
    metric.reset()
    with pytest.raises(InputError, match="no images were added"):
        metric.compute()


def test_box_mask_iou_errors():
    metric = BoxMaskIoU()
    with pytest.raises(InputError, match=r"pred shape \(2, 2\) differs from gt shape \(2, 3\)"):
        metric.update(np.zeros((2, 2), bool), np.zeros((2, 3), bool))
    with pytest.raises(InputError, match="pred must be a bool"):
        metric.update(np.zeros((2, 2)), np.zeros((2, 2), bool))
    with pytest.raises(InputError, match="gt must be a bool"):
        metric.update(np.zeros((2, 2), bool), np.zeros((2, 2), np.uint8))
