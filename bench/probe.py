"""Cost probes for the benchmarks that compare recipe variants by their step and validation cost (the product no
longer probes: a `run.budget` run follows the clock, `cvsuite.budget`). Each measures a throwaway copy of a module
with the recipe's own data, model and precision.
"""

from __future__ import annotations

import copy
import io
import time
from typing import Any

import lightning as L
import torch

EPOCH_FIXED_S = 0.05  # per-epoch cost besides steps and checkpoints (loader start, callbacks, metrics.csv), seconds


class _StepTimer(L.Callback):
    """Wall time of each training batch after the first (which pays for loader start-up and lazy init)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._t0 = 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if batch_idx > 0:
            self.times.append(time.perf_counter() - self._t0)


def _probe_trainer(trainer_cfg: dict[str, Any], **kwargs: Any) -> L.Trainer:
    keep = {k: trainer_cfg[k] for k in ("accelerator", "precision", "accumulate_grad_batches") if k in trainer_cfg}
    return L.Trainer(
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **keep,
        **kwargs,
    )


def measure(module: L.LightningModule, datamodule: L.LightningDataModule, trainer_cfg: dict[str, Any], steps: int = 4):
    """(step_s, frozen_step_s, val_batch_s, train_batches) measured on copies of `module`, with
    `datamodule`'s own loaders. The copies are thrown away; the real run starts from the untouched module."""

    def step_time(frozen: bool) -> float:
        probe = copy.deepcopy(module)
        ft = dict(getattr(probe, "finetune_cfg", {}))
        if hasattr(probe, "finetune_cfg"):
            # The full frozen step even with cache_features: an upper bound that also covers computing the cache.
            probe.finetune_cfg = {**ft, "freeze_backbone": frozen, "freeze_epochs": 0, "cache_features": False}
        timer = _StepTimer()
        trainer = _probe_trainer(trainer_cfg, max_steps=steps + 1, limit_val_batches=0, callbacks=[timer])
        trainer.fit(probe, datamodule=datamodule)
        # The mean of the two fastest timed steps: the run's steady steps were faster than the probe's median in
        # every run of bench/budget.py and bench/recipes.py (the first steps still warm caches and allocators), and
        # plans ended at 71-89 % of their budget; the safety net keeps a plan that is too optimistic on time.
        fastest = sorted(timer.times)[:2]
        return sum(fastest) / len(fastest) if fastest else 0.0

    ft = getattr(module, "finetune_cfg", {})
    freezes = bool(ft.get("freeze_epochs")) or bool(ft.get("freeze_backbone"))
    unfrozen = 0.0 if ft.get("freeze_backbone") else step_time(frozen=False)
    frozen = step_time(frozen=True) if freezes else unfrozen
    if ft.get("freeze_backbone"):
        unfrozen = frozen
    probe = copy.deepcopy(module)
    trainer = _probe_trainer(trainer_cfg, limit_val_batches=steps)
    t0 = time.perf_counter()
    trainer.validate(probe, datamodule=datamodule, verbose=False)
    val_batch_s = (time.perf_counter() - t0) / max(1, min(steps, datamodule.val_batches(training=False)))
    return unfrozen, frozen, val_batch_s, len(datamodule.train_dataloader())


def checkpoint_seconds(module: L.LightningModule) -> float:
    """What one epoch's checkpoint writes cost: last.ckpt and best.ckpt, each about three times the weights (an
    Adam optimiser keeps two moments per weight), timed by serialising the weights once in memory."""
    buffer = io.BytesIO()
    t0 = time.perf_counter()
    torch.save(module.state_dict(), buffer)
    return 2 * 3 * (time.perf_counter() - t0) + EPOCH_FIXED_S
