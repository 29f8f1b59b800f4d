"""The dataset doctor: read a recipe's data the way training will and report what a person can act on before an
hour of training: images and objects (or pixels) per class and split, image sizes, imbalance, unreadable or
truncated files, orphan labels, images without labels, bad boxes, mask values that are no class, the same file in
train and val. ``cvsuite check`` prints the table; training runs a quick version (no full decode) first.

Also here: the ground truth of a detection validation split as COCO JSON (``eval --predictions``), whatever the
data's own format, so outside COCO tools can map the results' ``image_id`` back to files.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cvsuite.data.common import DatasetError, check_image, list_images
from cvsuite.tasks import get_spec

IMBALANCE_RATIO = 5.0  # most / least frequent class above this: suggest class weights or focal loss


@dataclass
class Item:
    """One image of a split and its truth: class ids (one per image or per object); boxes for detection."""

    path: Path
    classes: list[int] = field(default_factory=list)
    boxes: np.ndarray | None = None
    mask: Path | None = None


@dataclass
class Report:
    task: str
    class_names: list[str] = field(default_factory=list)
    splits: dict[str, list[Item]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was read, e.g. "splits from data.yaml: train 142, ..."
    counts: dict[str, Counter] = field(default_factory=dict)  # split -> class id -> images/objects/pixels
    unit: str = "images"
    quick: bool = False  # headers only, no mask scan: the check at the start of training
    sizes: dict[str, tuple[tuple[int, int], tuple[int, int], tuple[int, int]]] = field(default_factory=dict)

    def table(self) -> str:
        lines = [f"dataset check ({self.task})"]
        lines += [f"  {n}" for n in self.notes]
        if self.class_names and self.counts:
            splits = list(self.counts)
            width = max(10, *(len(n) for n in self.class_names))
            lines.append(f"  {self.unit} per class:")
            lines.append(f"    {'class':<{width}} " + " ".join(f"{s:>10}" for s in splits))
            for i, name in enumerate(self.class_names):
                lines.append(f"    {name:<{width}} " + " ".join(f"{self.counts[s].get(i, 0):>10}" for s in splits))
        for split, items in self.splits.items():
            line = f"  {split}: {len(items)} images"
            if split in self.sizes:
                lo, med, hi = self.sizes[split]
                line += f", sizes (w x h) min {lo[0]}x{lo[1]}, median {med[0]}x{med[1]}, max {hi[0]}x{hi[1]}"
            lines.append(line)
        lines += [f"  warning: {w}" for w in self.warnings]
        lines += [f"  ERROR: {e}" for e in self.errors]
        if not self.errors and not self.warnings:
            lines.append("  no problems found")
        return "\n".join(lines)


class _Collect(logging.Handler):
    """The data readers' own warnings (skipped boxes, unused masks) become report lines."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


# ---- reading the splits: each task's own reader (`TaskSpec.read_dataset`) -----------------------------------
def data_root(cfg: Any) -> Path:
    """data.root as a folder that exists, or a DatasetError naming it."""
    if not cfg.data.root:
        raise DatasetError("data.root is not set: give --data.root ROOT")
    root = Path(cfg.data.root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"data.root {root}: folder not found")
    return root


def _every_image(cfg: Any, report: Report) -> None:
    """A task without its own reader (generation): every image under data.root is one training split."""
    report.splits["train"] = [Item(p) for p in list_images(data_root(cfg))]


# ---- the checks ---------------------------------------------------------------------------------------------
def check_dataset(cfg: Any, quick: bool = False) -> Report:
    """Read and check the recipe's data. `quick`: image headers only (no full decode), for the start of training."""
    report = Report(cfg.task, quick=quick)
    collect = _Collect()
    logger = logging.getLogger("cvsuite")
    logger.addHandler(collect)
    try:
        with warnings.catch_warnings(record=True) as caught:  # the readers warn about clipped / dropped boxes
            warnings.simplefilter("always", UserWarning)
            (get_spec(cfg.task).read_dataset or _every_image)(cfg, report)
    except DatasetError as err:
        report.errors.append(str(err))
        return report
    finally:
        logger.removeHandler(collect)
    report.warnings += collect.messages + [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    _check_images(report, quick)
    if not report.counts:
        report.counts = _class_counts(report)
    _check_balance(report)
    _check_boxes(report)
    _check_overlap(report)
    return report


def _check_images(report: Report, quick: bool) -> None:
    for split, items in report.splits.items():
        sizes, bad = [], []
        for item in items:
            reason = check_image(item.path, decode=not quick)  # quick: the header (mode F, size) only
            if reason is None:
                try:
                    with Image.open(item.path) as img:
                        sizes.append(img.size)
                except Exception as err:  # PIL raises several types for broken headers
                    reason = str(err)
            if reason is not None:
                bad.append(f"{item.path} ({reason})")
        if bad:
            report.errors.append(f"{split}: {len(bad)} unreadable or truncated image(s): " + "; ".join(bad[:5]))
        if sizes:
            arr = np.array(sizes)
            order = np.argsort(arr.prod(1))
            report.sizes[split] = (tuple(arr[order[0]]), tuple(arr[order[len(order) // 2]]), tuple(arr[order[-1]]))


def _class_counts(report: Report) -> dict[str, Counter]:
    return {s: Counter(c for item in items for c in item.classes) for s, items in report.splits.items()}


def _check_balance(report: Report) -> None:
    if not report.class_names or "train" not in report.counts:
        return
    train = report.counts["train"]
    counts = [train.get(i, 0) for i in range(len(report.class_names))]
    missing = [report.class_names[i] for i, c in enumerate(counts) if c == 0]
    if missing:
        report.warnings.append(f"no training {report.unit} for class(es) {', '.join(missing)}")
    present = [c for c in counts if c > 0]
    if len(present) > 1 and max(present) / min(present) > IMBALANCE_RATIO:
        hint = "model.class_weights: balanced, or model.loss: focal"
        report.warnings.append(
            f"classes are imbalanced ({max(present) / min(present):.0f}:1 in train); consider {hint}"
        )
    for split, c in report.counts.items():
        if split != "train" and report.unit != "pixels":
            absent = [report.class_names[i] for i in range(len(report.class_names)) if not c.get(i)]
            if absent:
                report.warnings.append(f"{split} has no {report.unit} of class(es) {', '.join(absent)}")


def _check_boxes(report: Report) -> None:
    for split, items in report.splits.items():
        empty = [i.path.name for i in items if i.boxes is not None and len(i.boxes) == 0]
        if empty:
            how = "trained as background" if split == "train" else "no objects to find"
            report.warnings.append(f"{split}: {len(empty)} image(s) without objects ({how}): {', '.join(empty[:5])}")


def _check_overlap(report: Report) -> None:
    """Val and test images whose bytes equal a train image's (or a test image's a val one's); only files of a size
    found in both splits are hashed."""

    def size(p: Path) -> int:
        try:
            return p.stat().st_size
        except OSError:
            return -1

    for first, second in (("train", "val"), ("train", "test"), ("val", "test")):
        if first not in report.splits or second not in report.splits:
            continue
        a, b = report.splits[first], report.splits[second]
        shared = {size(i.path) for i in a} & {size(i.path) for i in b}
        digests: dict[str, Path] = {}
        for item in a:
            if size(item.path) in shared:
                digests.setdefault(_digest(item.path), item.path)
        same = [(digests[d], i.path) for i in b if size(i.path) in shared and (d := _digest(i.path)) in digests]
        if same:
            shown = "; ".join(f"{x} = {y}" for x, y in same[:5])
            report.errors.append(f"{len(same)} {second} image(s) are also in {first} (same bytes): {shown}")


def _digest(path: Path) -> str:
    try:
        return hashlib.md5(path.read_bytes()).hexdigest()
    except OSError:
        return f"unreadable:{path}"


# ---- detection ground truth as COCO JSON --------------------------------------------------------------------
def ground_truth_path(predictions: str | Path) -> Path:
    """Where the truth of a predictions file goes: ``<stem>_gt.json`` beside it."""
    return Path(predictions).with_name(Path(predictions).stem + "_gt.json")


def write_ground_truth(dm: Any, class_names: list[str], predictions: str | Path) -> Path:
    """Detection: the scored split's truth (``dm.val_set``, the datamodule eval built and scored) as COCO JSON at
    `ground_truth_path` (written atomically), with the image ids and category ids the predictions file uses and
    each image's file name relative to data.root."""
    from cvsuite.outputs import write_json

    root = dm.root or Path(".").resolve()
    names = list(class_names)
    cat_ids = list(getattr(dm, "category_ids", None) or range(1, len(names) + 1))
    images, annotations = [], []
    for r in dm.val_set.records:
        try:
            file_name = r.path.resolve().relative_to(root).as_posix()
        except ValueError:
            file_name = str(r.path)
        images.append({"id": int(r.image_id), "file_name": file_name, "width": r.width, "height": r.height})
        for box, label, ignore in zip(r.boxes.tolist(), r.labels.tolist(), r.ignore.tolist()):
            x1, y1, x2, y2 = box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": int(r.image_id),
                    "category_id": int(cat_ids[label]),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": int(ignore),
                }
            )
    gt = {"images": images, "annotations": annotations,
          "categories": [{"id": int(c), "name": n} for c, n in zip(cat_ids, names)]}  # fmt: skip
    return write_json(ground_truth_path(predictions), gt, indent=None)


def summarise_counts(report: Report) -> dict[str, dict[str, int]]:
    """split -> class name -> count, for tests and scripts."""
    return {s: {report.class_names[k]: v for k, v in c.items()} for s, c in report.counts.items()}
