"""The Lightning Trainer of a run and the callbacks that write the run folder: checkpoints, metrics.csv, the
recipe stored in each checkpoint, early stopping and EMA."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    EMAWeightAveraging,
    LearningRateMonitor,
    ModelCheckpoint,
)
from lightning.pytorch.loggers import TensorBoardLogger

from cvsuite.checkpoint import CONFIG_KEY
from cvsuite.config import Config
from cvsuite.console import EpochLine, TensorBoardSamples
from cvsuite.tasks import TaskSpec


class EpochMetricsFile(Callback):
    """Appends one row per epoch to metrics.csv: the epoch's train and validation scalars side by side."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # Validation has run inside this epoch by now, so val_* are this epoch's values.
        row: dict[str, Any] = {"epoch": trainer.current_epoch}
        for key, value in trainer.callback_metrics.items():
            if key.endswith("_step") or (isinstance(value, torch.Tensor) and value.numel() != 1):
                continue
            row[key.removesuffix("_epoch")] = round(float(value), 6)
        if trainer.optimizers:
            row["lr"] = trainer.optimizers[0].param_groups[-1]["lr"]
        self._append(row)

    def _append(self, row: dict[str, Any]) -> None:
        rows = []
        if self.path.exists():
            with self.path.open() as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["epoch"]) < row["epoch"]]
        rows.append(row)
        keys = list(dict.fromkeys(k for r in rows for k in r))
        with self.path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)


class SaveConfig(Callback):
    """Stores the resolved recipe in every checkpoint, so eval/predict/export need only the checkpoint."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg.to_dict()

    def on_save_checkpoint(self, trainer, module, checkpoint: dict[str, Any]) -> None:
        checkpoint[CONFIG_KEY] = self.cfg


def build_trainer(cfg: Config, spec: TaskSpec, run_dir: Path, **overrides: Any) -> tuple[L.Trainer, ModelCheckpoint]:
    monitor = cfg.run.monitor or spec.monitor
    mode = cfg.run.mode or spec.mode
    ckpt = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor=monitor,
        mode=mode,
        save_last=True,
        save_top_k=1,
        enable_version_counter=False,
    )
    callbacks: list[Callback] = [ckpt, EpochMetricsFile(run_dir / "metrics.csv"), SaveConfig(cfg)]
    callbacks += [LearningRateMonitor(logging_interval="epoch"), TensorBoardSamples()]  # lr and samples
    if cfg.run.early_stopping_patience is not None:
        callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=cfg.run.early_stopping_patience))
    if cfg.run.ema_decay is not None:
        callbacks.append(EMAWeightAveraging(decay=cfg.run.ema_decay))
    kwargs = {**cfg.trainer, **overrides, "default_root_dir": str(run_dir)}
    if cfg.run.verbose:
        callbacks.append(EpochLine(monitor, mode))
    else:
        kwargs["enable_progress_bar"] = False
    logger = TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False)
    return L.Trainer(callbacks=callbacks, logger=logger, **kwargs), ckpt
