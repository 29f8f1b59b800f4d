"""PNG figures a person looks at after a run: curves, confusion matrix, PR curves, image grids, and the task
figures (boxes drawn on images, segmentation colours and mosaics, GAN curves). Tasks call these; none draws."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # no display on servers; set before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from cvsuite.data.common import read_image  # noqa: E402

if TYPE_CHECKING:
    import torch


def read_metrics_csv(path: Path) -> dict[str, list[float]]:
    """Columns of metrics.csv as float lists (blank cells are NaN)."""
    with Path(path).open() as fh:
        rows = list(csv.DictReader(fh))
    cols: dict[str, list[float]] = {}
    for row in rows:
        for k, v in row.items():
            cols.setdefault(k, []).append(float(v) if v not in ("", None) else math.nan)
    return cols


def curves_plot(metrics_csv: Path, out: Path) -> Path:
    """One figure: train and validation loss on one axis (over-fitting shows as the gap opening), the
    validation metrics on a second, the learning rate on a third, all against epoch."""
    cols = read_metrics_csv(metrics_csv)
    epochs = cols.get("epoch", [])
    metric_keys = [k for k in cols if k.startswith("val_") and k != "val_loss"]
    metric_keys += [k for k in cols if k.startswith("train_") and k != "train_loss"]
    loss_keys = [k for k in cols if k.endswith("loss") and k not in ("train_loss", "val_loss")]
    panels = [("loss", ["train_loss", "val_loss", *loss_keys]), ("validation metrics", metric_keys), ("lr", ["lr"])]
    panels = [
        (title, [k for k in keys if k in cols and k not in (loss_keys if title != "loss" else ())])
        for title, keys in panels
    ]
    panels = [(title, keys) for title, keys in panels if keys]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels):
        for key in keys:
            # Epochs without a value (validation every k epochs) are skipped, not drawn as gaps in the line.
            points = [(e, v) for e, v in zip(epochs, cols[key]) if not math.isnan(v)]
            ax.plot([e for e, _ in points], [v for _, v in points], "o-", label=key, markersize=3)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def confusion_matrix_plot(matrix: Sequence[Sequence[int]], names: Sequence[str], out: Path) -> Path:
    cm = np.asarray(matrix)
    size = max(4.0, 0.45 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(names) <= 30:
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                color = "white" if cm[i, j] > cm.max() / 2 else "black"
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=color, fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def pr_curve_plot(curves: Sequence[tuple[str, object, object]], out: Path, max_classes: int = 20) -> Path:
    """curves: (name, precision, recall) per class."""
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for name, precision, recall in list(curves)[:max_classes]:
        ax.plot(np.asarray(recall), np.asarray(precision), label=str(name))
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def image_grid(images: Sequence[np.ndarray], captions: Sequence[str], out: Path, cols: int = 8) -> Path:
    """HWC uint8 images in a grid with a caption under each."""
    n = max(1, len(images))
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, captions):
        ax.imshow(image)
        ax.set_title(caption, fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


# ---- detection ----------------------------------------------------------------------------------------------------
COLOURS = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
)


def draw_boxes(
    image: np.ndarray,
    boxes: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    class_names: list[str],
    scores: np.ndarray | torch.Tensor | None = None,
) -> np.ndarray:
    """HWC uint8 image with xyxy `boxes` outlined in the colour of their class and captioned 'name score'."""
    img = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(img)
    width = max(1, round(max(img.size) / 250))
    for i, (box, label) in enumerate(zip(np.asarray(boxes).tolist(), np.asarray(labels).tolist())):
        colour = COLOURS[int(label) % len(COLOURS)]
        draw.rectangle(box, outline=colour, width=width)
        text = class_names[int(label)] + (f" {float(scores[i]):.2f}" if scores is not None else "")
        x, y = box[0], max(0, box[1] - 11)
        draw.rectangle(draw.textbbox((x, y), text), fill=colour)
        draw.text((x, y), text, fill=(255, 255, 255))
    return np.asarray(img)


def map_plot(cols: dict[str, list[float]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 3.8))
    for key in ("val_map", "val_map_50", "val_map_75"):
        if key in cols:
            ax.plot(cols["epoch"], cols[key], "o-", markersize=3, label=key.removeprefix("val_"))
    ax.set_xlabel("epoch")
    ax.set_ylabel("COCO AP")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ---- segmentation -------------------------------------------------------------------------------------------------
def palette(num_classes: int) -> np.ndarray:
    """(C, 3) uint8, PASCAL VOC's colour map (class 0 black, 1 dark red, 2 green, ...): familiar to most users."""
    colours = np.zeros((num_classes, 3), dtype=np.uint8)
    for i in range(num_classes):
        c, r, g, b = i, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colours[i] = (r, g, b)
    return colours


def colorize(mask: np.ndarray, colours: np.ndarray, ignore_index: int | None = None) -> np.ndarray:
    """(H, W) ids -> (H, W, 3) uint8; ignored pixels white."""
    out = colours[np.clip(mask, 0, len(colours) - 1)]
    if ignore_index is not None:
        out[mask == ignore_index] = 255
    return out


def overlay(image: np.ndarray, mask: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Class colours blended over the image; class 0 (background in nearly every dataset) is left untinted."""
    out = image.astype(np.float32).copy()
    tint = mask > 0
    out[tint] = (1 - alpha) * out[tint] + alpha * colours[mask[tint]].astype(np.float32)
    return out.round().astype(np.uint8)


def per_class_iou_plot(per_class: dict[str, float | None], out: Path) -> Path:
    names = list(per_class)
    values = [np.nan if v is None else v for v in per_class.values()]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.4 * len(names) + 2), 3.6))
    ax.bar(range(len(names)), values, color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("IoU")
    ax.set_title(f"per-class IoU (mIoU {np.nanmean(values):.3f})" if not np.isnan(values).all() else "per-class IoU")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def mosaic_plot(
    examples: list[tuple[str, np.ndarray, np.ndarray]], colours: np.ndarray, ignore_index: int, out: Path
) -> Path:
    """One row per example: image, truth, prediction."""
    fig, axes = plt.subplots(len(examples), 3, figsize=(9, 3 * len(examples)), squeeze=False)
    for row, (path, truth, pred) in zip(axes, examples):
        image = np.asarray(Image.fromarray(read_image(path)).resize(truth.shape[::-1], Image.BILINEAR))
        for ax, panel, title in zip(
            row,
            (image, colorize(truth, colours, ignore_index), colorize(pred, colours)),
            (Path(path).name, "truth", "prediction"),
        ):
            ax.imshow(panel)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


# ---- generation ---------------------------------------------------------------------------------------------------
def gan_curves_plot(metrics_csv: Path, out: Path) -> Path:
    """G and D losses, FID (and KID) and the discriminator's mean logits on reals and fakes, per epoch."""
    cols = read_metrics_csv(metrics_csv)
    epochs = cols.get("epoch", [])
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    panels = [
        ("G / D loss", ["train_g_loss", "train_d_loss"]),
        ("FID (left), KID (right)", ["val_fid"]),
        ("D logits", ["train_d_real", "train_d_fake"]),
    ]
    for ax, (title, keys) in zip(axes, panels):
        for key in keys:
            if key in cols:
                ax.plot(epochs, cols[key], "o-", markersize=3, label=key)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    if "val_kid" in cols:
        twin = axes[1].twinx()
        twin.plot(epochs, cols["val_kid"], "s--", color="tab:orange", markersize=3, label="val_kid")
        twin.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
