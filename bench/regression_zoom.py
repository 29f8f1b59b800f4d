"""Image regression on real photos with a measurable target: how far is this crop zoomed?

Crops of scikit-image's bundled photos, cut at a random side of 64·z pixels (z uniform in [1, 4]) and resized to
64x64; the target is z. Training crops come from some photos and validation crops from other photos, so the model
must read zoom from texture and edge scale, not remember a photo. Baseline: always predicting the training mean
(R² = 0 by definition, its MAE printed). Runs configs/regression/finetune.yaml as a user would, through
cvsuite.train.

    python bench/regression_zoom.py [--epochs 6] [--per-photo 60] [--holdout photos|crops] [--val-per-photo N]

``--holdout crops`` instead validates on new crops of the training photos (a seeded 25% of the crops of every
photo): zoom read on seen content.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import cvsuite

REPO = Path(__file__).resolve().parents[1]
PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket", "coins", "horse", "moon", "page", "text", "brick",
          "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "clock")  # fmt: skip


def load_photos() -> dict[str, np.ndarray]:
    import skimage.data

    out = {}
    for name in PHOTOS:
        try:
            img = np.asarray(getattr(skimage.data, name)())
        except Exception:  # not bundled with this scikit-image (would need a download)
            continue
        if img.dtype == bool:
            img = img.astype(np.uint8) * 255
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        out[name] = img[..., :3].astype(np.uint8)
    return out


def write_split(photos: dict[str, np.ndarray], root: Path, csv_name: str, per_photo: int, seed: int) -> int:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    n = 0
    with (root / csv_name).open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "zoom"])
        for img in photos.values():
            h, w_ = img.shape[:2]
            for _ in range(per_photo):
                z = rng.uniform(1, min(4, min(h, w_) / 64))
                side = int(round(64 * z))
                y, x = rng.integers(0, h - side + 1), rng.integers(0, w_ - side + 1)
                crop = Image.fromarray(img[y : y + side, x : x + side]).resize((64, 64), Image.BILINEAR)
                path = f"images/{csv_name[:-4]}_{n:05d}.png"
                crop.save(root / path)
                w.writerow([path, f"{side / 64:.4f}"])
                n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--per-photo", type=int, default=60)
    parser.add_argument("--holdout", choices=("photos", "crops"), default="photos")
    parser.add_argument("--val-per-photo", type=int, help="validation crops per photo (default: --per-photo)")
    args = parser.parse_args()
    photos = load_photos()
    names = sorted(photos)
    val_names = names[::4] if args.holdout == "photos" else []  # every fourth photo held out entirely
    tmp = Path(tempfile.mkdtemp(prefix="cvsuite-zoom-"))
    train_photos = {k: photos[k] for k in names if k not in val_names}
    n_train = write_split(train_photos, tmp, "train.csv", args.per_photo, 0)
    n_val = write_split(
        {k: photos[k] for k in val_names} or train_photos, tmp, "val.csv", args.val_per_photo or args.per_photo, 1
    )
    start = time.perf_counter()
    run = cvsuite.train(
        REPO / "configs/regression/finetune.yaml",
        {
            "data.root": str(tmp), "data.val_csv": "val.csv", "data.image_size": 64, "data.num_workers": 0,
            "trainer.max_epochs": args.epochs, "trainer.default_root_dir": str(tmp / "run"),
            "trainer.enable_progress_bar": False, "run.early_stopping_patience": None,
        },
    )  # fmt: skip
    seconds = time.perf_counter() - start
    metrics = json.loads((run / "metrics.json").read_text())
    train_z = np.loadtxt(tmp / "train.csv", delimiter=",", skiprows=1, usecols=1)
    val_z = np.loadtxt(tmp / "val.csv", delimiter=",", skiprows=1, usecols=1)
    result = {
        "photos_train": [k for k in names if k not in val_names],
        "photos_val": val_names or "new crops of the training photos",
        "n_train": n_train,
        "n_val": n_val,
        "epochs": args.epochs,
        "val_mae": round(metrics["mae"], 4),
        "val_rmse": round(metrics["rmse"], 4),
        "val_r2": round(metrics["r2"], 4),
        "baseline_mean_mae": round(float(np.abs(val_z - train_z.mean()).mean()), 4),
        "train_seconds": round(seconds, 1),
        "run": str(run),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
