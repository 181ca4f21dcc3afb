"""The rCAM tuning grids of docs/rcam.md: guided filter radius / eps, fusion, CRF settings.

Tuned on the dev sets as a whole (all imagenet-dev and davis images), never per image. Each
image's forward results (``CAM_1``, ``CAM_2`` with ``I_2`` the original image at 448, ``P_1``,
``P_2``, the PCA shape maps, the RGB input) are computed once with the default pipeline
(``RCAM3``); every setting then recomputes the later stages with the public stage functions
(``upsample_chain``, ``variogram_radius``, ``fuse``, ``refine_crf``) and is scored with
``wsolkit evaluate``'s scorer (``wsolkit.eval.protocol.ProtocolScorer``, 224x224 protocol).
``rcam3`` rows are before the CRF; ``crf`` rows run the CRF on the default ``rcam3``.
imagenet-dev: ground-truth class (MaxBoxAcc, MaxBoxAccV2); davis: top-1 class (PxAP,
F OIS / ODS, MAE). One torch thread.

    python benchmarks/rcam_tuning.py --json benchmarks/results/rcam_tuning.json
    python benchmarks/rcam_tuning.py --datasets davis --limit 20

The row ``rcam3, fixed radius 2, eps 0.01 (default)`` equals ``rcam_eval.py``'s default
``rcam3`` row, and ``crf: 1 iteration at 112, colour std 5 (default)`` its ``rcam`` row.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace

import cv2
import numpy as np
import torch
from harness import add_common_arguments, rcam_passes, rcam_samples

from wsolkit.checks import normalize_minmax
from wsolkit.data.atomic import write_json_atomic
from wsolkit.eval.protocol import ProtocolScorer
from wsolkit.maps.rcam import (
    RCAM3,
    RCAM_CRF,
    fuse,
    refine_crf,
    to_rgb_uint8,
    upsample_chain,
)
from wsolkit.models import load_model
from wsolkit.refine.crf import CRFParams
from wsolkit.refine.variogram import variogram_radius

DATASETS = ("imagenet-dev", "davis")


@dataclass(frozen=True)
class Setting:
    """One row: how rCAM_3 is made from the cached stages, and the CRF (None: no CRF)."""

    radius: int | None = 2  # None: the variogram rule
    radius_scale: float = 1.0
    max_radius: int | None = None
    fit: str = "ols"
    sigma_as: str = "radius"
    eps: float = 0.01
    components: int = 3
    cross_scale: bool = True
    fuse_inputs: str = "minmax"
    equal_weights: bool = False
    crf: CRFParams | None = None
    crf_iterations: int = 1
    crf_size: int | None = 112


RULE = Setting(radius=None)  # the paper's radius rule: radius = sigma of an OLS fit
ROWS: dict[str, Setting] = {
    "rcam3, variogram rule (radius = sigma, OLS fit), eps 0.01": RULE,
    "rcam3, radius 2 x sigma": replace(RULE, radius_scale=2.0),
    "rcam3, radius 0.5 x sigma": replace(RULE, radius_scale=0.5),
    "rcam3, radius 0.5 x sigma, eps 0.001": replace(RULE, radius_scale=0.5, eps=0.001),
    "rcam3, radius 0.5 x sigma, at most 2": replace(RULE, radius_scale=0.5, max_radius=2),
    "rcam3, window side = sigma (Cressie fit), the paper's reading":
        replace(RULE, fit="cressie", sigma_as="window"),
    "rcam3, fixed radius 1": Setting(radius=1),
    "rcam3, fixed radius 2, eps 0.01 (default)": Setting(),
    "rcam3, fixed radius 2, eps 0.001": Setting(eps=0.001),
    "rcam3, fixed radius 3": Setting(radius=3),
    "rcam3, variogram rule, eps 0.1": replace(RULE, eps=0.1),
    "rcam3, variogram rule, eps 1": replace(RULE, eps=1.0),
    "rcam3, variogram rule, 1 principal component": replace(RULE, components=1),
    "rcam3, variogram rule, no cross-scale step": replace(RULE, cross_scale=False),
    "rcam3, variogram rule, raw fusion (eq. 5 as written)": replace(RULE, fuse_inputs="raw"),
    "rcam3, variogram rule, weights 0.5 / 0.5": replace(RULE, equal_weights=True),
    "rcam3, fixed radius 2, raw fusion": Setting(fuse_inputs="raw"),
    "rcam3, fixed radius 2, weights 0.5 / 0.5": Setting(equal_weights=True),
    "crf: 5 iterations at 224, colour std 10": Setting(crf=CRFParams(), crf_iterations=5,
                                                      crf_size=None),
    "crf: 10 iterations at 224, colour std 10": Setting(crf=CRFParams(), crf_iterations=10,
                                                       crf_size=None),
    "crf: 5 iterations at 112, colour std 10": Setting(crf=CRFParams(), crf_iterations=5),
    "crf: 2 iterations at 224, colour std 10": Setting(crf=CRFParams(), crf_iterations=2,
                                                      crf_size=None),
    "crf: 1 iteration at 224, colour std 10": Setting(crf=CRFParams(), crf_size=None),
    "crf: 1 iteration at 112, colour std 10": Setting(crf=CRFParams()),
    "crf: 1 iteration at 112, colour std 5 (default)": Setting(crf=RCAM_CRF),
    "crf: 1 iteration at 224, colour std 5": Setting(crf=RCAM_CRF, crf_size=None),
    "crf: 1 iteration at 112, colour std 5, bilateral compat 2":
        Setting(crf=replace(RCAM_CRF, bilateral_compat=2.0)),
    "crf: 5 iterations at 112, colour std 5": Setting(crf=RCAM_CRF, crf_iterations=5),
}


def rcam3_of(cached: dict, setting: Setting, radius_cache: dict) -> tuple[np.ndarray, float]:
    """rCAM_3 (normalized, 224x224) of one cached image under ``setting``; and the fusion's
    peak (the raw ``rcam`` map is the CRF marginal times it, as the method returns)."""
    size = cached["size"]

    def radii(shapes):  # shapes live in the cache for the whole run: their ids are stable
        if setting.radius is not None:
            return [setting.radius] * len(shapes)
        out = []
        for shape in shapes:
            key = (id(shape), setting.components, setting.radius_scale, setting.max_radius,
                   setting.fit, setting.sigma_as)
            if key not in radius_cache:
                guide = shape.maps[:setting.components].transpose(1, 2, 0)
                radius_cache[key] = variogram_radius(
                    np.ascontiguousarray(guide), 1, setting.max_radius,
                    setting.radius_scale, setting.fit, setting.sigma_as)
            out.append(radius_cache[key])
        return out

    first, second = list(cached["shapes1"]), list(cached["shapes2"])
    if setting.cross_scale and second[-1].maps.shape[-1] > first[-1].maps.shape[-1]:
        first.append(second[-1])
    maps = []
    for cam, chain in ((cached["cam1"], first), (cached["cam2"], second)):
        out = upsample_chain(cam, [s.maps[:setting.components] for s in chain], setting.eps,
                             radii(chain))
        maps.append(cv2.resize(out, (size, size), interpolation=cv2.INTER_LINEAR))
    if setting.fuse_inputs == "minmax":
        maps = [normalize_minmax(np.asarray(m, np.float32)) for m in maps]
    p1, p2 = (0.5, 0.5) if setting.equal_weights else (cached["p1"], cached["p2"])
    fused = fuse(maps[0], p1, maps[1], p2, normalize=False)
    return normalize_minmax(fused), float(fused.max())


def cache_dataset(name: str, model, limit: int | None) -> tuple[list, str]:
    samples, target = rcam_samples(name, model, limit)
    method = RCAM3(model)
    cached = []
    for sample, image, tensor, result in rcam_passes(method, model, samples, target):
        st = method.last_stages
        cached.append({
            "sample": sample, "image_size": image.size, "size": tensor.shape[-1],
            "cam1": st.cam1[0], "cam2": st.cam2[0], "p1": float(st.p1[0]),
            "p2": float(st.p2[0]), "shapes1": [s[0] for s in st.shapes1],
            "shapes2": [s[0] for s in st.shapes2],
            "rgb": to_rgb_uint8(tensor, model.mean, model.std)[0],
            "top5": result.logits[0].topk(5).indices.tolist()})
    return cached, target


def score(cached: list, target: str, setting: Setting | None, radius_cache: dict) -> dict:
    sample0 = cached[0]["sample"]
    scorer = ProtocolScorer(len(sample0.boxes) > 0, sample0.has_mask, 0.01, target == "gt")
    for item in cached:
        if setting is None:  # CAM_1 after a ReLU (the `cam` method keeps negatives)
            raw = item["cam1"].clip(min=0)
        else:
            rcam3, peak = rcam3_of(item, setting, radius_cache)
            raw = rcam3
            if setting.crf is not None:
                raw = refine_crf(item["rgb"], rcam3, setting.crf, setting.crf_iterations,
                                 setting.crf_size) * peak
        scorer.add(item["sample"], raw, item["image_size"], item["top5"])
    metrics = scorer.compute()
    row = {}
    if "boxes" in metrics:
        row.update(MaxBoxAcc=metrics["boxes"]["MaxBoxAcc"],
                   MaxBoxAccV2=metrics["boxes"]["MaxBoxAccV2"])
    if "pixels" in metrics:
        pixels = metrics["pixels"]
        row.update(PxAP=pixels["PxAP"], F_OIS=pixels["F_OIS"], F_ODS=pixels["F_ODS"],
                   MAE=pixels["MAE"])
    return row


def table(results: dict) -> str:
    keys = ("PxAP", "F_OIS", "F_ODS", "MAE", "MaxBoxAcc", "MaxBoxAccV2")
    lines = ["| setting | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    names = list(dict.fromkeys(n for rows in results.values() for n in rows))
    for name in names:
        cells = []
        for key in keys:
            value = next((rows[name][key] for rows in results.values()
                          if name in rows and key in rows[name]), None)
            cells.append("" if value is None else
                         f"{value:.3f}" if key.startswith(("F_", "MAE")) else f"{value:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    add_common_arguments(parser, data=False)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model()
    results: dict = {}
    for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        start = time.perf_counter()
        cached, target = cache_dataset(name, model, args.limit)
        print(f"{name}: cached {len(cached)} images in {time.perf_counter() - start:.0f} s",
              file=sys.stderr, flush=True)
        radius_cache: dict = {}
        results[name] = {"CAM": score(cached, target, None, radius_cache)}
        for row, setting in ROWS.items():
            results[name][row] = score(cached, target, setting, radius_cache)
            print(f"{name} {row}: {results[name][row]}", file=sys.stderr, flush=True)
            if args.json is not None:
                write_json_atomic(args.json, results)
    print(table(results))


if __name__ == "__main__":
    main()
