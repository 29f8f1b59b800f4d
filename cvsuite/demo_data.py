"""Small real datasets written to disk in the layouts users have, for the demo, benchmarks and manual runs.
They come from packages already installed (scikit-image), so nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_faces(root: str | Path, size: int = 64, val_fraction: float = 0.25, seed: int = 0) -> Path:
    """skimage's ``lfw_subset``: 100 face and 100 non-face 25x25 grey patches from real photos, upscaled to
    `size` and written as ``root/{train,val}/{face,nonface}/*.png``. Returns `root`."""
    from skimage.data import lfw_subset

    root = Path(root)
    images = lfw_subset()  # (200, 25, 25) float in [0, 1]; first 100 faces
    labels = ["face"] * 100 + ["nonface"] * 100
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    n_val = int(round(len(images) * val_fraction))
    for rank, i in enumerate(order):
        split = "val" if rank < n_val else "train"
        folder = root / split / labels[i]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (images[i] * 255).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).resize((size, size), Image.BICUBIC).convert("RGB").save(folder / f"{i:03d}.png")
    return root


def write_raccoon_crops(
    src: str | Path, root: str | Path, size: int = 128, val_fraction: float = 0.25, seed: int = 0
) -> Path:
    """A harder real two-class set from the raccoon detection photos (PASCAL VOC): each annotated raccoon crop
    ("raccoon") and a square window of the same photo that overlaps no raccoon ("background"), written as
    ``root/{train,val}/{raccoon,background}/*.png``. Both crops of a photo land in the same split."""
    import xml.etree.ElementTree as ET

    src, root = Path(src), Path(root)
    rng = np.random.default_rng(seed)
    xmls = sorted((src / "annotations").glob("*.xml"))
    order = rng.permutation(len(xmls))
    n_val = int(round(len(xmls) * val_fraction))
    for rank, i in enumerate(order):
        tree = ET.parse(xmls[i]).getroot()
        image = Image.open(src / "images" / tree.findtext("filename")).convert("RGB")
        boxes = [
            [int(float(o.findtext(f"bndbox/{k}"))) for k in ("xmin", "ymin", "xmax", "ymax")]
            for o in tree.iter("object")
        ]
        split = "val" if rank < n_val else "train"
        x0, y0, x1, y1 = boxes[0]
        crops = {"raccoon": (x0, y0, x1, y1)}
        for attempt in range(200):  # a square window that touches no raccoon, shrinking until one fits
            w = h = max(32, int(min(image.size) * (0.6 - 0.4 * attempt / 200)))
            bx, by = int(rng.integers(0, image.width - w + 1)), int(rng.integers(0, image.height - h + 1))
            if all(bx >= b[2] or bx + w <= b[0] or by >= b[3] or by + h <= b[1] for b in boxes):
                crops["background"] = (bx, by, bx + w, by + h)
                break
        for name, box in crops.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            image.crop(box).resize((size, size), Image.BICUBIC).save(folder / f"{xmls[i].stem}.png")
    return root
