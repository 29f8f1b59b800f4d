"""Semantic segmentation metrics from one confusion matrix accumulated over the whole split (not averaged per
batch or per image), so validation and tools/eval.py give the same numbers for the same predictions.

Conventions (those of mmsegmentation and the Cityscapes/VOC benchmarks):
- pixels whose truth is ``ignore_index`` are left out of everything;
- a class with no pixels in the truth *and* none in the prediction has no IoU/Dice (``None`` in the JSON) and is
  left out of the means; a class absent from the truth but predicted somewhere has IoU 0 and counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int | None = None
) -> torch.Tensor:
    """(C, C) int64 counts, rows = truth, columns = prediction.

    Args:
        pred: (...) predicted class ids in [0, C).
        target: (...) true class ids in [0, C), or `ignore_index`.
    Raises:
        ValueError: a target value is neither a class nor `ignore_index` (the data checks should have caught it).
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    if ignore_index is not None:
        keep = target != ignore_index
        pred, target = pred[keep], target[keep]
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        bad = torch.unique(target[(target < 0) | (target >= num_classes)]).tolist()
        raise ValueError(f"target values {bad} are not classes 0..{num_classes - 1} nor ignore_index {ignore_index}")
    return torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _nanmean(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else None


def _json(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in values]


def summarize(matrix: np.ndarray | torch.Tensor, class_names: Sequence[str]) -> dict[str, Any]:
    """The metric dict of a (C, C) confusion matrix (rows = truth).

    Returns:
        miou, dice (mean over classes present in truth or prediction), pixel_accuracy (correct / labelled
        pixels), mean_accuracy (mean per-class recall over classes present in the truth), per_class_iou and
        per_class_dice ({name: value or None}), per_class_accuracy, confusion_matrix (list of lists), class_names,
        num_pixels. Every value is JSON-serialisable.
    """
    cm = np.asarray(matrix.cpu() if isinstance(matrix, torch.Tensor) else matrix, dtype=np.float64)
    names = list(class_names)
    if cm.shape != (len(names), len(names)):
        raise ValueError(f"confusion matrix {cm.shape} does not fit {len(names)} class names")
    tp = np.diag(cm)
    truth = cm.sum(1)
    predicted = cm.sum(0)
    iou = _safe_ratio(tp, truth + predicted - tp)
    dice = _safe_ratio(2 * tp, truth + predicted)
    recall = _safe_ratio(tp, truth)
    total = cm.sum()
    return {
        "miou": _nanmean(iou),
        "dice": _nanmean(dice),
        "pixel_accuracy": float(tp.sum() / total) if total else None,
        "mean_accuracy": _nanmean(recall),
        "per_class_iou": dict(zip(names, _json(iou))),
        "per_class_dice": dict(zip(names, _json(dice))),
        "per_class_accuracy": dict(zip(names, _json(recall))),
        "confusion_matrix": cm.astype(np.int64).tolist(),
        "class_names": names,
        "num_pixels": int(total),
    }


class SegmentationMetrics(Metric):
    """Accumulates the confusion matrix over a split; summed across processes under DDP.

    ``update(pred, target)`` takes class ids of the same shape; ``compute()`` returns the `summarize` dict.
    """

    full_state_update = False

    def __init__(self, class_names: Sequence[str], ignore_index: int | None = None) -> None:
        super().__init__()
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.ignore_index = ignore_index
        self.add_state(
            "matrix", default=torch.zeros(self.num_classes, self.num_classes, dtype=torch.long), dist_reduce_fx="sum"
        )

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.matrix += confusion_matrix(pred, target, self.num_classes, self.ignore_index).to(self.matrix.device)

    def compute(self) -> dict[str, Any]:
        return summarize(self.matrix, self.class_names)
