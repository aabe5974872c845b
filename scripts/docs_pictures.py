"""Copy a few pictures of the demo report into docs/, scaled down and reduced to a 256-colour
palette so the repository stays small.

    python scripts/docs_pictures.py demo/report docs
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

PICTURES = {
    "conv1.samples.png": 400,
    "conv2.averages.png": 520,
    "conv2.histograms.png": 1000,
    "conv1.filters.png": 400,
    "fc1.confusion.png": 520,
    "flatten.strip.png": 900,
}
RENAMED = {  # pictures whose names carry settings: (the name in docs/, width)
    "pool2.clusters.k10-poolnone-pca32-seed0.png": ("demo-pool2.clusters.png", 900),
}


def shrink(src: Path, dst: Path, max_width: int) -> None:
    with Image.open(src) as im:
        im = im.convert("RGB")
        if im.width > max_width:
            im = im.resize((max_width, round(im.height * max_width / im.width)), Image.LANCZOS)
        im.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(dst, optimize=True)


def main(report: str, docs: str) -> None:
    out = Path(docs)
    out.mkdir(parents=True, exist_ok=True)
    for name, width in PICTURES.items():
        shrink(Path(report) / name, out / f"demo-{name}", width)
    for name, (target, width) in RENAMED.items():
        shrink(Path(report) / name, out / target, width)
    for shot in out.glob("report-*.png"):
        shrink(shot, shot, 1280)
    print(f"wrote {len(PICTURES) + len(RENAMED)} pictures to {out}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
