"""Write the embedded digits as PNG files in class subfolders, to try ``folder:`` sources.

    python scripts/digits_to_folder.py imgs --n 200
    actextract extract --model resnet18 --dataset folder:imgs --layers layer3,avgpool \
        --out run.zarr --resize 64 --crop 64
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def write_folder(out: Path, n: int, size: int) -> int:
    """Save the first ``n`` digits as ``out/<label>/<index>.png`` (grayscale, size x size)."""
    digits = load_digits()
    for i, (img, label) in enumerate(zip(digits.images[:n], digits.target[:n], strict=True)):
        pixels = (img * (255 / 16)).astype(np.uint8)
        path = out / str(label) / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR).save(path)
    return min(n, len(digits.images))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to create")
    parser.add_argument("--n", type=int, default=200, help="how many digits (max 1797)")
    parser.add_argument("--size", type=int, default=32, help="side of the PNGs in pixels")
    args = parser.parse_args()
    count = write_folder(args.out, args.n, args.size)
    print(f"wrote {count} PNGs under {args.out}/<label>/")


if __name__ == "__main__":
    main()
