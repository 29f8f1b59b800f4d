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
