"""The Lightning Trainer of a run and the callbacks that write the run folder: checkpoints, metrics.csv, the
recipe stored in each checkpoint, early stopping and EMA; and stopping on Ctrl+C / SIGTERM with a result.

Resume is exact: ``last.ckpt`` is written (atomically) at the end of every epoch, after that epoch's metrics.csv row,
and holds the random number generators as well as the weights, optimisers, schedulers and callback states, so a run
resumed from it draws the same batches, augmentations and noise as the uninterrupted run.
"""

from __future__ import annotations

import csv
import logging
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    EMAWeightAveraging,
    LearningRateMonitor,
    ModelCheckpoint,
)
from lightning.pytorch.loggers import TensorBoardLogger

from cvsuite.augment import seed_pipelines
from cvsuite.checkpoint import CONFIG_KEY
from cvsuite.config import Config
from cvsuite.console import EpochLine, EpochProgressBar, TensorBoardSamples, ValidatedEpoch
from cvsuite.data.common import RANK_STRIDE
from cvsuite.errors import TrainingInterrupted
from cvsuite.outputs import atomic_open
from cvsuite.tasks import TaskSpec

log = logging.getLogger("cvsuite")


class EpochMetricsFile(Callback):
    """Appends one row per epoch to metrics.csv: the epoch's train and validation scalars side by side.

    ``epoch`` counts from 1, as the epoch lines and "best ... at epoch N" do. The learning rates are named by what
    they drive: ``lr_head`` (the new head, decoder or FPN) and ``lr_backbone`` (the backbone's top layer: with
    ``finetune.layer_decay`` the lower layers get less), or ``lr_generator`` and ``lr_discriminator`` for the GAN.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.validated = ValidatedEpoch()

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.validated.record(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.is_global_zero:  # one writer under DDP; val_* are synced, so rank 0 holds the global values
            return
        # Validation has run inside this epoch by now when it runs at all (data.val_every / check_val_every_n_epoch
        # may skip it): val_* are this epoch's values, or left empty rather than repeating an older epoch's.
        row: dict[str, Any] = {"epoch": trainer.current_epoch + 1}
        for key, value in self.validated.metrics(trainer).items():
            if (
                key.endswith("_step")
                or key.startswith("lr-")
                or (isinstance(value, torch.Tensor) and value.numel() != 1)
            ):
                continue  # lr-<Optimizer>/pgN: LearningRateMonitor's names for TensorBoard; named below instead
            row[key.removesuffix("_epoch")] = round(float(value), 6)
        row.update(learning_rates(module, trainer.optimizers))
        self._append(row)

    def _append(self, row: dict[str, Any]) -> None:
        rows = []
        if self.path.exists():
            with self.path.open(newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["epoch"]) < row["epoch"]]
        rows.append(row)
        keys = list(dict.fromkeys(k for r in rows for k in r))
        with atomic_open(self.path, newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)


def learning_rates(module: L.LightningModule, optimizers: list[torch.optim.Optimizer]) -> dict[str, float]:
    """The current learning rates by role: ``lr_head`` / ``lr_backbone`` (the largest backbone group's, absent when
    the backbone is in no group), or one per optimiser of the GAN (``lr_generator``, ``lr_discriminator``)."""
    if not optimizers:
        return {}
    if len(optimizers) == 2 and hasattr(module, "generator") and hasattr(module, "discriminator"):
        return {f"lr_{net}": opt.param_groups[0]["lr"] for net, opt in zip(("generator", "discriminator"), optimizers)}
    backbone = getattr(module, "backbone", None)
    in_backbone = {id(p) for p in backbone.parameters()} if isinstance(backbone, torch.nn.Module) else set()
    head, trunk = [], []
    for group in optimizers[0].param_groups:  # a group may hold both (same lr and weight decay): counts for both
        ids = {id(p) for p in group["params"]}
        if ids - in_backbone:
            head.append(group["lr"])
        if ids & in_backbone:
            trunk.append(group["lr"])
    out = {}
    if head:
        out["lr_head"] = max(head)
    if trunk:
        out["lr_backbone"] = max(trunk)
    return out


class SaveConfig(Callback):
    """Stores the resolved recipe in every checkpoint, so eval/predict/export need only the checkpoint."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg.to_dict()

    def on_save_checkpoint(self, trainer, module, checkpoint: dict[str, Any]) -> None:
        checkpoint[CONFIG_KEY] = self.cfg


class RandomState(Callback):
    """Saves the Python, NumPy and torch generators in the checkpoint and restores them when training resumes.

    Lightning does not: without this a resumed run shuffles, augments, mixes up and samples noise differently from
    the uninterrupted one. Restored as the checkpoint is loaded, before the first training batch is drawn (the sanity
    check runs under Lightning's isolate_rng); stored as tensors and lists so the checkpoint stays loadable with
    ``weights_only=True``.
    """

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        version, internal, python_gauss = random.getstate()
        state = {
            "python": [version, list(internal), python_gauss],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])


class AugmentationSeed(Callback):
    """Reseeds the training pipelines' albumentations generators at every epoch start from (run seed, epoch).

    albumentations 2 draws from its own generator, which neither seed_everything nor `RandomState` reaches; seeding it
    per epoch makes the augmentations of epoch N the same whether or not the run was resumed before it. (DataLoader
    workers reseed their copies from torch's generator, which `RandomState` restores.)
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        dataset = getattr(trainer.train_dataloader, "dataset", None)
        if dataset is not None:
            # Ranks apart, as the DataLoader's own seeding (`cvsuite.data.common.SeedWorker`) keeps them.
            seed_pipelines(dataset, self.seed * 1_000_003 + trainer.current_epoch + RANK_STRIDE * trainer.global_rank)


class AtomicCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint that writes to a temporary file and renames it: a kill mid-write never leaves a truncated
    best.ckpt / last.ckpt behind (os.replace is atomic on one filesystem). ``write_s`` is what the last write took
    (a budget run keeps that much time for the checkpoints after training); ``written_step`` the global step it
    held (None before this process wrote one)."""

    write_s = 0.0
    written_at = 0.0  # Unix time the last write ended
    written_step: int | None = None

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        t0 = time.time()
        partial = f"{filepath}.partial"
        super()._save_checkpoint(trainer, partial)
        if trainer.is_global_zero:
            os.replace(partial, filepath)
        self._last_checkpoint_saved = filepath
        self.written_step = trainer.global_step
        self.written_at = time.time()
        self.write_s = self.written_at - t0


class PhaseTimes(Callback):
    """When each phase of a run ended, in seconds from the process start: metrics.json's ``timings`` (read by
    bench/overhead.py, which sets them beside a plain script's). The run marks its own phases (`mark`); as a callback
    this adds ``first_step``: the first training step of this process done.

    Args:
        started: Unix time the process started (`cvsuite.budget.process_start`).
        marks: phases already done, name -> Unix time (``cvsuite train`` marks its imports).
    """

    def __init__(self, started: float, marks: dict[str, float] | None = None) -> None:
        self.started = started
        self.marks = dict(marks or {})

    def mark(self, name: str) -> None:
        self.marks[name] = time.time()

    def seconds(self) -> dict[str, float]:
        return {name: round(at - self.started, 2) for name, at in self.marks.items()}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if "first_step" not in self.marks:
            self.mark("first_step")


class StopRequested(Exception):
    """Raised out of ``trainer.fit`` after the step in progress when a first Ctrl+C or SIGTERM arrived."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class SignalStop(Callback):
    """Ctrl+C (SIGINT) and SIGTERM as a request to stop with a result: the first one ends training after the step
    in progress (`StopRequested`), and the run still evaluates its best checkpoint (else its last weights) into
    metrics.json; a second one stops at once, without the evaluation.

    Used as a context manager around the whole run (training and the final evaluation), in the main thread of a
    single process; under DDP Lightning's own SIGTERM handling (every rank stops at the same batch) stays in charge.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.count = 0
        self._saved: dict[int, Any] = {}

    def __enter__(self) -> SignalStop:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._saved[signum] = signal.getsignal(signum)
                signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)
        self._saved.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        name = signal.Signals(signum).name
        if self.count > 1:
            raise KeyboardInterrupt(f"second {name}")
        self.signum = signum
        # os.write: the logging module is not safe to call from a signal handler.
        os.write(
            sys.stderr.fileno(),
            f"\n{name}: stopping after this step, then the final evaluation (again: exit at once)\n".encode(),
        )

    def _check(self) -> None:
        if self.signum is not None:
            raise StopRequested(self.signum)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self._check()

    def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._check()


def interrupted(signum: int, last: Path, scored: str | None) -> TrainingInterrupted:
    """The `TrainingInterrupted` to raise once a run stopped by `signum` has written what it could: `scored` says
    what metrics.json holds (None: no final evaluation, after a second interrupt)."""
    name = signal.Signals(signum).name
    if last.is_file():
        done = torch.load(last, map_location="cpu", weights_only=True)["epoch"] + 1
        # The epoch in progress is dropped: resuming mid-epoch could not replay the same batches.
        where = f"{last} holds {done} complete epoch(s); continue with: cvsuite train --resume {last}"
    else:
        where = "no epoch was complete, so there is nothing to resume; start the run again"
    result = f"metrics.json scores {scored}" if scored else "no final evaluation (interrupted twice)"
    return TrainingInterrupted(f"training stopped by {name}; {result}; {where}", signum)


def validates(cfg: Config) -> bool:
    """Whether the run validates at all (``limit_val_batches: 0`` trains without validation)."""
    limit = cfg.trainer.get("limit_val_batches")
    return limit is None or float(limit) > 0


def build_trainer(
    cfg: Config, spec: TaskSpec, run_dir: Path, extra: list[Callback] | None = None, clocked: bool = False, **overrides
) -> tuple[L.Trainer, ModelCheckpoint, ModelCheckpoint]:
    """The run's Trainer, its best-checkpoint callback (the last one when the run does not validate) and its
    last-checkpoint callback. `extra`: more callbacks (the budget's clock, the signal stop); `clocked`: validation
    is asked for by the clock (`cvsuite.budget.BudgetClock`) instead of every k epochs."""
    monitor = cfg.run.monitor or spec.monitor
    mode = cfg.run.mode or spec.mode
    folder = run_dir / "checkpoints"
    # The latest epoch, every epoch, written at the end of the training epoch: after validation, early stopping,
    # the best checkpoint and this epoch's metrics.csv row, so it holds all of their states.
    last = AtomicCheckpoint(
        dirpath=folder, filename="last", save_top_k=1, save_on_train_epoch_end=True, enable_version_counter=False
    )
    callbacks: list[Callback] = [
        EpochMetricsFile(run_dir / "metrics.csv"),
        SaveConfig(cfg),
        RandomState(),
        AugmentationSeed(cfg.run.seed),
        LearningRateMonitor(logging_interval="epoch"),
        TensorBoardSamples(),  # lr and sample images in TensorBoard
        *(extra or []),
    ]
    best = last
    # Under the clock a validation may fall inside an epoch: the best checkpoint and early stopping follow each one.
    after_val = False if clocked else None
    if validates(cfg):
        best = AtomicCheckpoint(
            dirpath=folder,
            filename="best",
            monitor=monitor,
            mode=mode,
            save_top_k=1,
            enable_version_counter=False,
            save_on_train_epoch_end=after_val,
        )
        callbacks.append(best)
        if cfg.run.early_stopping_patience is not None:
            patience = cfg.run.early_stopping_patience
            callbacks.append(
                EarlyStopping(monitor=monitor, mode=mode, patience=patience, check_on_train_epoch_end=after_val)
            )
    else:
        log.warning(
            "trainer.limit_val_batches is 0: training without validation, so there is no best checkpoint "
            "(metrics.json evaluates last.ckpt)"
        )
    limit = cfg.trainer.get("limit_val_batches")
    if validates(cfg) and limit is not None and not (isinstance(limit, float) and limit >= 1.0):
        log.warning(
            "trainer.limit_val_batches %s scores the first batches of the validation split in file order (with class "
            "folders: maybe one class only); data.val_subset scores a seeded subset across the whole split",
            limit,
        )
    if spec.callbacks is not None:
        callbacks += spec.callbacks(run_dir)
    callbacks.append(last)  # after `best`: Lightning runs checkpoint callbacks last, in list order
    if cfg.run.ema_decay is not None:
        callbacks.append(EMAWeightAveraging(decay=cfg.run.ema_decay))
    kwargs = {**cfg.trainer, **overrides, "default_root_dir": str(run_dir)}
    if clocked:
        from cvsuite.budget import MANY_EPOCHS, NEVER

        # The clock stops training; the epoch count must not (a resumed run may be past the recipe's epochs).
        kwargs.update(check_val_every_n_epoch=None, val_check_interval=NEVER, max_epochs=MANY_EPOCHS)
    if cfg.finetune.cache_features:
        # The frozen epochs' loader (cached features) differs from the later ones' (images): asked for every epoch.
        kwargs["reload_dataloaders_every_n_epochs"] = 1
    if cfg.run.verbose:
        callbacks.append(EpochLine(monitor, mode))
        if cfg.trainer.get("enable_progress_bar", True):
            callbacks.append(EpochProgressBar())  # epochs counted from 1, as everywhere else
    else:
        kwargs["enable_progress_bar"] = False
    logger = TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False)
    return L.Trainer(callbacks=callbacks, logger=logger, **kwargs), best, last
