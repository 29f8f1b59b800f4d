"""Classification metrics, one code path for validation and tools/eval.py (torchmetrics' functional API over
the probabilities and targets of the whole split)."""

from __future__ import annotations

from typing import Any

import torch
import torchmetrics.functional.classification as C


class ClassificationMetrics:
    """Accumulates (N, C) probabilities and targets; `compute` gives the JSON metric dict.

    Keys: accuracy, precision, recall, f1 (macro), auroc, average_precision (PR-AUC, macro), per_class
    {name: {precision, recall, f1, average_precision, support}}, confusion_matrix (rows = truth), and
    class_names. Multi-label: accuracy is per-label accuracy (macro), the confusion matrix is (C, 2, 2).
    """

    def __init__(self, class_names: list[str], multilabel: bool = False) -> None:
        self.class_names = list(class_names)
        self.num_classes = len(class_names)
        self.multilabel = multilabel
        self.reset()

    def reset(self) -> None:
        self.probs: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    def update(self, probs: torch.Tensor, targets: torch.Tensor) -> None:
        """probs: (N, C) softmax (or sigmoid) scores; targets: (N,) class ids or (N, C) multi-hot."""
        self.probs.append(probs.detach().float().cpu())
        self.targets.append(targets.detach().cpu())

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat(self.probs), torch.cat(self.targets)

    def _kw(self) -> dict[str, Any]:
        if self.multilabel:
            return {"task": "multilabel", "num_labels": self.num_classes}
        return {"task": "multiclass", "num_classes": self.num_classes}

    def compute(self) -> dict[str, Any]:
        if not self.probs:
            return {}
        probs, target = self.tensors()
        if self.multilabel:
            target = target.long()
        kw = self._kw()

        def scalar(fn, **extra) -> float:
            return float(fn(probs, target, average="macro", **kw, **extra))

        def per_class(fn) -> list[float]:
            return [float(x) for x in fn(probs, target, average="none", **kw)]

        out: dict[str, Any] = {
            "accuracy": scalar(C.accuracy)
            if self.multilabel
            else float(C.accuracy(probs, target, average="micro", **kw)),
            "precision": scalar(C.precision),
            "recall": scalar(C.recall),
            "f1": scalar(C.f1_score),
            "auroc": self._ranking(C.auroc, probs, target),
            "average_precision": self._ranking(C.average_precision, probs, target),
            "num_samples": int(probs.shape[0]),
        }
        columns = {
            "precision": per_class(C.precision),
            "recall": per_class(C.recall),
            "f1": per_class(C.f1_score),
            "average_precision": self._ranking(C.average_precision, probs, target, average="none"),
        }
        support = target.sum(0) if self.multilabel else torch.bincount(target, minlength=self.num_classes)
        out["per_class"] = {
            name: {**{k: v[i] for k, v in columns.items()}, "support": int(support[i])}
            for i, name in enumerate(self.class_names)
        }
        out["confusion_matrix"] = C.confusion_matrix(probs, target, **kw).tolist()
        out["class_names"] = self.class_names
        return out

    def _ranking(self, fn, probs, target, average: str = "macro"):
        """AUROC/AP are undefined for a class with no positives; torchmetrics warns and counts it as 0 —
        we leave such classes out of the macro mean instead and report them as null."""
        values = fn(probs, target, average="none", **self._kw())
        present = (target.sum(0) if self.multilabel else torch.bincount(target, minlength=self.num_classes)) > 0
        values = [float(v) if ok else None for v, ok in zip(values, present.tolist())]
        if average == "none":
            return values
        valid = [v for v in values if v is not None]
        return sum(valid) / len(valid) if valid else None

    def pr_curves(self) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """Per class (name, precision, recall) for plotting."""
        probs, target = self.tensors()
        if self.multilabel:
            target = target.long()
        precision, recall, _ = C.precision_recall_curve(probs, target, **self._kw())
        return list(zip(self.class_names, precision, recall))
