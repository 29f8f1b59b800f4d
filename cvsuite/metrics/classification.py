"""Classification metrics, one code path for validation and tools/eval.py: a torchmetrics `Metric` that keeps the
probabilities and targets of the whole split (gathered from every process under DDP) and scores them once with
torchmetrics' functional API."""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torchmetrics.functional.classification as C
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

UNKNOWN_INDEX = -1  # a sample without a dataset position: never treated as a duplicate


def keep_first(indices: torch.Tensor) -> torch.Tensor:
    """Boolean mask that keeps the first occurrence of every index >= 0 (and every `UNKNOWN_INDEX`).

    A distributed sampler pads the split so each process gets as many samples: the padded copies carry the index
    of a sample seen elsewhere and must not be counted twice."""
    keep = torch.ones(len(indices), dtype=torch.bool, device=indices.device)
    seen: set[int] = set()
    for i, idx in enumerate(indices.tolist()):
        if idx == UNKNOWN_INDEX:
            continue
        if idx in seen:
            keep[i] = False
        seen.add(idx)
    return keep


def dedup_order(indices: torch.Tensor) -> torch.Tensor:
    """Positions of the unique samples, in dataset order (samples without an index last, in arrival order), so
    gathered results are scored in the same order as in one process."""
    positions = torch.nonzero(keep_first(indices)).flatten()
    idx = indices[positions].double()
    idx[idx == UNKNOWN_INDEX] = float("inf")
    return positions[torch.sort(idx, stable=True).indices]


class ClassificationMetrics(Metric):
    """Accumulates (N, C) probabilities and targets; `compute` gives the JSON metric dict.

    Keys: accuracy, precision, recall, f1 (macro), auroc, average_precision (PR-AUC, macro), per_class
    {name: {precision, recall, f1, average_precision, support}}, confusion_matrix (rows = truth), class_names and
    num_samples. Multi-label: accuracy is per-label accuracy (macro), the confusion matrix is (C, 2, 2).

    A class absent from the split (no true samples, or no positives for a label) has no recall, F1, AP or AUROC:
    its per-class values are ``None`` and it is left out of the macro means (its precision too, so every macro mean
    is over the same classes). Predictions into such a class still count against accuracy and show in the
    confusion matrix.

    Under DDP the states are concatenated across processes before `compute`; samples whose dataset index was
    already seen (a distributed sampler's padding) are dropped, so N processes give the one-process numbers.
    """

    full_state_update = False

    def __init__(self, class_names: list[str], multilabel: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.class_names = list(class_names)
        self.num_classes = len(class_names)
        self.multilabel = multilabel
        self.add_state("probs", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")
        self.add_state("indices", default=[], dist_reduce_fx="cat")
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, probs: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor | None = None) -> None:
        """probs: (N, C) softmax (or sigmoid) scores; targets: (N,) class ids or (N, C) multi-hot; indices: (N,)
        dataset positions of the samples (for dropping duplicates), or None."""
        if indices is None:
            indices = torch.full((probs.shape[0],), UNKNOWN_INDEX, dtype=torch.long)
        self.probs.append(probs.detach().float())
        self.targets.append(targets.detach().long())
        self.indices.append(torch.as_tensor(indices, dtype=torch.long).to(probs.device))

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(probs, targets) of the unique samples in dataset order; those of the last `compute` when it ran."""
        if self._last is not None:
            return self._last
        return self._tensors()

    def _tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        probs, targets, indices = (dim_zero_cat(x).cpu() for x in (self.probs, self.targets, self.indices))
        order = dedup_order(indices)
        return probs[order], targets[order]

    def reset(self) -> None:
        super().reset()
        self._last = None

    def _kw(self) -> dict[str, Any]:
        if self.multilabel:
            return {"task": "multilabel", "num_labels": self.num_classes}
        return {"task": "multiclass", "num_classes": self.num_classes}

    def _support(self, target: torch.Tensor) -> torch.Tensor:
        return target.sum(0) if self.multilabel else torch.bincount(target, minlength=self.num_classes)

    def compute(self) -> dict[str, Any]:
        if isinstance(self.probs, list) and not self.probs:
            return {}
        with warnings.catch_warnings():
            # torchmetrics warns about classes without positives; they are reported as null here instead.
            warnings.filterwarnings("ignore", message=".*(positive|negative) samples", category=UserWarning)
            return self._compute()

    def _compute(self) -> dict[str, Any]:
        probs, target = self._last = self._tensors()
        kw = self._kw()
        present = (self._support(target) > 0).tolist()

        def per_class(fn) -> list[float | None]:
            values = fn(probs, target, average="none", **kw)
            return [float(v) if ok else None for v, ok in zip(values, present)]

        columns = {
            "precision": per_class(C.precision),
            "recall": per_class(C.recall),
            "f1": per_class(C.f1_score),
            "average_precision": per_class(C.average_precision),
        }
        out: dict[str, Any] = {
            "accuracy": float(C.accuracy(probs, target, average="macro", **kw))
            if self.multilabel
            else float(C.accuracy(probs, target, average="micro", **kw)),
            "precision": _mean(columns["precision"]),
            "recall": _mean(columns["recall"]),
            "f1": _mean(columns["f1"]),
            "auroc": _mean(per_class(C.auroc)),
            "average_precision": _mean(columns["average_precision"]),
            "num_samples": int(probs.shape[0]),
        }
        support = self._support(target)
        out["per_class"] = {
            name: {**{k: v[i] for k, v in columns.items()}, "support": int(support[i])}
            for i, name in enumerate(self.class_names)
        }
        out["confusion_matrix"] = C.confusion_matrix(probs, target, **kw).tolist()
        out["class_names"] = self.class_names
        return out

    def pr_curves(self) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """Per class (name, precision, recall) for plotting."""
        probs, target = self.tensors()
        precision, recall, _ = C.precision_recall_curve(probs, target, **self._kw())
        return list(zip(self.class_names, precision, recall))


def _mean(values: list[float | None]) -> float | None:
    """Macro mean over the classes that have a value; None when none has."""
    valid = [v for v in values if v is not None]
    return sum(valid) / len(valid) if valid else None
