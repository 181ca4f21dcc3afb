"""Feature caches of F-CAM training: the frozen classifier runs once per image view.

The classifier and the seed-CAM method are frozen during F-CAM training, so their outputs for a
fixed set of views are computed once and stored (skip features in fp16, seed CAMs in fp32 at
layer resolution, the view's 224x224 RGB for the CRF loss) as ``.npy`` memory maps. Training
then runs only the decoder. The paper draws a fresh random crop every step; here each training
image has ``views`` fixed views (``views / 2`` random 224 crops of the 256x256-resized image,
each also flipped), one drawn per epoch: on two CPU cores the encoder pass would otherwise cost
more than the decoder's training.

Validation images are preprocessed as ``wsolkit evaluate`` does (the classifier's own resize),
so the per-epoch model selection scores the same maps the evaluation will.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wsolkit.data.atomic import write_json_atomic
from wsolkit.data.images import load_image
from wsolkit.data.sample import Sample
from wsolkit.errors import ImageError, InputError
from wsolkit.maps.base import HeatmapMethod
from wsolkit.maps.forward import weighted_sum
from wsolkit.models.classifier import Classifier
from wsolkit.models.fcam import capture_skips

RESIZE = 256


class FeatureCache:
    """Memory-mapped arrays of one cache folder: ``skips`` (per layer), ``cams``, ``rgb``."""

    def __init__(self, folder: Path, layers: Sequence[str], cam: str | None) -> None:
        self.folder = folder
        self.meta = json.loads((folder / "meta.json").read_text())
        self.skips = [np.load(folder / f"skip{i}.npy", mmap_mode="r") for i in range(len(layers))]
        self.cams = np.load(folder / f"cam-{cam}.npy", mmap_mode="r") if cam else None
        self.rgb = np.load(folder / "rgb.npy", mmap_mode="r")

    def __len__(self) -> int:
        return len(self.rgb)

    def skip_batch(self, rows: np.ndarray) -> list[torch.Tensor]:
        """Skip features of ``rows`` (fp16 tensors)."""
        return [torch.from_numpy(np.ascontiguousarray(s[rows])) for s in self.skips]


def _key(parts: dict) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def view_boxes(index: int, views: int, seed: int, size: int) -> list[tuple[int, int, bool]]:
    """(x, y, flipped) of each view of image ``index``: ``views // 2`` crops, each also flipped."""
    rng = np.random.default_rng([seed, index])
    out = []
    for _ in range((views + 1) // 2):
        x, y = (int(v) for v in rng.integers(0, RESIZE - size + 1, size=2))
        out.extend([(x, y, False), (x, y, True)])
    return out[:views]


def _train_views(image: Image.Image, boxes: list[tuple[int, int, bool]],
                 size: int) -> list[Image.Image]:
    resized = image.resize((RESIZE, RESIZE), Image.BILINEAR)
    out = []
    for x, y, flipped in boxes:
        view = resized.crop((x, y, x + size, y + size))
        out.append(view.transpose(Image.FLIP_LEFT_RIGHT) if flipped else view)
    return out


def readable_samples(samples: Sequence[Sample], need_labels: bool,
                     source: str) -> tuple[list[Sample], list[str]]:
    """Samples whose image opens (and, with ``need_labels``, that have a label)."""
    if need_labels and not any(s.labels for s in samples):
        raise InputError(f"{source}: no image has a class label; F-CAM training needs "
                         "image-level labels (the class whose CAM seeds the decoder)")
    kept, failures = [], []
    for sample in samples:
        if need_labels and not sample.labels:
            failures.append(f"{sample.image_id}: no class label")
            continue
        try:
            with Image.open(sample.path) as handle:
                handle.verify()
        except Exception as error:  # noqa: BLE001 - any failure to open is a bad image
            failures.append(f"{sample.path}: {ImageError.__name__}: {error}")
            continue
        kept.append(sample)
    if not kept:
        raise InputError(f"{source}: no readable image")
    return kept, failures


# Seed methods whose map, at the layer feeding a global-average-pool + linear head, depends only
# on that layer's activations A (K, h, w) and the head's weights w_c: there the gradient of the
# logit is w_c / (h w) at every location, so the map needs no forward or backward pass.
LINEAR_HEAD_SEEDS = ("cam", "gradcam", "layercam")


def linear_head_seed(name: str, activations: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Seed map (after the method's ReLU) from cached head-layer activations.

    Args:
        name: ``cam`` (``sum_k w_k A_k``), ``gradcam`` (``relu(sum_k w_k/(hw) A_k)``) or
            ``layercam`` (``relu(sum_k relu(w_k/(hw)) A_k)``).
        activations: (N, K, h, w) outputs of the layer feeding the head.
        weights: (N, K) head weights of each map's class.
    """
    area = activations.shape[-2] * activations.shape[-1]
    if name == "cam":
        return weighted_sum(weights, activations)
    if name == "gradcam":
        return weighted_sum(weights / area, activations).clamp(min=0)
    if name == "layercam":
        return weighted_sum((weights / area).clamp(min=0), activations).clamp(min=0)
    raise InputError(f"no linear-head form for seed method {name!r}")


def _seeds_from_cache(folder: Path, classifier: Classifier, samples: Sequence[Sample],
                      layers: Sequence[str], cam_name: str | None, per_image: int) -> bool:
    """Write ``cam-<name>.npy`` from the cached bottom features when the seed allows it."""
    from wsolkit.models.layers import find_linear

    if cam_name not in LINEAR_HEAD_SEEDS or not (folder / "meta.json").is_file():
        return False
    bottom = np.load(folder / f"skip{len(layers) - 1}.npy", mmap_mode="r")
    probe = torch.zeros(1, 3, *classifier.input_size, device=classifier.device)
    head = classifier.cam_head(probe)
    if head.feature_layer != layers[-1]:
        return False
    fc = find_linear(classifier.module, head.fc_layer)
    if fc.in_features != bottom.shape[1]:
        return False
    labels = np.repeat([s.label for s in samples], per_image)
    cams = np.lib.format.open_memmap(folder / f"cam-{cam_name}.tmp.npy", "w+", np.float32,
                                     (len(bottom), *bottom.shape[2:]))
    weight = fc.weight.detach().float().cpu()
    for start in range(0, len(bottom), 256):
        features = torch.from_numpy(np.asarray(bottom[start:start + 256], np.float32))
        classes = torch.from_numpy(labels[start:start + 256])
        cams[start:start + len(features)] = linear_head_seed(
            cam_name, features, weight[classes]).numpy()
    cams.flush()
    del cams
    (folder / f"cam-{cam_name}.tmp.npy").replace(folder / f"cam-{cam_name}.npy")
    return True


def build_cache(
    work: Path,
    classifier: Classifier,
    samples: Sequence[Sample],
    layers: Sequence[str],
    method: HeatmapMethod | None,
    cam_name: str | None,
    views: int,
    seed: int,
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
) -> FeatureCache:
    """Compute (or reuse) the cache of ``samples`` and return it opened.

    Train views when ``method`` seeds CAMs, else the evaluation view (validation).
    """
    size = classifier.input_size[0]
    kind = "train" if method is not None else "val"
    parts = {"kind": kind, "model": classifier.name, "ids": [s.image_id for s in samples],
             "layers": list(layers), "views": views if method else 1, "seed": seed if method
             else 0, "size": size}
    folder = work / f"{kind}-{_key(parts)}"
    done_features = (folder / "meta.json").is_file()
    need_cam = method is not None and not (folder / f"cam-{cam_name}.npy").is_file()
    if done_features and not need_cam:
        return FeatureCache(folder, layers, cam_name)
    if done_features and _seeds_from_cache(folder, classifier, samples, layers, cam_name, views):
        return FeatureCache(folder, layers, cam_name)
    folder.mkdir(parents=True, exist_ok=True)
    per_image = views if method is not None else 1
    rows = len(samples) * per_image
    skip_arrays: list[np.ndarray] | None = None
    cams: np.ndarray | None = None
    rgb = None if done_features else np.lib.format.open_memmap(
        folder / "rgb.tmp.npy", "w+", np.uint8, (rows, 3, size, size))
    row = 0
    for start in range(0, len(samples), max(1, batch_size // per_image)):
        chunk = samples[start:start + max(1, batch_size // per_image)]
        images: list[Image.Image] = []
        labels: list[int] = []
        for offset, sample in enumerate(chunk):
            image = load_image(sample.path)
            if method is not None:
                images.extend(_train_views(image, view_boxes(start + offset, views, seed, size),
                                           size))
                labels.extend([sample.label] * views)
            else:
                images.append(image.resize((size, size), Image.BILINEAR))
        # the views are already at the input size, so preprocess only normalizes them
        tensor = classifier.preprocess_batch(images)
        with capture_skips(classifier.module, layers) as found:
            if method is not None:
                result = method(tensor, target="gt", labels=labels)
            else:
                with torch.no_grad():
                    classifier.module(tensor)
        if not done_features:
            if skip_arrays is None:
                skip_arrays = [np.lib.format.open_memmap(
                    folder / f"skip{i}.tmp.npy", "w+", np.float16,
                    (rows, *found[name].shape[1:])) for i, name in enumerate(layers)]
            for array, name in zip(skip_arrays, layers, strict=True):
                array[row:row + len(images)] = found[name].half().cpu().numpy()
            rgb[row:row + len(images)] = np.stack([np.asarray(im).transpose(2, 0, 1)
                                                   for im in images])
        if method is not None and need_cam:
            raw = result.raw.float()
            raw = (raw.clamp(min=0) if method.relu else raw).cpu().numpy()
            if cams is None:
                cams = np.lib.format.open_memmap(folder / f"cam-{cam_name}.tmp.npy", "w+",
                                                 np.float32, (rows, *raw.shape[1:]))
            cams[row:row + len(images)] = raw
        row += len(images)
        if progress is not None:
            progress(len(chunk))
    if cams is not None:
        cams.flush()
        del cams
        (folder / f"cam-{cam_name}.tmp.npy").replace(folder / f"cam-{cam_name}.npy")
    if not done_features:
        for i, array in enumerate(skip_arrays or []):
            array.flush()
            (folder / f"skip{i}.tmp.npy").replace(folder / f"skip{i}.npy")
        rgb.flush()
        (folder / "rgb.tmp.npy").replace(folder / "rgb.npy")
        write_json_atomic(folder / "meta.json", {**parts, "rows": rows,
                                                 "per_image": per_image})
    return FeatureCache(folder, layers, cam_name)
