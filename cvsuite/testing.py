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


# The shapes and modes users bring, for the parity tests: (name, (width, height) as stored, how it is written).
CORPUS = (
    ("landscape_4x3", (128, 96), "RGB"),
    ("portrait_3x4", (96, 128), "RGB"),
    ("wide_16x9", (160, 90), "RGB"),
    ("square", (96, 96), "RGB"),
    ("odd_100x75", (100, 75), "RGB"),
    ("odd_361x479", (361, 479), "RGB"),
    ("large_2000x1500", (2000, 1500), "RGB"),
    ("exif_rotated", (120, 90), "EXIF"),  # a JPEG whose EXIF orientation tag says "rotate 90°"
    ("grey", (110, 80), "L"),
    ("rgba", (90, 110), "RGBA"),
    ("sixteen_bit", (104, 78), "I;16"),  # a dim 16-bit PNG (maximum far below 65535)
)
CORPUS_CLASSES = ("background", "square", "disc")


def corpus_image(
    size: tuple[int, int], seed: int, shapes: tuple[str, ...] = ("square", "disc")
) -> tuple[np.ndarray, np.ndarray, list[tuple[list[int], int]]]:
    """One picture of `size` (width, height): dim noise with a bright square and/or a bright disc (`shapes`).

    Returns (HWC uint8 RGB, (H, W) uint8 class-id mask (0 background, 1 square, 2 disc), [(xyxy box, class 0/1)])."""
    w, h = size
    rng = np.random.default_rng(seed)
    # Noise in 4x4 blocks: real-looking texture that still compresses (the 2000x1500 PNG stays quick to decode).
    img = np.repeat(np.repeat(rng.integers(0, 70, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8), 4, 0), 4, 1)[:h, :w]
    img = np.ascontiguousarray(img)
    mask = np.zeros((h, w), np.uint8)
    objects = []
    side = max(8, min(w, h) // 3)
    x1, y1 = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
    if "square" in shapes:
        img[y1 : y1 + side, x1 : x1 + side] = rng.integers(170, 256, 3)
        mask[y1 : y1 + side, x1 : x1 + side] = 1
        objects.append(([x1, y1, x1 + side, y1 + side], 0))
    r = max(4, min(w, h) // 6)
    cx, cy = int(rng.integers(r, w - r)), int(rng.integers(r, h - r))
    yy, xx = np.mgrid[0:h, 0:w]
    disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    disc &= mask == 0
    if "disc" in shapes and disc.any():
        img[disc] = rng.integers(170, 256, 3)
        mask[disc] = 2
        ys, xs = np.nonzero(disc)
        objects.append(([int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1], 1))
    return img, mask, objects


def write_corpus_image(path: Path, rgb: np.ndarray, kind: str) -> Path:
    """Save `rgb` as `kind` (RGB, L, RGBA, I;16, EXIF); returns the file written (PNG, or JPEG for EXIF)."""
    if kind == "EXIF":
        path = path.with_suffix(".jpg")
        exif = Image.Exif()
        exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
        Image.fromarray(rgb).save(path, quality=95, exif=exif)
    elif kind == "L":
        Image.fromarray(rgb.mean(2).astype(np.uint8), "L").save(path)
    elif kind == "RGBA":
        alpha = np.full(rgb.shape[:2] + (1,), 128, np.uint8)
        Image.fromarray(np.concatenate([rgb, alpha], 2), "RGBA").save(path)
    elif kind == "I;16":
        Image.fromarray((rgb.mean(2) * 3).astype(np.uint16)).save(path)  # at most ~765 of 65535: dim
    else:
        Image.fromarray(rgb).save(path)
    return path


def make_corpus(
    root: Path, task: str, train_copies: int = 1, seed: int = 0, names: tuple[str, ...] | None = None
) -> Path:
    """A data set of the `CORPUS` shapes for `task`, at ``root``; the validation split holds each shape once,
    training `train_copies` of each (other noise and positions); `names` picks some of the shapes. Layouts:

    - classification: ``train|val/<square|disc>/<name>.png``, one object per image, its shape the class;
    - detection: ``train|val/`` in COCO (images + annotations.json), classes square and disc;
    - segmentation: ``train|val/images`` + ``masks`` (class ids 0 background, 1 square, 2 disc);
    - regression: ``train.csv`` + ``val.csv`` (``path,brightness``: the mean of the image as read).
    """
    from cvsuite.data.formats.writers import write_split

    root = Path(root)
    rows: dict[str, list[str]] = {"train": [], "val": []}
    for split, copies in (("val", 1), ("train", train_copies)):
        records = []
        for copy in range(copies):
            for k, (name, size, kind) in enumerate(CORPUS):
                if names is not None and name not in names:
                    continue
                item_seed = seed * 1000 + k * 10 + copy + (0 if split == "val" else 500)
                label = ("square", "disc")[(k + copy) % 2]
                shapes = (label,) if task == "classification" else ("square", "disc")
                rgb, mask, objects = corpus_image(size, item_seed, shapes)
                stem = f"{name}_{copy}" if split == "train" else name
                if task == "classification":
                    folder = root / split / label
                elif task == "segmentation":
                    folder = root / split / "images"
                    (root / split / "masks").mkdir(parents=True, exist_ok=True)
                    Image.fromarray(mask).save(root / split / "masks" / f"{stem}.png")
                else:
                    folder = root / split / "images" if task == "detection" else root / split
                folder.mkdir(parents=True, exist_ok=True)
                path = write_corpus_image(folder / f"{stem}.png", rgb, kind)
                if task == "detection":
                    boxes = np.asarray([b for b, _ in objects], np.float32).reshape(-1, 4)
                    labels = np.asarray([c for _, c in objects], np.int64)
                    records.append(
                        ImageRecord(
                            path, size[0], size[1], boxes, labels, np.zeros(len(labels), bool), len(records) + 1
                        )
                    )
                if task == "regression":
                    from cvsuite.data.common import read_image

                    rows[split].append(f"{path.relative_to(root).as_posix()},{read_image(path).mean() / 255:.6f}")
        if task == "detection":
            write_split(records, list(CORPUS_CLASSES[1:]), root / split, "coco")
    if task == "regression":
        for split, lines in rows.items():
            (root / f"{split}.csv").write_text("path,brightness\n" + "\n".join(lines) + "\n")
    return root
