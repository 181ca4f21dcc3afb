"""Train an F-CAM decoder on a frozen classifier (Belharbi et al., WACV 2022).

Only the decoder (:class:`wsolkit.models.fcam.FCAMDecoder`) learns; the classifier and the seed
CAM method are frozen, so their outputs are cached once (:mod:`wsolkit.train.fcam_cache`). Each
step: pseudo-pixels from the seed CAM (partial cross-entropy), the dense-CRF loss and the ELB
size constraint (:mod:`wsolkit.train.fcam_losses`). After every epoch the decoder is scored on
the validation set (MaxBoxAccV2 with boxes, else PxAP) and the best one is written to ``out``.

Files in ``work`` (default ``<out>.work``): the feature caches (unless ``cache`` names another
folder), ``checkpoint.pt`` (decoder,
optimizer, history, best decoder; what ``resume=True`` continues from) and ``metrics.json``.
Every epoch draws its order, views and pseudo-pixels from generators seeded by
``(seed, epoch)``, so a run resumed after epoch k gives the decoder of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from wsolkit.data.atomic import make_out_dir, write_json_atomic, write_torch_atomic
from wsolkit.data.sample import Sample
from wsolkit.errors import InputError
from wsolkit.eval.box_accuracy import BoxAccuracy
from wsolkit.eval.pixel import PixelMetrics
from wsolkit.maps.registry import get_method
from wsolkit.models.classifier import Classifier
from wsolkit.models.fcam import DecoderSpec, FCAMDecoder, default_skip_layers, save_decoder
from wsolkit.train.fcam_cache import FeatureCache, build_cache, readable_samples
from wsolkit.train.fcam_losses import (
    DenseCRFLoss,
    partial_cross_entropy,
    pseudo_pixels,
    size_loss,
)
from wsolkit.train.runs import check_checkpoint

__all__ = ["FCAMSettings", "train_fcam"]

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"
_FORMAT = 1


@dataclass(frozen=True)
class FCAMSettings:
    """Everything that decides the trained decoder.

    Defaults: our measured setting; :meth:`paper` gives the authors' (docs/fcam.md compares
    them).
    """

    cam: str = "layercam"
    epochs: int = 4
    batch_size: int = 8
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    n_fg: int = 4
    n_bg: int = 4
    k: int = 3
    bg_fraction: float = 0.5
    crf: float = 2e-9
    crf_size: int = 40
    sigma_rgb: float = 15.0
    sigma_xy: float = 100.0
    size: float = 0.1
    elb_t: float = 1.0
    elb_rate: float = 1.01
    elb_max: float = 10.0
    views: int = 4
    widths: tuple[int, ...] = (64, 32, 16, 8, 4)
    reduce: int = 64
    skip_layers: tuple[str, ...] = ()
    seed: int = 0
    limit: int | None = None

    @classmethod
    def paper(cls, **changes: Any) -> FCAMSettings:
        """The authors' CUB configuration (SGD 0.01, batch 32, 1+1 pixels, k 3, bg 0.1).

        The number of epochs stays ours (theirs: 50 on CUB).
        """
        return replace(cls(lr=0.01, batch_size=32, optimizer="sgd", n_fg=1, n_bg=1,
                           bg_fraction=0.1), **changes)

    def check(self) -> None:
        """Raise :class:`InputError` naming the first out-of-range setting."""
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1; got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1; got {self.batch_size}"),
            (self.lr > 0 and math.isfinite(self.lr), f"lr must be > 0; got {self.lr}"),
            (self.optimizer in ("sgd", "adam"),
             f"optimizer must be sgd or adam; got {self.optimizer!r}"),
            (self.n_fg >= 0 and self.n_bg >= 0,
             f"n_fg={self.n_fg} and n_bg={self.n_bg} must be >= 0"),
            (self.k >= 1 and self.k % 2 == 1, f"k must be odd and >= 1; got {self.k}"),
            (0 < self.bg_fraction < 1, f"bg_fraction must be in (0, 1); got {self.bg_fraction}"),
            (self.crf >= 0 and self.size >= 0,
             f"crf={self.crf} and size={self.size} weights must be >= 0"),
            (self.crf_size >= 4, f"crf_size must be >= 4; got {self.crf_size}"),
            (self.views >= 1, f"views must be >= 1; got {self.views}"),
            (self.elb_t > 0 and self.elb_rate >= 1 and self.elb_max >= self.elb_t,
             "ELB t must start > 0, grow by a factor >= 1 and stay below its maximum"),
            (self.seed >= 0, f"seed must be >= 0; got {self.seed}"),
            (self.limit is None or self.limit >= 1, f"limit must be >= 1; got {self.limit}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)

    def resume_key(self) -> dict[str, Any]:
        """The settings a resumed run must share with its checkpoint (all but ``epochs``)."""
        key = asdict(self)
        key.pop("epochs")
        key["widths"] = list(self.widths)
        key["skip_layers"] = list(self.skip_layers)
        return key


def train_fcam(
    classifier: Classifier,
    dataset: Sequence[Sample],
    out: str | Path,
    settings: FCAMSettings | None = None,
    val: Sequence[Sample] | None = None,
    work: str | Path | None = None,
    cache: str | Path | None = None,
    resume: bool = False,
    quiet: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train an F-CAM decoder for ``classifier`` on the labeled images of ``dataset``.

    Args:
        classifier: the frozen classifier (left as found).
        dataset: training images with image-level labels (the model's class indices).
        out: the decoder file written (the best epoch on ``val``, else the last).
        settings: :class:`FCAMSettings` (defaults: ours).
        val: validation images with boxes or masks for model selection (optional).
        work: folder of the checkpoint and metrics (default ``<out>.work``).
        cache: folder of the feature caches (default ``work``); runs on the same images,
            views and seed share them.
        resume: continue from ``work/checkpoint.pt`` (same settings but ``epochs``).
        quiet: no progress bars.
        log: called with a one-line summary after each epoch.

    Returns:
        The content of ``metrics.json``.

    Raises:
        InputError: bad settings, no labels, no readable image, an existing checkpoint without
            ``resume`` (or a missing or mismatching one with it).
        LayerError: the classifier lacks a skip layer.
    """
    settings = settings or FCAMSettings()
    settings.check()
    out = Path(out)
    work = Path(work) if work is not None else out.with_name(out.name + ".work")
    layers = settings.skip_layers or default_skip_layers(classifier.name)
    checkpoint_path = work / CHECKPOINT
    check_checkpoint(checkpoint_path, resume, "work=DIR or out=FILE")
    make_out_dir(work, "work")
    make_out_dir(out.parent)  # fail now, not after the first epoch
    cache = Path(cache) if cache is not None else work
    source = str(getattr(dataset, "root", None) or getattr(dataset, "annotation_file", "dataset"))
    samples, failures = readable_samples(list(dataset)[: settings.limit], True, source)
    method = get_method(settings.cam)(classifier)
    train = _cache(cache, classifier, samples, layers, method, settings, quiet, "train cache")
    val_samples = readable_samples(list(val), False, "val")[0] if val else []
    val_cache = (_cache(cache, classifier, val_samples, layers, None, settings, quiet,
                        "val cache") if val_samples else None)
    spec = DecoderSpec(tuple(layers), tuple(int(s.shape[1]) for s in train.skips),
                       tuple(settings.widths), settings.reduce)
    with _seeded(settings.seed):
        decoder = FCAMDecoder(spec)
    optimizer = make_optimizer(decoder, settings)
    state = {"format": _FORMAT, "model": classifier.name, "settings": settings.resume_key(),
             "train_ids": [s.image_id for s in samples],
             "val_ids": [s.image_id for s in val_samples]}
    start, history, best = 0, [], {"score": None, "epoch": 0, "decoder": None}
    if resume:
        saved = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        mismatch = [k for k in state if saved.get(k) != state[k]]
        if mismatch:
            raise InputError(f"resume=True: {checkpoint_path} was made with other "
                             f"{mismatch[0].replace('_', ' ')}; use the same settings and data")
        decoder.load_state_dict(saved["decoder"])
        optimizer.load_state_dict(saved["optimizer"])
        start, history, best = int(saved["epoch"]), list(saved["history"]), saved["best"]
    crf = DenseCRFLoss(settings.crf, settings.sigma_rgb, settings.sigma_xy, settings.crf_size)
    meta = {"model": classifier.name, "cam": settings.cam, "settings": settings.resume_key()}
    for epoch in range(start, settings.epochs):
        began = time.perf_counter()
        terms = _train_epoch(decoder, optimizer, train, crf, settings, epoch, quiet)
        score = _validate(decoder, val_cache, val_samples) if val_cache is not None else None
        seconds = round(time.perf_counter() - began, 2)
        history.append({"epoch": epoch + 1, **terms, "val": score, "seconds": seconds})
        if score is None or best["score"] is None or score[1] > best["score"]:
            best = {"score": None if score is None else score[1], "epoch": epoch + 1,
                    "metric": None if score is None else score[0],
                    "decoder": {k: v.clone() for k, v in decoder.state_dict().items()}}
        write_torch_atomic(checkpoint_path, {
            **state, "epoch": epoch + 1, "decoder": decoder.state_dict(),
            "optimizer": optimizer.state_dict(), "history": history, "best": best})
        _save_best(out, spec, best, {**meta, "epoch": best["epoch"], "val": best.get("score")})
        write_json_atomic(work / METRICS, _metrics(state, history, best, failures, out))
        if log is not None:
            shown = "" if score is None else f", val {score[0]} {score[1]:.2f}"
            log(f"epoch {epoch + 1}/{settings.epochs}: " + ", ".join(
                f"{k} {v:.4f}" for k, v in terms.items()) + f"{shown} ({seconds:.0f} s)")
    if best["decoder"] is None:  # resumed a finished run: the outputs exist already
        raise InputError(f"resume=True: {checkpoint_path} has finished {start} epochs; raise "
                         "epochs=N to train more")
    _save_best(out, spec, best, {**meta, "epoch": best["epoch"], "val": best.get("score")})
    metrics = _metrics(state, history, best, failures, out)
    write_json_atomic(work / METRICS, metrics)
    return metrics


def make_optimizer(decoder: FCAMDecoder, settings: FCAMSettings) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum (the paper's), or AdamW."""
    if settings.optimizer == "adam":
        return torch.optim.AdamW(decoder.parameters(), lr=settings.lr,
                                 weight_decay=settings.weight_decay)
    return torch.optim.SGD(decoder.parameters(), lr=settings.lr, momentum=settings.momentum,
                           nesterov=settings.momentum > 0, weight_decay=settings.weight_decay)


@contextlib.contextmanager
def _seeded(seed: int):  # noqa: ANN202 - a context manager
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _cache(work: Path, classifier: Classifier, samples: list[Sample], layers: Sequence[str],
           method: object, settings: FCAMSettings, quiet: bool, label: str) -> FeatureCache:
    bar = None if quiet else _progress(len(samples), label)
    try:
        return build_cache(work, classifier, samples, layers, method,
                           settings.cam if method is not None else None, settings.views,
                           settings.seed, progress=bar.update if bar else None)
    finally:
        if bar is not None:
            bar.close()


def _progress(total: int, label: str):  # noqa: ANN202 - a tqdm bar
    from tqdm import tqdm

    return tqdm(total=total, desc=label, unit="img", file=sys.stderr, leave=False)


def _elb_t(settings: FCAMSettings, epoch: int) -> float:
    return min(settings.elb_t * settings.elb_rate**epoch, settings.elb_max)


def seed_maps(cams: np.ndarray, size: int) -> np.ndarray:
    """Seed CAMs resized (bilinear) to ``size x size``, min-max normalized per map."""
    maps = F.interpolate(torch.from_numpy(np.asarray(cams, np.float32))[:, None],
                         size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    low = maps.amin(dim=(1, 2), keepdim=True)
    span = (maps.amax(dim=(1, 2), keepdim=True) - low).clamp(min=1e-12)
    return ((maps - low) / span).numpy()


def _train_epoch(decoder: FCAMDecoder, optimizer: torch.optim.Optimizer, cache: FeatureCache,
                 crf: DenseCRFLoss, settings: FCAMSettings, epoch: int,
                 quiet: bool) -> dict[str, float]:
    per_image = int(cache.meta["per_image"])
    images = len(cache) // per_image
    rng = np.random.default_rng([settings.seed, epoch])
    order = rng.permutation(images)
    views = rng.integers(0, per_image, size=images)
    t = _elb_t(settings, epoch)
    decoder.train()
    sums = {"ce": 0.0, "crf": 0.0, "size": 0.0, "loss": 0.0}
    steps = 0
    bar = None if quiet else _progress(images, f"epoch {epoch + 1}")
    with _seeded(settings.seed * 100003 + epoch):  # nothing random in torch here; kept safe
        for start in range(0, images, settings.batch_size):
            chosen = order[start:start + settings.batch_size]
            rows = np.sort(chosen * per_image + views[chosen])
            skips = cache.skip_batch(rows)
            size = int(cache.rgb.shape[-1])
            seeds = seed_maps(cache.cams[rows], size)
            labels = torch.from_numpy(np.stack([
                pseudo_pixels(cam, settings.n_fg, settings.n_bg, settings.k,
                              settings.bg_fraction, rng) for cam in seeds]))
            logits = decoder(skips, (size, size))
            maps = logits.softmax(dim=1)
            ce = partial_cross_entropy(logits, labels)
            loss = ce
            crf_value = size_value = torch.zeros(())
            if settings.crf > 0:
                rgb = torch.from_numpy(np.ascontiguousarray(cache.rgb[rows])).float()
                crf_value = crf(rgb, maps)
                loss = loss + crf_value
            if settings.size > 0:
                size_value = settings.size * size_loss(maps, t)
                loss = loss + size_value
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for name, value in (("ce", ce), ("crf", crf_value), ("size", size_value),
                                ("loss", loss)):
                sums[name] += float(value.detach())
            steps += 1
            if bar is not None:
                bar.update(len(chosen))
                bar.set_postfix({k: f"{v / steps:.3f}" for k, v in sums.items()})
    if bar is not None:
        bar.close()
    return {k: round(v / max(steps, 1), 6) for k, v in sums.items()}


@torch.no_grad()
def decoder_maps(decoder: FCAMDecoder, cache: FeatureCache, batch_size: int = 32) -> np.ndarray:
    """(N, H, W) foreground probabilities of the cached (validation) images."""
    decoder.eval()
    size = int(cache.rgb.shape[-1])
    out = []
    for start in range(0, len(cache), batch_size):
        rows = np.arange(start, min(start + batch_size, len(cache)))
        out.append(decoder(cache.skip_batch(rows), (size, size)).softmax(dim=1)[:, 1].numpy())
    return np.concatenate(out)


def _validate(decoder: FCAMDecoder, cache: FeatureCache,
              samples: list[Sample]) -> tuple[str, float] | None:
    """MaxBoxAccV2 (boxes) or PxAP (masks) of the decoder's maps, in percent."""
    import cv2

    from wsolkit.eval.box_accuracy import normalize_scoremap

    maps = decoder_maps(decoder, cache)
    if any(len(s.boxes) for s in samples):
        metric = BoxAccuracy(cam_curve_interval=0.01)
        for sample, heat in zip(samples, maps, strict=True):
            if len(sample.boxes):
                size = sample.size or _image_size(sample.path)
                metric.update(normalize_scoremap(heat.astype(np.float64)), sample.boxes, size)
        return "MaxBoxAccV2", float(metric.compute()["MaxBoxAccV2"])
    if any(s.has_mask for s in samples):
        pixels = PixelMetrics()
        for sample, heat in zip(samples, maps, strict=True):
            if sample.has_mask:
                mask, ignore = sample.load_mask()
                shape = heat.shape[::-1]
                fg = cv2.resize(mask.astype(np.uint8), shape, interpolation=cv2.INTER_NEAREST)
                ig = cv2.resize(ignore.astype(np.uint8), shape, interpolation=cv2.INTER_NEAREST)
                pixels.update(normalize_scoremap(heat.astype(np.float64)), fg.astype(bool),
                              ig.astype(bool))
        return "PxAP", float(pixels.compute()["PxAP"])
    raise InputError("val: the validation set has neither boxes nor masks")


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def _save_best(out: Path, spec: DecoderSpec, best: dict, meta: dict) -> None:
    decoder = FCAMDecoder(spec)
    decoder.load_state_dict(best["decoder"])
    save_decoder(decoder, out, meta)


def _metrics(state: dict, history: list, best: dict, failures: list[str],
             out: Path) -> dict[str, Any]:
    return {
        "model": state["model"], "settings": state["settings"],
        "train_images": len(state["train_ids"]), "val_images": len(state["val_ids"]),
        "history": history, "best_epoch": best["epoch"], "best_val": best.get("score"),
        "val_metric": best.get("metric"), "decoder_file": str(out),
        "seconds_per_epoch": (round(float(np.mean([h["seconds"] for h in history])), 2)
                              if history else None),
        "failures": failures,
    }
