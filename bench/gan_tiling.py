"""Tiling artefacts in GAN samples, as numbers: repeated fragments and the upsampling's pixel grid, for generated
images next to the real ones they imitate.

    python bench/gan_tiling.py --real FOLDER_OF_REAL_PNGS --ckpt NAME=RUN/checkpoints/best.ckpt [NAME=CKPT ...]
                               [--num 200] [--seed 0]

Both scores are computed per image on the grey levels' fine detail (the image minus a 7x7 box blur, so that smooth
gradients such as a sky do not count as repetition) and averaged over the images:

- **repetition**: the best normalised cross-correlation between two textured 16 px squares of one image that do not
  overlap. A face fragment drawn twice in one image, or a streak repeated across it, scores near 1; a photo of one
  object lower (textures such as grass or clouds also repeat, hence the ratio to the real images).
- **grid**: the detail's spectral power at the periods 2 and 4 px over the power at the neighbouring frequencies.
  A photo has a smooth spectrum (about 1). A generator's nearest-neighbour 2x upsampling copies each pixel into a
  2x2 block, which empties those frequencies (below 1: the fine pixel grid seen in sample grids); a checkerboard
  from transposed convolutions fills them (above 1).

Each row also gives the ratio to the real images' score (1.0 = as in the photos). Reported in BENCHMARKS.md
("Generation: the metric network and sample quality on the varied sets").
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import uniform_filter

PATCH = 16


def detail(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, H, W) float grey detail: grey minus its 7x7 box blur, zero mean per image."""
    grey = images.astype(np.float64).mean(axis=-1) / 255.0
    fine = grey - uniform_filter(grey, size=(1, 7, 7), mode="reflect")
    return fine - fine.mean(axis=(1, 2), keepdims=True)


def repetition(images: np.ndarray, patch: int = PATCH) -> np.ndarray:
    """Per image: the best normalised cross-correlation between two of its textured `patch` px squares that do not
    overlap (offset >= `patch` in x or y), searched on a 2 px grid (1.0 = an exact copy elsewhere in the image)."""
    import torch

    d = torch.from_numpy(detail(images)).float()[:, None]
    cols = torch.nn.functional.unfold(d, patch, stride=2)  # (N, patch*patch, L)
    cols = cols - cols.mean(dim=1, keepdim=True)
    norm = cols.norm(dim=1)  # (N, L)
    unit = cols / norm.clamp_min(1e-8)[:, None]
    ncc = unit.transpose(1, 2) @ unit  # (N, L, L)
    side = (images.shape[1] - patch) // 2 + 1
    ys, xs = torch.meshgrid(torch.arange(side) * 2, torch.arange(side) * 2, indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    apart = torch.maximum((ys[:, None] - ys[None]).abs(), (xs[:, None] - xs[None]).abs()) >= patch
    # Flat squares (a clear sky) correlate by chance: only squares with a quarter of the image's median detail count.
    textured = norm >= 0.25 * norm.median(dim=1, keepdim=True).values
    valid = apart[None] & textured[:, :, None] & textured[:, None, :]
    return ncc.masked_fill(~valid, -1.0).flatten(1).max(dim=1).values.numpy()


def grid(images: np.ndarray) -> np.ndarray:
    """Per image: the detail's power at the periods 2 and 4 px (summed over the other axis) over the power at the
    neighbouring frequencies, averaged over both axes and both periods: about 1 for a photo, below for 2x2 blocks,
    above for a checkerboard."""
    d = detail(images)
    power = np.abs(np.fft.fft2(d)) ** 2
    ratios = []
    for axis_power in (power.sum(axis=2), power.sum(axis=1)):  # (N, H) over rows, (N, W) over columns
        size = axis_power.shape[1]
        for period in (2, 4):
            k = size // period
            ratios.append(
                axis_power[:, k] / np.maximum(0.5 * (axis_power[:, k - 1] + axis_power[:, (k + 1) % size]), 1e-12)
            )
    return np.mean(ratios, axis=0)


def read_folder(folder: Path, size: int | None = None) -> np.ndarray:
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not paths:
        raise SystemExit(f"--real {folder}: no .png/.jpg images in it")
    images = [Image.open(p).convert("RGB") for p in paths]
    size = size or images[0].width
    return np.stack(
        [np.asarray(im.resize((size, size), Image.LANCZOS) if im.size != (size, size) else im) for im in images]
    )


def scores(images: np.ndarray) -> tuple[float, float]:
    return float(repetition(images).mean()), float(grid(images).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real", type=Path, required=True, help="the real images the GAN trained on")
    p.add_argument("--ckpt", nargs="+", default=[], help="NAME=PATH of a generation checkpoint (or a folder of PNGs)")
    p.add_argument("--num", type=int, default=200, help="samples per checkpoint")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    real = read_folder(args.real)
    real_rep, real_grid = scores(real)
    print(f"{'images':<24} {'n':>5} {'repetition':>11} {'x real':>7} {'grid':>8} {'x real':>7}")
    print(f"{'real':<24} {len(real):>5} {real_rep:>11.3f} {1:>7.2f} {real_grid:>8.4f} {1:>7.2f}")
    for item in args.ckpt:
        name, _, path = item.rpartition("=")
        path = Path(path)
        if path.is_dir():
            fake = read_folder(path, real.shape[1])
        else:
            from cvsuite.api import load

            fake = load(path, device="cpu").generate(args.num, seed=args.seed)
        rep, grd = scores(fake)
        label = name or path.name
        print(f"{label:<24} {len(fake):>5} {rep:>11.3f} {rep / real_rep:>7.2f} {grd:>8.4f} {grd / real_grid:>7.2f}")


if __name__ == "__main__":
    main()
