"""Synthetic data with exact truth, for tests and quick experiments; nothing in training depends on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from cvsuite.data.formats.records import ImageRecord


def make_shapes(
    folder: Path, n: int = 8, size: tuple[int, int] = (96, 128), max_objects: int = 3, seed: int = 0
) -> tuple[list[ImageRecord], list[str]]:
    """Synthetic images of filled rectangles ("square", "bar") and ellipses ("disc") on noise, with exact boxes.

    Image sizes vary (±25% of `size` = (height, width)) and some images have no objects. Returns (records,
    class names); images are PNGs in `folder`.
    """
    names = ["square", "bar", "disc"]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        h = int(size[0] * rng.uniform(0.75, 1.25))
        w = int(size[1] * rng.uniform(0.75, 1.25))
        img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        boxes, labels = [], []
        for _ in range(0 if i % 4 == 3 else int(rng.integers(1, max_objects + 1))):
            cls = int(rng.integers(0, 3))
            bw = int(rng.integers(12, max(13, w // 2)))
            bh = bw if cls != 1 else max(6, bw // 3)
            bh = min(bh, h - 2)
            x1, y1 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            colour = rng.integers(150, 256, 3)
            if cls == 2:
                yy, xx = np.mgrid[0:bh, 0:bw]
                inside = ((xx + 0.5 - bw / 2) / (bw / 2)) ** 2 + ((yy + 0.5 - bh / 2) / (bh / 2)) ** 2 <= 1
                img[y1 : y1 + bh, x1 : x1 + bw][inside] = colour
            else:
                img[y1 : y1 + bh, x1 : x1 + bw] = colour
            boxes.append([x1, y1, x1 + bw, y1 + bh])
            labels.append(cls)
        path = folder / f"shape_{i:03d}.png"
        Image.fromarray(img).save(path)
        records.append(
            ImageRecord(
                path,
                w,
                h,
                np.asarray(boxes, np.float32).reshape(-1, 4),
                np.asarray(labels, np.int64),
                np.zeros(len(labels), bool),
                i + 1,
            )
        )
    return records, names
