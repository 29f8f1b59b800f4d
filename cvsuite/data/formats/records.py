"""What every detection format is read into: one `ImageRecord` per image, and the box checks they share."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cvsuite.data.common import DatasetError

FORMATS = ("coco", "voc", "yolo")
MAX_BOX_WARNINGS = 10
# A split's image and VOC XML folders: images/ + annotations/, or Pascal VOC as downloaded (JPEGImages/, Annotations/).
IMAGE_DIRS = ("images", "JPEGImages")
VOC_DIRS = ("annotations", "Annotations")


def image_dir(split: Path) -> Path:
    """``split/images`` (or VOC's ``split/JPEGImages``); ``split/images`` when neither exists."""
    return next((split / n for n in IMAGE_DIRS if (split / n).is_dir()), split / "images")


def voc_dir(split: Path) -> Path:
    """``split/annotations`` (or VOC's ``split/Annotations``)."""
    return next((split / n for n in VOC_DIRS if (split / n).is_dir()), split / "annotations")


@dataclass
class ImageRecord:
    """One image and its objects. boxes: (N, 4) float32 xyxy pixels; labels: (N,) int64 class indices; ignore:
    (N,) bool (VOC difficult / COCO iscrowd: neither found nor missed in evaluation, not trained on)."""

    path: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    ignore: np.ndarray
    image_id: int
    areas: np.ndarray | None = None  # (N,) object areas from the annotations (COCO segmentation); None = boxes


@dataclass
class Split:
    records: list[ImageRecord]
    class_names: list[str]
    category_ids: list[int]  # COCO category id of each class index (1..K for VOC/YOLO)
    format: str
    skipped: list[tuple[Path, str]] = field(default_factory=list)


# ---- boxes ---------------------------------------------------------------------------------------------------
class _BoxReport:
    """Collects clipped / dropped boxes of one split and warns once per box, up to a limit, then a count."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def add(self, message: str) -> None:
        self.messages.append(message)
        if len(self.messages) <= MAX_BOX_WARNINGS:
            warnings.warn(message, stacklevel=3)

    def flush(self, where: Path) -> None:
        extra = len(self.messages) - MAX_BOX_WARNINGS
        if extra > 0:
            warnings.warn(f"{where}: {extra} more boxes were clipped or dropped (see above for examples)", stacklevel=2)


def clean_boxes(
    boxes: np.ndarray, width: int, height: int, where: str, report: _BoxReport, min_size: float = 1.0
) -> np.ndarray:
    """Clip xyxy `boxes` to the image and return the mask of those to keep (not degenerate after clipping)."""
    boxes = boxes.reshape(-1, 4)
    keep = np.ones(len(boxes), bool)
    for i, box in enumerate(boxes):
        x1, y1, x2, y2 = box.tolist()
        clipped = np.clip(box, 0, [width, height, width, height])
        # Normalised YOLO coordinates come back with float round-off (-3e-7): clip that silently.
        if np.abs(clipped - box).max() > 0.01:
            report.add(
                f"{where}: box {i} [{x1:g}, {y1:g}, {x2:g}, {y2:g}] lies outside the {width}x{height} image; "
                f"clipped to {[round(float(v), 1) for v in clipped]}. Check the annotation if this is not expected."
            )
        boxes[i] = clipped
        bw, bh = boxes[i, 2] - boxes[i, 0], boxes[i, 3] - boxes[i, 1]
        if bw < min_size or bh < min_size:
            report.add(
                f"{where}: box {i} [{x1:g}, {y1:g}, {x2:g}, {y2:g}] is degenerate (width {bw:g}, height {bh:g} "
                f"< data.min_box_size {min_size:g} px); dropped. Fix or delete the annotation."
            )
            keep[i] = False
    return keep


def _record(path, width, height, boxes, labels, ignore, image_id, where, report, min_size, areas=None) -> ImageRecord:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    keep = clean_boxes(boxes, width, height, where, report, min_size)
    areas = None if areas is None else np.asarray(areas, np.float32).reshape(-1)[keep]
    return ImageRecord(
        Path(path),
        int(width),
        int(height),
        boxes[keep],
        np.asarray(labels, np.int64).reshape(-1)[keep],
        np.asarray(ignore, bool).reshape(-1)[keep],
        int(image_id),
        areas,
    )


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            return img.size
    except OSError as err:
        raise DatasetError(f"{path}: cannot read image ({err}). Replace or delete the file.") from err


def _class_index(names: list[str], name: str, where: str) -> int:
    if name not in names:
        raise DatasetError(
            f"{where}: unknown class '{name}'; this model's classes are {names}. Fix the label, or train with "
            "these classes (data.class_names)."
        )
    return names.index(name)
