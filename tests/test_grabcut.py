import numpy as np
import pytest
import torch

from wsolkit.errors import InputError
from wsolkit.refine.grabcut import (
    BGD,
    FGD,
    PR_BGD,
    PR_FGD,
    box_prior,
    box_rect,
    expand_box,
    grabcut,
    grabcut_box,
    stratify,
)


def counts(labels):
    return {name: int((labels == value).sum())
            for name, value in (("bgd", BGD), ("fgd", FGD), ("pr_bgd", PR_BGD), ("pr_fgd", PR_FGD))}


def ramp():
    """10x10 map with the values k / 99, k = 0..99."""
    return (np.arange(100, dtype=np.float64) / 99).reshape(10, 10)


def two_colour_image(size=40, lo=10, hi=30, seed=0):
    """Blue noisy background with a red noisy square [lo, hi) x [lo, hi)."""
    rng = np.random.default_rng(seed)
    image = np.zeros((size, size, 3), np.float64)
    image[...] = (30, 60, 200)
    image[lo:hi, lo:hi] = (210, 40, 30)
    image += rng.normal(0, 12, image.shape)
    truth = np.zeros((size, size), bool)
    truth[lo:hi, lo:hi] = True
    return np.clip(image, 0, 255).astype(np.uint8), truth


def iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


# --- stratify -------------------------------------------------------------------------------


def test_paper_rule_is_exact():
    heat = np.array([[0.0, 0.0, 0.1, 0.2],
                     [0.3, 0.4, 0.5, 0.6],
                     [0.7, 0.8, 0.9, 1.0],
                     [0.0, 0.05, 0.05, 0.1]])
    mean = heat.mean()  # 0.35625
    labels = stratify(heat, "paper")
    assert np.array_equal(labels == FGD, heat > mean)
    assert np.array_equal(labels == PR_FGD, (heat > 0) & (heat <= mean))
    assert np.array_equal(labels == PR_BGD, heat == 0)
    assert counts(labels) == {"bgd": 0, "fgd": 7, "pr_bgd": 3, "pr_fgd": 6}


def test_paper_rule_nonzero_mean_as_in_the_authors_code():
    heat = np.array([[0.0, 0.0, 0.2, 0.4]])  # mean 0.15, nonzero mean 0.3
    assert counts(stratify(heat, "paper")) == {"bgd": 0, "fgd": 2, "pr_bgd": 2, "pr_fgd": 0}
    assert counts(stratify(heat, "paper", mean="nonzero")) == {
        "bgd": 0, "fgd": 1, "pr_bgd": 2, "pr_fgd": 1}


def test_paper_rule_on_a_min_max_normalized_map_has_one_background_seed():
    heat = ramp()
    assert counts(stratify(heat, "paper"))["pr_bgd"] == 1


def test_quantile_rule_counts():
    labels = stratify(ramp(), "quantile", fg=0.9, split=0.6, bg=0.2)
    assert counts(labels) == {"bgd": 20, "fgd": 10, "pr_bgd": 40, "pr_fgd": 30}
    assert labels.dtype == np.uint8 and labels.shape == (10, 10)


def test_quantile_rule_without_sure_labels():
    labels = stratify(ramp(), "quantile", fg=None, split=0.5, bg=None)
    assert counts(labels) == {"bgd": 0, "fgd": 0, "pr_bgd": 50, "pr_fgd": 50}


def test_quantile_rule_parameters_are_checked():
    with pytest.raises(InputError, match="fg"):
        stratify(ramp(), "quantile", fg=0.3, split=0.6)
    with pytest.raises(InputError, match="bg"):
        stratify(ramp(), "quantile", bg=0.8, split=0.6)
    with pytest.raises(InputError, match="split"):
        stratify(ramp(), "paper", split=0.5)
    with pytest.raises(InputError, match="rule"):
        stratify(ramp(), "mean")
    with pytest.raises(InputError):
        stratify(ramp() * 2, "quantile")


def test_otsu_rule_counts():
    heat = np.zeros((10, 10))
    heat[:, 5:] = 0.4
    heat[:, 8:] = 1.0
    labels = stratify(heat, "otsu", fg=0.5, bg=0.5)
    # Otsu puts t = 103/256 (0.40 in bin 102 is below it); sure bg < t / 2 is the zeros,
    # sure fg >= t + (1 - t) / 2 is the 1.0 columns.
    assert counts(labels) == {"bgd": 50, "fgd": 20, "pr_bgd": 30, "pr_fgd": 0}


def test_otsu_rule_on_a_constant_map_gives_probable_foreground():
    labels = stratify(np.full((4, 4), 0.5), "otsu")
    assert counts(labels)["pr_fgd"] == 16


def test_border_is_sure_background_except_sure_foreground():
    heat = np.full((10, 10), 0.5)
    heat[0, 0] = 1.0
    labels = stratify(heat, "quantile", fg=0.99, split=0.5, bg=None, border=2)
    frame = np.ones((10, 10), bool)
    frame[2:-2, 2:-2] = False
    assert labels[0, 0] == FGD
    assert (labels[frame] == BGD).sum() == frame.sum() - 1
    thin = stratify(ramp(), "quantile", fg=None, border=0.1)  # 0.1 x 10 px = 1 px
    assert (thin[frame & ~np.pad(np.ones((8, 8), bool), 1, constant_values=False)] == BGD).all()
    assert np.array_equal(thin[1:-1, 1:-1],
                          stratify(ramp(), "quantile", fg=None)[1:-1, 1:-1])


def test_region_thresholds_use_inside_values_only():
    heat = np.zeros((10, 10))
    heat[:, :5] = ramp()[:, ::2]  # 0 .. 1 inside the left half
    heat[:, 5:] = 1.0  # bright outside the region
    region = np.zeros((10, 10), bool)
    region[:, :5] = True
    labels = stratify(heat, "quantile", fg=0.8, split=0.4, bg=None, region=region)
    assert (labels[:, 5:] == BGD).all()
    assert counts(labels[:, :5]) == {"bgd": 0, "fgd": 10, "pr_bgd": 20, "pr_fgd": 20}


def test_stratify_accepts_torch_and_does_not_modify_input():
    heat = torch.from_numpy(ramp()).float()
    before = heat.clone()
    labels = stratify(heat, "quantile")
    assert isinstance(labels, np.ndarray)
    assert torch.equal(heat, before)


# --- grabcut --------------------------------------------------------------------------------


def test_grabcut_from_a_box_recovers_the_object():
    image, truth = two_colour_image()
    before = image.copy()
    mask = grabcut(image, (7, 7, 33, 33))
    assert mask.dtype == np.bool_ and mask.shape == truth.shape
    assert iou(mask, truth) > 0.9
    assert np.array_equal(image, before)


def test_grabcut_from_seeds_recovers_the_object():
    image, truth = two_colour_image()
    labels = np.full(truth.shape, PR_BGD, np.uint8)
    labels[5:35, 5:35] = PR_FGD
    labels[18:22, 18:22] = FGD
    labels[:2] = BGD
    before = labels.copy()
    mask = grabcut(image, labels)
    assert iou(mask, truth) > 0.9
    assert np.array_equal(labels, before)


def test_grabcut_box_baseline_with_margin():
    image, truth = two_colour_image()
    assert iou(grabcut_box(image, (10, 10, 30, 30), margin=0.1), truth) > 0.9


def test_box_covering_the_whole_image_does_not_raise():
    image, truth = two_colour_image()
    mask = grabcut(image, (0, 0, 40, 40))
    assert mask.shape == truth.shape and iou(mask, truth) > 0.5
    assert grabcut_box(image, (-5, -5, 50, 50)).shape == truth.shape


@pytest.mark.parametrize("box", [(10, 10, 10, 20), (20, 20, 10, 10), (50, 50, 60, 60),
                                 (-30, -30, -5, -5), (0, 45, 40, 80)])
def test_empty_and_outside_boxes_give_empty_masks(box):
    image, _ = two_colour_image()
    assert not grabcut(image, box).any()
    assert not grabcut_box(image, box).any()


def test_tiny_box_returns_its_pixels():
    image, _ = two_colour_image()
    mask = grabcut(image, (12.5, 12.5, 13.5, 13.5))  # touches 2 x 2 pixels
    assert mask.sum() == 4 and mask[12:14, 12:14].all()


def test_all_foreground_seeds_and_no_background():
    image, truth = two_colour_image()
    assert grabcut(image, np.full(truth.shape, FGD, np.uint8)).all()
    probable = grabcut(image, np.full(truth.shape, PR_FGD, np.uint8))
    # the outer ring (blue) became background seeds, so GrabCut ran and found the red square;
    # without them the whole image (IoU 0.25 with the square) would come back
    assert probable.shape == truth.shape and iou(probable, truth) > 0.8
    assert not probable[[0, -1], :].any() and not probable[:, [0, -1]].any()
    assert not grabcut(image, np.full(truth.shape, PR_BGD, np.uint8)).any()


def test_sure_labels_only_are_returned_as_is():
    image, truth = two_colour_image()
    labels = np.where(truth, FGD, BGD).astype(np.uint8)
    assert np.array_equal(grabcut(image, labels), truth)


def test_tiny_image_does_not_raise():
    image = np.zeros((3, 3, 3), np.uint8)
    assert grabcut(image, (0, 0, 3, 3)).all()
    assert grabcut(image, np.full((3, 3), PR_FGD, np.uint8)).all()


def test_grabcut_is_deterministic():
    image, _ = two_colour_image(seed=3)
    assert np.array_equal(grabcut(image, (6, 6, 31, 35)), grabcut(image, (6, 6, 31, 35)))


def test_grabcut_input_errors():
    image, truth = two_colour_image()
    with pytest.raises(InputError, match="uint8"):
        grabcut(image.astype(np.float32), (0, 0, 5, 5))
    with pytest.raises(InputError, match="shape"):
        grabcut(image, np.zeros((5, 5), np.uint8))
    with pytest.raises(InputError, match="labels 0, 1, 2 or 3"):
        grabcut(image, np.full(truth.shape, 7, np.uint8))
    with pytest.raises(InputError, match="finite"):
        grabcut(image, (0, 0, np.nan, 5))
    with pytest.raises(InputError, match="iterations"):
        grabcut(image, (0, 0, 5, 5), iterations=0)


def test_box_helpers():
    assert box_rect((2.5, 3.0, 6.2, 8.0), (10, 10)) == (2, 3, 7, 8)
    assert box_rect((-4, -4, 20, 20), (10, 12)) == (0, 0, 12, 10)
    assert np.allclose(expand_box((10, 20, 30, 60), 0.1), (8, 16, 32, 64))


def test_box_prior_is_a_gaussian_centred_on_the_box():
    prior = box_prior((20, 30), (10, 4, 20, 12), sigma=0.5)
    assert prior.shape == (20, 30) and prior.dtype == np.float32
    assert np.unravel_index(prior.argmax(), prior.shape) in {(7, 14), (7, 15), (8, 14), (8, 15)}
    assert np.allclose(prior[7, :15], prior[7, 15:][::-1])  # symmetric about x = 15
    # pixel (row 3, col 10) has its centre at (10.5, 3.5), 4.5 px from the centre (15, 8)
    # both ways; the box is 10 x 8, so the 1/e half-widths are 5 and 4 px
    assert np.isclose(prior[3, 10], np.exp(-(4.5 / 5) ** 2 - (4.5 / 4) ** 2), rtol=1e-5)
    with pytest.raises(InputError, match="sigma"):
        box_prior((5, 5), (0, 0, 5, 5), sigma=0)


def test_box_prior_standard_deviation_is_sigma_over_root_two_of_the_box():
    # measured as a distribution: the second moment of one row of a wide map
    box, sigma = (400.0, 300.0, 600.0, 500.0), 0.3  # a 200 x 200 box centred at (500, 400)
    prior = box_prior((800, 1000), box, sigma=sigma).astype(np.float64)
    row = prior[400]
    xs = np.arange(1000) + 0.5
    mean = (row * xs).sum() / row.sum()
    std = np.sqrt((row * (xs - mean) ** 2).sum() / row.sum())
    assert mean == pytest.approx(500.0, abs=1e-6)
    assert std == pytest.approx(sigma * 200 / np.sqrt(2), rel=1e-3)
    # and 1/e at sigma * size (60 px) from the centre: pixel centre (559.5, 400.5)
    assert prior[400, 559] == pytest.approx(np.exp(-((59.5 / 60) ** 2 + (0.5 / 60) ** 2)),
                                            rel=1e-5)


def radial_image(size=48, seed=2):
    """Red centre fading to blue at the rim: GrabCut's boundary moves a little each iteration."""
    yy, xx = np.mgrid[0:size, 0:size]
    fade = np.clip(np.hypot(yy - size / 2, xx - size / 2) / (size / 2), 0, 1)[..., None]
    image = (1 - fade) * np.array([220, 40, 40]) + fade * np.array([40, 40, 220])
    image += np.random.default_rng(seed).normal(0, 10, image.shape)
    labels = np.full((size, size), PR_FGD, np.uint8)
    labels[:2], labels[-2:], labels[:, :2], labels[:, -2:] = BGD, BGD, BGD, BGD
    labels[size // 2 - 2:size // 2 + 2, size // 2 - 2:size // 2 + 2] = FGD
    return np.clip(image, 0, 255).astype(np.uint8), labels


def opencv_grabcut(image, labels, iterations):
    """One cv2.grabCut call with ``iterations`` from the label map (the reference)."""
    import cv2

    work = labels.copy()
    cv2.setRNGSeed(0)
    cv2.grabCut(image, work, None, np.zeros((1, 65)), np.zeros((1, 65)), iterations,
                cv2.GC_INIT_WITH_MASK)
    return (work == FGD) | (work == PR_FGD)


def test_grabcut_to_convergence_stops_when_the_labels_stop_changing():
    image, labels = radial_image()
    # by hand: the first count n >= 2 whose labels equal those of n - 1 iterations
    runs = [opencv_grabcut(image, labels, n) for n in range(1, 21)]
    stop = next(n for n in range(2, 21) if np.array_equal(runs[n - 1], runs[n - 2]))
    assert stop > 5  # the case takes more than the default 5 iterations
    assert not np.array_equal(runs[4], runs[stop - 1])
    assert np.array_equal(grabcut(image, labels, 20, converge=True), runs[stop - 1])
    assert np.array_equal(grabcut(image, labels, 5), runs[4])
    # the cap bounds the iterations: capped at 3, the result of 3 iterations
    assert np.array_equal(grabcut(image, labels, 3, converge=True), runs[2])
