"""Issue 12: does the segmentation default recipe (`configs/segmentation/finetune.yaml`) train an 11-class
street-scene set of CamVid's shape (367 training images of 360x480, 101 validation images) in <= 20 min on 2 cores?

The real set is held out, so this measures TIME on a proxy of the same shape, never quality. The proxy is built
from scikit-image's bundled sample photos (astronaut, coffee, chelsea, rocket, coins, hubble_deep_field, ...),
each image a seeded random-resized crop of one (4:3, flipped, colour-jittered) at 360 high x 480 wide; its mask
gives each SLIC superpixel one of 11 classes by the superpixel's mean colour (dark, three grey levels, seven hues).
So the masks follow image edges like a real scene parse and are learnable from the pixels, but they mean nothing:
the proxy is realistic in shape and cost only, and its mIoU says nothing about street scenes.

1. --probe (default): the cost probe (`bench/probe.py`: `measure`, `checkpoint_seconds`) measures
   seconds per training step (backbone trained and frozen), per validation batch, and per epoch's checkpoints;
   from them, the predicted wall time of the recipe (10 epochs, backbone frozen for 1, then the final evaluation)
   under each validation cadence and subset below.
2. --train: `tools/train.py --config configs/segmentation/finetune.yaml --data.root ROOT` as a user runs it (plus
   --overrides), timed as a whole process; per-epoch times are when each metrics.csv row appeared, seen from
   outside; mIoU from the run's metrics.json.

Every run takes /tmp/cvsuite-cpu.lock first (the script re-executes itself under flock), so other jobs on the
same cores do not skew the times.

    python bench/segmentation_street_cost.py [--probe] [--data /tmp/cvsuite-street]
    python bench/segmentation_street_cost.py --train [--overrides "--data.val_subset 0.25"] [--data DIR]
"""

from __future__ import annotations

import argparse
import colorsys
import csv
import math
import os
import shlex
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance
from skimage import data as samples
from skimage.segmentation import slic
from train_tool import REPO, metrics, train_tool

RECIPE = "configs/segmentation/finetune.yaml"
LOCK = "/tmp/cvsuite-cpu.lock"
HEIGHT, WIDTH = 360, 480
SPLITS = {"train": 367, "val": 101}
# Sample photos bundled with scikit-image (no download); grey ones are tinted to RGB.
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "coins", "immunohistochemistry", "hubble_deep_field",
          "stereo_motorcycle", "camera", "clock", "brick", "grass", "gravel", "moon", "retina",
          "colorwheel")  # fmt: skip
# Recipe variants of the probe's table: data.val_subset (share of the validation split scored inside training)
# and trainer.check_val_every_n_epoch.
VARIANTS = {
    "val every epoch, whole split (the recipe before 2026-11-29)": (None, 1),
    "(a) val_subset 0.25": (0.25, 1),
    "(b) check_val_every_n_epoch 2": (None, 2),
    "(c) val_subset 0.25 + every 2 epochs": (0.25, 2),
    "the recipe now: val_subset 0.5 + every 2 epochs": (0.5, 2),
}


# ---- the proxy data set ----------------------------------------------------------------------------------------
def _photos() -> list[np.ndarray]:
    out = []
    for name in PHOTOS:
        image = getattr(samples, name)()
        image = image[0] if isinstance(image, tuple) else image  # stereo pairs
        image = np.asarray(image)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        out.append(np.ascontiguousarray(image[..., :3]).astype(np.uint8))
    return out


def _crop(photo: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A random-resized crop (4:3, 30-100% of the largest such box), flipped and colour-jittered (brightness,
    contrast, saturation, hue turned), at 480x360."""
    h, w = photo.shape[:2]
    box_h = min(h, w * HEIGHT / WIDTH)
    scale = math.sqrt(rng.uniform(0.3, 1.0))
    ch, cw = box_h * scale, box_h * scale * WIDTH / HEIGHT
    top, left = rng.uniform(0, h - ch), rng.uniform(0, w - cw)
    image = Image.fromarray(photo).crop((round(left), round(top), round(left + cw), round(top + ch)))
    image = image.resize((WIDTH, HEIGHT), Image.BILINEAR)
    if rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhance(image).enhance(rng.uniform(0.7, 1.3))
    hsv = np.asarray(image.convert("HSV")).copy()
    hsv[..., 0] += np.uint8(rng.integers(256))  # a hue turn (wrapping), so every hue bin gets its share
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(1.0, 1.6) + rng.uniform(0, 40), 0, 255)  # grey photos tinted
    return Image.fromarray(hsv, "HSV").convert("RGB")


def _colour_class(rgb: np.ndarray) -> int:
    """One of 11 fixed bins of a mean colour: 0 dark, 1-3 grey levels, 4-10 seven hue sectors."""
    h, s, v = colorsys.rgb_to_hsv(*(rgb / 255.0))
    if v < 0.2:
        return 0
    if s < 0.2:
        return 1 + min(2, int((v - 0.2) / 0.8 * 3))
    return 4 + min(6, int(h * 7))


def _mask(image: Image.Image, classify: Callable[[np.ndarray], int] = _colour_class) -> np.ndarray:
    """Each SLIC superpixel of `image` as ``classify(its mean RGB)``."""
    pixels = np.asarray(image)
    segments = slic(pixels, n_segments=120, compactness=10, start_label=0)
    flat = pixels.reshape(-1, 3).astype(np.float64)
    counts = np.bincount(segments.ravel())
    means = np.stack([np.bincount(segments.ravel(), flat[:, c], len(counts)) for c in range(3)], 1)
    lut = np.array([classify(m / max(1, n)) for m, n in zip(means, counts)], dtype=np.uint8)
    return lut[segments]


def write_street_proxy(root: Path, seed: int = 0) -> Path:
    """ROOT/{train,val}/{images,masks}/*.png, 367 + 101 pairs; reused when ROOT already holds a complete set."""
    done = root / "COMPLETE"
    if done.exists():
        return root
    photos = _photos()
    rng = np.random.default_rng(seed)
    for split, count in SPLITS.items():
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image = _crop(photos[rng.integers(len(photos))], rng)
            image.save(root / split / "images" / f"{split}_{i:04d}.png")
            Image.fromarray(_mask(image)).save(root / split / "masks" / f"{split}_{i:04d}.png")
    done.write_text(f"seed {seed}\n")
    return root


# ---- --probe ---------------------------------------------------------------------------------------------------
def probe(root: Path, steps: int, rounds: int) -> None:
    from probe import checkpoint_seconds, measure

    from cvsuite.config import load_config
    from cvsuite.tasks import get_spec

    t0 = time.perf_counter()
    cfg = load_config(str(REPO / RECIPE), ["--data.root", str(root)])
    spec = get_spec(cfg.task)
    dm = spec.build_datamodule(cfg, None)
    dm.setup("fit")
    module = spec.build_module(cfg, dm)
    setup_s = time.perf_counter() - t0
    # The fastest of a few rounds: the first pays the process's warm-up, and neighbours come and go.
    step_s = frozen_s = val_batch_s = math.inf
    for _ in range(rounds):
        step, frozen, val_batch, steps_per_epoch = measure(module, dm, cfg.trainer, steps=steps)
        step_s, frozen_s, val_batch_s = min(step_s, step), min(frozen_s, frozen), min(val_batch_s, val_batch)
    epoch_s = checkpoint_seconds(module)
    epochs, freeze = int(cfg.trainer["max_epochs"]), int(cfg.finetune.freeze_epochs)
    sanity = cfg.trainer.get("num_sanity_val_steps", 2)  # Lightning's default: two validation batches first
    full_batches = dm.val_batches(training=False)
    train_s = steps_per_epoch * (freeze * frozen_s + (epochs - freeze) * step_s) + epochs * epoch_s
    print(
        f"proxy: {len(dm.train_set) // cfg.data.crops_per_image} train / {len(dm.val_set)} val images of "
        f"{WIDTH}x{HEIGHT}, {dm.num_classes} classes; batch {cfg.data.batch_size} of {cfg.data.crop_size} px crops, "
        f"{cfg.data.crops_per_image} per image"
    )
    print(
        f"measured: {step_s:.3f} s/step, {frozen_s:.3f} s/step frozen, {steps_per_epoch} steps/epoch, "
        f"{val_batch_s:.3f} s/val batch ({full_batches} batches = {val_batch_s * full_batches:.1f} s per whole "
        f"split), {epoch_s:.2f} s checkpoints/epoch, {setup_s:.1f} s data setup + model build (in-process; "
        f"the process's imports and the dataset check come on top)"
    )
    print(f"training steps alone ({epochs} epochs, {freeze} frozen): {train_s / 60:.1f} min\n")
    print("| variant | val batches / pass | validations | val min | predicted min |")
    print("|---|---:|---:|---:|---:|")
    for name, (subset, every) in VARIANTS.items():
        dm.cfg.val_subset = subset
        batches = dm.val_batches(training=True)
        passes = epochs // every
        val_s = (passes * batches + min(sanity, batches)) * val_batch_s
        total = setup_s + train_s + val_s + full_batches * val_batch_s  # + the final evaluation of the whole split
        print(f"| {name} | {batches} | {passes} | {val_s / 60:.1f} | {total / 60:.1f} |")


# ---- --train ---------------------------------------------------------------------------------------------------
class EpochWatch(threading.Thread):
    """Seconds since start at which the run's config.yaml (training starts) and each metrics.csv row appeared."""

    def __init__(self, out: Path, poll: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.out, self.poll, self.start_t = out, poll, time.perf_counter()
        self.fit_at: float | None = None
        self.rows: list[tuple[float, dict[str, str]]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.poll):
            now = time.perf_counter() - self.start_t
            if self.fit_at is None and any(self.out.glob("**/config.yaml")):
                self.fit_at = now
            files = list(self.out.glob("**/metrics.csv"))
            if not files:
                continue
            try:
                with files[0].open() as fh:
                    rows = list(csv.DictReader(fh))
            except OSError:
                continue
            for row in rows[len(self.rows) :]:
                self.rows.append((now, row))
                print(f"  epoch {int(row['epoch']) + 1} ended at {now:.0f} s", flush=True)


def train(root: Path, out: Path, overrides: list[str]) -> None:
    print(f"tools/train.py --config {RECIPE} --data.root {root} {shlex.join(overrides)}", flush=True)
    watch = EpochWatch(out)
    watch.start()
    seconds, run_dir, _ = train_tool(RECIPE, root, out, *overrides)
    watch.stop.set()
    watch.join()
    m = metrics(run_dir)
    print(f"\nwall time {seconds:.0f} s = {seconds / 60:.1f} min (whole process); run folder {run_dir}")
    fit_at = watch.fit_at or 0.0
    print(f"start-up (imports, dataset check, mask reading) until training: {fit_at:.0f} s")
    print("| epoch | s | validated | val_miou |")
    print("|---:|---:|---|---:|")
    last = fit_at
    for at, row in watch.rows:
        miou = row.get("val_miou") or ""
        print(f"| {int(row['epoch']) + 1} | {at - last:.0f} | {'yes' if miou else 'no'} | {miou} |")
        last = at
    print(f"after the last epoch (final evaluation of the whole split, plots): {seconds - last:.0f} s")
    print(f"final mIoU (best checkpoint, whole val split): {m.get('miou', float('nan')):.4f}")


def hold_cpu_lock() -> None:
    """Re-execute this script under ``flock LOCK`` (once), so no other job that takes the lock shares the cores."""
    if os.environ.get("CVSUITE_CPU_LOCK") != LOCK:
        os.environ["CVSUITE_CPU_LOCK"] = LOCK
        os.execvp("flock", ["flock", LOCK, sys.executable, *sys.argv])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--probe", action="store_true", help="predict the recipe's wall time (default)")
    mode.add_argument("--train", action="store_true", help="run the recipe end to end, timed")
    p.add_argument("--data", help="proxy data folder, built there once and reused (default: a new temp folder)")
    p.add_argument("--overrides", default="", help='--train: extra recipe overrides, e.g. "--data.val_subset 0.25"')
    p.add_argument("--steps", type=int, default=6, help="--probe: steps (and validation batches) to time")
    p.add_argument("--rounds", type=int, default=2, help="--probe: measure this often, keep the fastest")
    p.add_argument("--no-lock", action="store_true", help="do not take " + LOCK)
    args = p.parse_args()
    if not args.no_lock:
        hold_cpu_lock()
    tmp = Path(tempfile.mkdtemp(prefix="cvsuite-street-"))
    t0 = time.perf_counter()
    root = write_street_proxy(Path(args.data) if args.data else tmp / "data")
    print(f"proxy data: {root} ({time.perf_counter() - t0:.0f} s to build or find)", flush=True)
    if args.train:
        train(root, tmp / "runs", shlex.split(args.overrides))
    else:
        probe(root, args.steps, args.rounds)


if __name__ == "__main__":
    main()
