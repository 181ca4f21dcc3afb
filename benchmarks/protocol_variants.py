"""How much variants of the WSOL protocol move CAM's box accuracy on imagenet-dev.

Run (from the repository root):

    python benchmarks/protocol_variants.py [--threads 2] [--limit N] [--json PATH]

CAM of the GT class with the embedded model on every imagenet-dev image, scored by
``wsolkit.eval.protocol.ProtocolScorer`` (wsolevaluation's grid, thresholds 0..1 step 0.01) in
these variants, one change each from the reference:

- ``reference``: the image resized to 224x224 by PIL bilinear (``Classifier.preprocess``), the
  raw 7x7 CAM (no ReLU, as wsolevaluation's CAM) resized to the grid by OpenCV bicubic;
- ``relu before resize``: the 7x7 CAM clamped at 0 before the bicubic resize;
- ``image resize: PIL bicubic`` / ``PIL lanczos`` / ``OpenCV bilinear``: the input image
  resized another way (OpenCV's without antialiasing).

Prints a markdown table; ``--json`` writes it (docs/evaluation.md quotes it).
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np
import torch
from harness import add_common_arguments, write_json
from PIL import Image

import wsolkit
from wsolkit.data import load_image, open_dataset
from wsolkit.eval.protocol import ProtocolScorer
from wsolkit.maps import make_method


def pil_resize(method: Image.Resampling):
    """An image resize to (w, h) by PIL with ``method``."""
    return lambda image, size: np.asarray(image.resize(size, method))


def cv2_bilinear(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """An image resize to (w, h) by OpenCV bilinear (no antialiasing)."""
    return cv2.resize(np.asarray(image), size, interpolation=cv2.INTER_LINEAR)


# name -> (image resize, ReLU before the map resize)
VARIANTS = {
    "reference": (pil_resize(Image.Resampling.BILINEAR), False),
    "relu before resize": (pil_resize(Image.Resampling.BILINEAR), True),
    "image resize: PIL bicubic": (pil_resize(Image.Resampling.BICUBIC), False),
    "image resize: PIL lanczos": (pil_resize(Image.Resampling.LANCZOS), False),
    "image resize: OpenCV bilinear": (cv2_bilinear, False),
}


def main() -> None:
    """Score every variant; print and optionally write the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, threads=2)
    args = parser.parse_args()
    if not (args.data / "imagenet-dev").is_dir():
        raise SystemExit(f"protocol_variants: {args.data / 'imagenet-dev'} not found")
    torch.set_num_threads(args.threads)
    model = wsolkit.load_model()
    cam = make_method("cam", model)
    samples = list(open_dataset(args.data / "imagenet-dev"))[: args.limit]
    height, width = model.input_size
    scorers = {name: ProtocolScorer(boxes=True, masks=False, interval=0.01,
                                     classes_known=False) for name in VARIANTS}
    for sample in samples:
        image = load_image(sample.path)
        for name, (resize, relu) in VARIANTS.items():
            pixels = resize(image, (width, height))
            result = cam(model.normalize(pixels[None]), target=[sample.label])
            raw = result.raw[0].detach().float().cpu().numpy()
            scorers[name].add(sample, np.maximum(raw, 0) if relu else raw, image.size, None)
    rows = []
    for name, scorer in scorers.items():
        boxes = scorer.compute()["boxes"]
        rows.append({"variant": name, "MaxBoxAcc": boxes["MaxBoxAcc"],
                     "MaxBoxAccV2": boxes["MaxBoxAccV2"]})
    print(f"CAM (GT class) on {len(samples)} imagenet-dev images\n")
    print("| variant | MaxBoxAcc | MaxBoxAccV2 |\n|---|---:|---:|")
    for row in rows:
        print(f"| {row['variant']} | {row['MaxBoxAcc']:.1f} | {row['MaxBoxAccV2']:.1f} |")
    if args.json:
        write_json(args.json, {"images": len(samples), "data": str(args.data), "rows": rows})


if __name__ == "__main__":
    main()
