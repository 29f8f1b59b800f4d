"""Issue 21 (5): does the segmentation recipe learn THIN and RARE classes? Per-class IoU on a street-scene-shaped
proxy whose thin and rare classes have CamVid's sizes and pixel shares.

The real street-scene set (11 classes, 367 train / 101 val at 360x480; pole, sign, pedestrian and bicyclist thin,
small or rare) is held out. This proxy has its shape: 367 + 101 images of 360 high x 480 wide, 11 classes.
- 7 large-region classes, the background: `bench/segmentation_street_cost.py`'s seeded crops of scikit-image's
  sample photos, each SLIC superpixel binned by its mean colour (dark, grey, pale, and four hue sectors: warm,
  green, blue, purple). They follow image edges and are learnable from the pixels, but mean nothing.
- 4 thin / small / rare classes painted over the background (anti-aliased, 4x4 supersampled; a pixel takes the
  object's class when the object covers at least half of it), each drawn with random brightness, shading and noise
  so that no single colour gives it away; the shape does:
  pole: near-vertical strips 2-6 px wide, 60-300 px tall (some with a thin arm), a grey or tinted metal gradient;
  sign: 10-28 px discs, squares/rectangles and triangles with a border, in four hue families, half on a pole top;
  pedestrian: upright figures 20-70 px tall (head, torso, two legs), skin-toned head, dark random clothing;
  bicyclist: in about 15 % of the images (1-4 of them), a rider over two thin ring wheels and a frame.
  Aimed at CamVid's pixel shares (pole ~1 %, sign ~0.3-0.5 %, pedestrian ~0.5-1 %, bicyclist ~0.3-0.5 %): the
  build prints the shares it measured.

The data is seeded and written once to --data (ROOT/{train,val}/{images,masks}/*.png, masks of class ids, and
ROOT/proxy.json with the class names and each split's pixel counts); a later call with the same settings reuses it.

    python bench/segmentation_thin.py --data /tmp/cvsuite-thin                 # build (or find) it, print shares
    python bench/segmentation_thin.py --data /tmp/cvsuite-thin --train [--budget 360s] [--overrides "..."]

--train runs `tools/train.py --config configs/segmentation/finetune.yaml --data.root ROOT --run.budget B
--data.class_names [...]` as a user would (plus --overrides, e.g. "--data.class_crops 0 --model.class_weights null"
for the recipe without its rare-class settings) and prints mIoU and the per-class IoU table from the run's
metrics.json, the thin / rare classes marked, with their training pixel counts. Every call takes
/tmp/cvsuite-cpu.lock first (the script re-executes itself under flock).
"""

from __future__ import annotations

import argparse
import colorsys
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from segmentation_street_cost import HEIGHT, LOCK, WIDTH, _crop, _mask, _photos, hold_cpu_lock
from train_tool import metrics, train_tool

RECIPE = "configs/segmentation/finetune.yaml"
SPLITS = {"train": 367, "val": 101}
BACKGROUND = ("dark", "grey", "pale", "warm", "green", "blue", "purple")
THIN = ("pole", "sign", "pedestrian", "bicyclist")
CLASS_NAMES = (*BACKGROUND, *THIN)
POLE, SIGN, PEDESTRIAN, BICYCLIST = (CLASS_NAMES.index(name) for name in THIN)
SUPERSAMPLE = 4  # sub-pixels per side for the anti-aliased coverage of each painted object
Inside = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (y, x) image coordinates -> bool, the object's shape
Colour = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (y, x) pixel centres -> (h, w, 3) RGB 0-255


# ---- the background: 7 colour bins of SLIC superpixels -------------------------------------------------------------
def background_class(rgb: np.ndarray) -> int:
    """0 dark, 1 grey, 2 pale, 3-6 four hue sectors (warm: red to yellow, green, blue: cyan to blue, purple)."""
    h, s, v = colorsys.rgb_to_hsv(*(rgb / 255.0))
    if v < 0.2:
        return 0
    if s < 0.2:
        return 1 if v < 0.6 else 2
    return 3 + min(3, int(((h + 1 / 16) % 1.0) * 4))


# ---- painting ------------------------------------------------------------------------------------------------------
def paint(canvas: np.ndarray, mask: np.ndarray, cls: int, inside: Inside, box: tuple, colour: Colour) -> None:
    """Blend `colour` into `canvas` (H, W, 3 float) by the share of each pixel that `inside` covers within `box`
    (top, left, bottom, right, image coordinates); pixels covered at least half take class `cls` in `mask`."""
    top, left = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    bottom, right = min(canvas.shape[0], int(np.ceil(box[2]))), min(canvas.shape[1], int(np.ceil(box[3])))
    if bottom <= top or right <= left:
        return
    h, w, ss = bottom - top, right - left, SUPERSAMPLE
    ys = top + (np.arange(h * ss) + 0.5) / ss
    xs = left + (np.arange(w * ss) + 0.5) / ss
    cover = inside(*np.meshgrid(ys, xs, indexing="ij")).astype(np.float32).reshape(h, ss, w, ss).mean((1, 3))
    if not cover.any():
        return
    rgb = colour(*np.meshgrid(top + np.arange(h) + 0.5, left + np.arange(w) + 0.5, indexing="ij"))
    region = canvas[top:bottom, left:right]
    region += (np.clip(rgb, 0, 255) - region) * cover[..., None]
    mask[top:bottom, left:right][cover >= 0.5] = cls


def segment(p: tuple, q: tuple, width: float) -> Inside:
    """Points within width / 2 of the segment p-q ((y, x) each), round ends."""
    (py, px), (qy, qx) = p, q
    dy, dx = qy - py, qx - px
    length2 = max(dy * dy + dx * dx, 1e-9)

    def inside(y: np.ndarray, x: np.ndarray) -> np.ndarray:
        t = np.clip(((y - py) * dy + (x - px) * dx) / length2, 0, 1)
        return (y - py - t * dy) ** 2 + (x - px - t * dx) ** 2 <= (width / 2) ** 2

    return inside


def union(*shapes: Inside) -> Inside:
    return lambda y, x: np.logical_or.reduce([s(y, x) for s in shapes])


def disc(cy: float, cx: float, r: float) -> Inside:
    return lambda y, x: (y - cy) ** 2 + (x - cx) ** 2 <= r * r


def ring(cy: float, cx: float, r: float, thickness: float) -> Inside:
    return lambda y, x: np.abs(np.hypot(y - cy, x - cx) - r) <= thickness / 2


def triangle(points: np.ndarray) -> Inside:
    """Inside the triangle of three (y, x) points, either winding."""

    def inside(y: np.ndarray, x: np.ndarray) -> np.ndarray:
        edges = zip(points, np.roll(points, -1, 0))
        sides = np.stack([(x - a[1]) * (b[0] - a[0]) - (y - a[0]) * (b[1] - a[1]) for a, b in edges])
        return np.all(sides >= 0, 0) | np.all(sides <= 0, 0)

    return inside


def flat(rgb: np.ndarray, noise: float, rng: np.random.Generator) -> Colour:
    """One colour with per-pixel noise."""
    return lambda y, x: rgb + rng.normal(0, noise, (*y.shape, 3))


def hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(1.0, s), min(1.0, v))) * 255


def clothing(rng: np.random.Generator, darkest: float, lightest: float) -> np.ndarray:
    return hsv(rng.random(), rng.uniform(0, 0.7), rng.uniform(darkest, lightest))


# ---- the thin and rare objects ---------------------------------------------------------------------------------------
def draw_pole(canvas: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """A near-vertical metal strip; returns its top (y, x), where a sign may go."""
    width, height = rng.uniform(2, 6), rng.uniform(60, 300)
    yb, xb = rng.uniform(0.45, 1.05) * HEIGHT, rng.uniform(0, WIDTH)
    tilt = rng.uniform(-0.04, 0.04)  # x shift per pixel up
    yt, xt = yb - height, xb + tilt * height
    grey = rng.uniform(50, 215)
    tint = rng.normal(0, 10, 3)
    light = rng.choice([-1, 1]) * rng.uniform(0.1, 0.35)  # cylinder shading: lit from one side

    period, phase = rng.uniform(8, 30), rng.uniform(0, 2 * np.pi)

    def colour(y: np.ndarray, x: np.ndarray) -> np.ndarray:
        across = np.clip((x - (xb + tilt * (yb - y))) / (width / 2), -1, 1)
        along = 1 + 0.08 * np.sin(y / period + phase)  # dirt and reflections along the pole
        shade = (1 + light * across) * along
        return (grey + tint) * shade[..., None] + rng.normal(0, 5, (*y.shape, 3))

    pad = width + 2
    shape = segment((yb, xb), (yt, xt), width)
    paint(canvas, mask, POLE, shape, (yt - pad, min(xb, xt) - pad, yb + pad, max(xb, xt) + pad), colour)
    if rng.random() < 0.2:  # a street-light arm
        side, length, arm_w = rng.choice([-1, 1]), rng.uniform(15, 45), rng.uniform(1.5, 3.5)
        end = (yt + rng.uniform(-8, 4), xt + side * length)
        box = (min(yt, end[0]) - 4, min(xt, end[1]) - 4, max(yt, end[0]) + 4, max(xt, end[1]) + 4)
        paint(canvas, mask, POLE, segment((yt + 2, xt), end, arm_w), box, flat(grey + tint, 5, rng))
    return yt, xt


SIGN_HUES = (0.0, 0.6, 0.14, 0.35)  # red, blue, yellow, green families


def draw_sign(canvas: np.ndarray, mask: np.ndarray, rng: np.random.Generator, at: tuple | None) -> None:
    """A disc, rectangle or triangle with a border in one hue family; at a pole top `at` (y, x), or anywhere
    in the upper part of the frame."""
    size = rng.uniform(10, 28)
    cy, cx = (at[0], at[1]) if at else (rng.uniform(0.05, 0.7) * HEIGHT, rng.uniform(0, WIDTH))
    bright = rng.uniform(0.55, 1.15)
    hue = rng.choice(SIGN_HUES) + rng.normal(0, 0.02)
    strong = hsv(hue, rng.uniform(0.6, 0.95), rng.uniform(0.5, 0.95)) * bright
    white = hsv(rng.random(), rng.uniform(0, 0.1), rng.uniform(0.8, 1.0)) * bright
    outer, inner = (strong, white) if rng.random() < 0.6 else (white, strong)
    border = rng.uniform(1.2, max(1.3, size / 7))
    kind = rng.choice(["disc", "rect", "triangle"])
    if kind == "disc":
        r = size / 2
        shapes = (disc(cy, cx, r), disc(cy, cx, r - border))
    elif kind == "rect":
        hh, hw = size / 2 * rng.uniform(0.7, 1.0), size / 2 * rng.uniform(0.7, 1.3)

        def rect(inset: float) -> Inside:
            return lambda y, x: (np.abs(y - cy) <= hh - inset) & (np.abs(x - cx) <= hw - inset)

        shapes = (rect(0), rect(border))
    else:
        up = rng.choice([-1, 1])  # warning (apex up) or give-way (apex down)
        angles = -up * np.pi / 2 + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
        unit = np.stack([np.sin(angles), np.cos(angles)], 1)  # (y, x) of the corners, y down
        r = size / np.sqrt(3)  # circumradius of an equilateral triangle of side `size`
        inset = max(0.2, (r / 2 - border * 1.2) / (r / 2))  # shrink about the centre by the border's share
        shapes = (triangle(np.array([cy, cx]) + r * unit), triangle(np.array([cy, cx]) + r * inset * unit))
    box = (cy - size, cx - size, cy + size, cx + size)
    for shape, rgb in zip(shapes, (outer, inner)):
        paint(canvas, mask, SIGN, shape, box, flat(rgb, 4, rng))
    if rng.random() < 0.5:  # a symbol: a dark bar or dot
        sym = rng.uniform(0.15, 0.3) * size
        shape = disc(cy, cx, sym) if rng.random() < 0.5 else segment((cy, cx - 1.5 * sym), (cy, cx + 1.5 * sym), sym)
        paint(canvas, mask, SIGN, shape, box, flat(hsv(0, 0, rng.uniform(0.05, 0.3)) * bright, 4, rng))


def skin(rng: np.random.Generator) -> np.ndarray:
    return hsv(rng.uniform(0.02, 0.1), rng.uniform(0.25, 0.6), rng.uniform(0.3, 0.9))


def figure(yb: float, xb: float, height: float, rng: np.random.Generator) -> list[tuple[Inside, np.ndarray]]:
    """An upright pedestrian standing at (yb, xb): (shape, colour) of legs, torso, arms and head."""
    width = height / rng.uniform(2.6, 3.8)
    head_r = height * rng.uniform(0.07, 0.09)
    neck = yb - height + 2 * head_r
    hip = yb - height * rng.uniform(0.42, 0.5)
    stride = rng.uniform(0, 0.25) * width
    leg_w, body = width * rng.uniform(0.3, 0.42), clothing(rng, 0.08, 0.6)
    trousers = clothing(rng, 0.05, 0.45)
    lean = rng.normal(0, 0.04) * height
    legs = union(
        segment((hip, xb - width * 0.18), (yb - leg_w / 2, xb - width * 0.18 - stride), leg_w),
        segment((hip, xb + width * 0.18), (yb - leg_w / 2, xb + width * 0.18 + stride), leg_w),
    )
    torso = segment((neck + width * 0.35, xb + lean), (hip, xb), width)
    arm_w = leg_w * 0.75
    arms = union(
        segment((neck + arm_w, xb + lean - width * 0.45), (hip + 2, xb - width * 0.5 - stride * 0.5), arm_w),
        segment((neck + arm_w, xb + lean + width * 0.45), (hip + 2, xb + width * 0.5 + stride * 0.5), arm_w),
    )
    head = disc(neck - head_r, xb + lean, head_r)
    return [(legs, trousers), (torso, body), (arms, body), (head, skin(rng))]


def draw_pedestrian(canvas: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> None:
    height = rng.uniform(20, 70)
    yb, xb = rng.uniform(0.5, 1.0) * HEIGHT, rng.uniform(0, WIDTH)
    box = (yb - height - 2, xb - height / 2, yb + 2, xb + height / 2)
    bright = rng.uniform(0.6, 1.3)
    for shape, rgb in figure(yb, xb, height, rng):
        paint(canvas, mask, PEDESTRIAN, shape, box, flat(rgb * bright, 6, rng))


def draw_bicyclist(canvas: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> None:
    """A rider over two thin ring wheels and a frame, facing left or right."""
    r = rng.uniform(9, 22)  # wheel radius: the whole 45-120 px tall
    yb, x0 = rng.uniform(0.55, 1.0) * HEIGHT, rng.uniform(0, WIDTH)
    face = rng.choice([-1, 1])
    d = rng.uniform(2.5, 3.0) * r  # hub to hub

    def at(dx: float, dy: float) -> tuple[float, float]:  # offsets in wheel radii from the rear hub
        return yb - r - dy * r, x0 + face * dx * r

    k = d / r
    rear, front, crank, seat, bars = at(0, 0), at(k, 0), at(0.42 * k, 0), at(0.3 * k, 1.3), at(0.85 * k, 1.45)
    shoulder, knee = at(0.3 * k + 0.8, 3.0), at(0.5 * k, 1.9)
    tyre, frame_w = hsv(0, 0, rng.uniform(0.04, 0.25)), rng.uniform(1.4, 2.2)
    thickness = rng.uniform(1.5, 2.6)
    bright = rng.uniform(0.6, 1.3)
    body, trousers = clothing(rng, 0.08, 0.6), clothing(rng, 0.05, 0.45)
    parts = [
        (union(ring(*rear, r, thickness), ring(*front, r, thickness)), tyre),
        (union(*(segment(p, q, frame_w) for p, q in ((rear, crank), (crank, seat), (rear, seat), (seat, bars),
                                                       (bars, front), (crank, bars)))), hsv(rng.random(), 0.8, 0.8)),
        (union(segment(seat, knee, 0.5 * r), segment(knee, crank, 0.4 * r)), trousers),
        (segment(seat, shoulder, rng.uniform(0.9, 1.2) * r), body),
        (segment(shoulder, bars, 0.35 * r), body),
        (disc(shoulder[0] - 0.75 * r, shoulder[1] + face * 0.2 * r, 0.5 * r), skin(rng)),
    ]  # fmt: skip
    box = (yb - 6 * r, min(x0, front[1]) - 2 * r, yb + 2, max(x0, front[1]) + 2 * r)
    for shape, rgb in parts:
        paint(canvas, mask, BICYCLIST, shape, box, flat(rgb * bright, 5, rng))


def scene(photo: np.ndarray, rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    """One image and its mask: the photo crop's colour-binned superpixels, then poles (signs on some), free signs,
    pedestrians and, in about 15 % of the images, bicyclists painted over them."""
    image = _crop(photo, rng)
    mask = _mask(image, background_class)
    canvas = np.asarray(image, dtype=np.float32).copy()
    tops = [draw_pole(canvas, mask, rng) for _ in range(rng.integers(1, 5))]
    for top in tops:
        if rng.random() < 0.5:
            draw_sign(canvas, mask, rng, top)
    for _ in range(rng.integers(0, 4)):
        draw_sign(canvas, mask, rng, None)
    for _ in range(rng.integers(0, 6)):
        draw_pedestrian(canvas, mask, rng)
    if rng.random() < 0.15:
        for _ in range(rng.integers(1, 5)):
            draw_bicyclist(canvas, mask, rng)
    return Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8)), mask


# ---- the data set --------------------------------------------------------------------------------------------------
def write_thin_proxy(root: Path, seed: int = 0, splits: dict[str, int] = SPLITS) -> dict:
    """ROOT/{train,val}/{images,masks}/*.png and ROOT/proxy.json (settings, class names, pixels and images per
    class and split), which it returns; reused when ROOT/proxy.json holds the same settings."""
    manifest = root / "proxy.json"
    settings = {"seed": seed, "splits": splits, "class_names": list(CLASS_NAMES)}
    if manifest.exists():
        found = json.loads(manifest.read_text())
        if {k: found.get(k) for k in settings} != settings:
            sys.exit(f"{root} holds a proxy of other settings ({manifest}); give another --data folder")
        return found
    photos = _photos()
    rng = np.random.default_rng(seed)
    pixels, images = {}, {}
    for split, count in splits.items():
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        px, im = np.zeros(len(CLASS_NAMES), np.int64), np.zeros(len(CLASS_NAMES), np.int64)
        for i in range(count):
            image, mask = scene(photos[rng.integers(len(photos))], rng)
            image.save(root / split / "images" / f"{split}_{i:04d}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"{split}_{i:04d}.png")
            counts = np.bincount(mask.ravel(), minlength=len(CLASS_NAMES))
            px, im = px + counts, im + (counts > 0)
        pixels[split], images[split] = px.tolist(), im.tolist()
    found = {**settings, "pixels": pixels, "images": images}
    manifest.write_text(json.dumps(found, indent=1) + "\n")
    return found


def print_shares(proxy: dict) -> None:
    splits = list(proxy["pixels"])
    print("| class | " + " | ".join(f"{s} pixels | {s} share | {s} images" for s in splits) + " |")
    print("|---|" + "---:|---:|---:|" * len(splits))
    for c, name in enumerate(proxy["class_names"]):
        cells = []
        for s in splits:
            total = sum(proxy["pixels"][s])
            n = proxy["pixels"][s][c]
            cells.append(f"{n} | {100 * n / total:.2f} % | {proxy['images'][s][c]} / {proxy['splits'][s]}")
        print(f"| {name}{' *' if name in THIN else ''} | " + " | ".join(cells) + " |")
    print("(* thin / small / rare)")


# ---- --train -------------------------------------------------------------------------------------------------------
def train(root: Path, proxy: dict, out: Path, budget: str, overrides: list[str]) -> None:
    names = proxy["class_names"]
    flags = ["--run.budget", budget, "--data.class_names", json.dumps(names), *overrides]
    print(f"tools/train.py --config {RECIPE} --data.root {root} {shlex.join(flags)}", flush=True)
    seconds, run_dir, stderr = train_tool(RECIPE, root, out, *flags)
    m = metrics(run_dir)
    plan = next((line.split("budget plan: ", 1)[-1] for line in stderr.splitlines() if "budget plan" in line), "")
    print(f"\nwall time {seconds:.0f} s (whole process); run folder {run_dir}")
    print(f"budget plan: {plan}")
    done = {k: m[k] for k in ("stopped_by", "epochs_done", "steps_done") if k in m}
    print(f"done: {json.dumps(done)}")
    cm = np.asarray(m["confusion_matrix"])
    print(f"mIoU {m['miou']:.4f}; mIoU of the thin / rare classes {np.nanmean(iou_of(m, THIN)):.4f}\n")
    train_px = proxy["pixels"]["train"]
    print("| class | train pixels | train share | val pixels | predicted pixels | recall | IoU |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for c, name in enumerate(names):
        iou, recall = m["per_class_iou"].get(name), m["per_class_accuracy"].get(name)
        cells = [f"{train_px[c]}", f"{100 * train_px[c] / sum(train_px):.2f} %", f"{int(cm[c].sum())}",
                 f"{int(cm[:, c].sum())}", _fmt(recall), _fmt(iou)]  # fmt: skip
        print(f"| {name}{' *' if name in THIN else ''} | " + " | ".join(cells) + " |")
    print("(* thin / small / rare)")


def iou_of(m: dict, names: tuple[str, ...]) -> list[float]:
    return [np.nan if m["per_class_iou"].get(n) is None else m["per_class_iou"][n] for n in names]


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="proxy data folder, built there once and reused (default: a new temp folder)")
    p.add_argument("--seed", type=int, default=0, help="the data's seed")
    p.add_argument("--train-images", type=int, default=SPLITS["train"], help="a smaller set for a smoke run")
    p.add_argument("--val-images", type=int, default=SPLITS["val"])
    p.add_argument("--train", action="store_true", help="run the recipe on it and print the per-class IoU")
    p.add_argument("--budget", default="360s", help="--train: the run's run.budget")
    p.add_argument("--overrides", default="", help='--train: extra recipe flags, e.g. "--data.class_crops 0"')
    p.add_argument("--no-lock", action="store_true", help="do not take " + LOCK)
    args = p.parse_args()
    if not args.no_lock:
        hold_cpu_lock()
    tmp = Path(tempfile.mkdtemp(prefix="cvsuite-thin-"))
    root = Path(args.data) if args.data else tmp / "data"
    t0 = time.perf_counter()
    proxy = write_thin_proxy(root, args.seed, {"train": args.train_images, "val": args.val_images})
    print(f"proxy data: {root} ({time.perf_counter() - t0:.0f} s to build or find)\n", flush=True)
    print_shares(proxy)
    if args.train:
        print(flush=True)
        train(root, proxy, tmp / "runs", args.budget, shlex.split(args.overrides))


if __name__ == "__main__":
    main()
