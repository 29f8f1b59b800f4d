"""PNG figures a person looks at after a run: curves, confusion matrix, PR curves, image grids."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers; set before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


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
            ax.plot(epochs, cols[key], "o-", label=key, markersize=3)
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
