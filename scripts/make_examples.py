#!/usr/bin/env python3
"""Regenerate the example photos in examples/ from scikit-image's public-domain samples.

scikit-image is a development-time tool only (not a wsolkit dependency):

    pip install scikit-image
    python scripts/make_examples.py
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

NAMES = ("astronaut", "chelsea", "coffee", "rocket")
QUALITY = 90


def main() -> int:
    try:
        import skimage.data
    except ImportError:
        print("scripts/make_examples.py needs scikit-image: pip install scikit-image",
              file=sys.stderr)
        return 1
    out_dir = Path(__file__).resolve().parent.parent / "examples"
    out_dir.mkdir(exist_ok=True)
    for name in NAMES:
        array = getattr(skimage.data, name)()
        image = Image.fromarray(array).convert("RGB")
        path = out_dir / f"{name}.jpg"
        image.save(path, format="JPEG", quality=QUALITY)
        print(f"{path} {image.width}x{image.height}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
