"""bench/gan_tiling.py's two scores react to what they name: a repeated fragment and a period-2 pixel grid."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from gan_tiling import grid, repetition  # noqa: E402


def photo_like(seed: int, size: int = 64) -> np.ndarray:
    """Smooth random blobs plus fine noise, no repeats: a stand-in for a photo's detail."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (size // 8, size // 8, 3))
    image = np.kron(coarse, np.ones((8, 8, 1))) * 0.6 + rng.uniform(0, 255, (size, size, 3)) * 0.4
    return image.round().astype(np.uint8)


def test_a_fragment_copied_elsewhere_in_the_image_scores_as_a_repeat():
    images = np.stack([photo_like(s) for s in range(4)])
    copied = images.copy()
    copied[:, 40:56, 8:24] = images[:, 8:24, 40:56]  # a 16 px fragment drawn twice, 32 px apart
    plain, repeated = repetition(images), repetition(copied)
    assert repeated.shape == (4,)
    assert np.all(repeated > 0.85)  # < 1: the detail near its edges sees other surroundings
    assert np.all(plain < 0.6)


def test_a_period_two_pixel_grid_raises_the_grid_score_and_a_photo_stays_near_one():
    images = np.stack([photo_like(s) for s in range(4)])
    checker = (np.indices((64, 64)).sum(axis=0) % 2 * 2 - 1)[None, :, :, None] * 8
    gridded = np.clip(images.astype(int) + checker, 0, 255).astype(np.uint8)
    assert np.all(np.abs(grid(images) - 1) < 0.5)
    assert np.all(grid(gridded) > 5)
