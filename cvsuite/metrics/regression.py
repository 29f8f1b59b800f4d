"""Regression metrics, one code path for validation and tools/eval.py: a torchmetrics `Metric` holding the
predictions and targets of the whole split (gathered from every process under DDP, duplicates dropped by dataset
index) and scoring them once: MAE, RMSE and R² per target and averaged over targets."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from cvsuite.metrics.classification import UNKNOWN_INDEX, dedup_order


def regression_metrics(pred: np.ndarray, true: np.ndarray, names: list[str]) -> dict[str, Any]:
    """MAE, RMSE and R² per target and averaged over targets. pred, true: (N, T) in target units."""
    err = pred - true
    mae = np.abs(err).mean(0)
    rmse = np.sqrt((err**2).mean(0))
    ss_tot = ((true - true.mean(0)) ** 2).sum(0)
    r2 = np.where(ss_tot > 0, 1 - (err**2).sum(0) / np.maximum(ss_tot, 1e-12), np.nan)
    # R² is undefined for a constant target: NaN here (null in metrics.json), averaged over the targets that have
    # one, without numpy's "Mean of empty slice" warning when none has.
    defined = r2[~np.isnan(r2)]
    r2_mean = float(defined.mean()) if defined.size else float("nan")
    out: dict[str, Any] = {"mae": float(mae.mean()), "rmse": float(rmse.mean()), "r2": r2_mean}
    out["per_target"] = {
        n: {"mae": float(a), "rmse": float(b), "r2": None if np.isnan(c) else float(c)}
        for n, a, b, c in zip(names, mae, rmse, r2)
    }
    out["num_samples"] = int(len(true))
    return out


class RegressionMetrics(Metric):
    """Accumulates (N, T) predictions and targets in target units; `compute` gives the JSON metric dict
    (`regression_metrics` plus ``target_names``)."""

    full_state_update = False

    def __init__(self, target_names: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.target_names = list(target_names)
        for name in ("preds", "targets", "indices"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, preds: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor | None = None) -> None:
        if indices is None:
            indices = torch.full((preds.shape[0],), UNKNOWN_INDEX, dtype=torch.long)
        self.preds.append(preds.detach().double())
        self.targets.append(targets.detach().double())
        self.indices.append(torch.as_tensor(indices, dtype=torch.long).to(preds.device))

    def values(self) -> tuple[np.ndarray, np.ndarray]:
        """(predictions, targets) of the unique samples in dataset order, as (N, T) arrays."""
        preds, targets, indices = (dim_zero_cat(x).cpu() for x in (self.preds, self.targets, self.indices))
        order = dedup_order(indices)
        t = len(self.target_names)
        return preds[order].reshape(-1, t).numpy(), targets[order].reshape(-1, t).numpy()

    def compute(self) -> dict[str, Any]:
        if isinstance(self.preds, list) and not self.preds:
            return {}
        pred, true = self.values()
        return {**regression_metrics(pred, true, self.target_names), "target_names": self.target_names}
