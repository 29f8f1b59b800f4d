"""Time budgets: ``run.budget`` ("15min", "90s", "1h") turned into a plan of epochs that fits.

The planner measures what one training step (frozen and unfrozen backbone) and one validation batch cost on this
machine, with the recipe's own data, model and precision, then picks the number of epochs, the validation cadence,
and the freeze and warm-up phases (kept in the recipe's proportions) so that the whole schedule — warm-up, freeze,
cosine decay to its floor — completes inside the budget, final evaluation included. Lightning's ``max_time`` stays
on as a safety net past the plan (`safety_net_s`), so a run slower than its estimate still ends on time.
"""

from __future__ import annotations

import copy
import io
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch

from cvsuite.config import Config, ConfigError

log = logging.getLogger("cvsuite")

_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}
# Share of the budget the plan may spend; the rest absorbs what the probe cannot see (loader start-up, the first
# epoch's caches, checkpoint writes, noisy neighbours).
MARGIN = 0.9
# Validation may take at most this share of the training time; beyond it, validate every k epochs.
VAL_SHARE = 0.2
# Per-epoch cost besides steps and checkpoints (loader start, callbacks, metrics.csv), seconds.
EPOCH_FIXED_S = 0.05
# After the final evaluation: loading the best checkpoint, metrics.json, plots, process exit (seconds, budget share).
EXIT_S = 2.0
EXIT_SHARE = 0.02


def parse_duration(value: Any, key: str = "run.budget") -> float:
    """Seconds from ``"90s"``, ``"15min"``, ``"1h"``, ``"1h30m"``, ``"00:15:00"`` or a number of seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    text = str(value).strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(:\d{1,2}){1,2}", text):
        seconds = 0.0
        for part in text.split(":"):
            seconds = seconds * 60 + int(part)
        if seconds > 0:
            return seconds
    parts = re.findall(r"(\d+(?:\.\d+)?)([a-z]+)", text)
    if parts and "".join(n + u for n, u in parts) == text and all(u in _UNITS for _, u in parts):
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
        if seconds > 0:
            return seconds
    raise ConfigError(f"{key}: cannot read {value!r} as a duration; write it like 90s, 15min, 1h, 1h30m or 00:15:00")


@dataclass
class Costs:
    """Measured seconds of the run's parts on this machine."""

    step_s: float  # one training step, backbone trained
    frozen_step_s: float  # one training step, backbone frozen (= step_s when the recipe never freezes)
    steps_per_epoch: int
    val_s: float  # one validation pass inside training (data.val_subset / limit_val_batches of the split)
    elapsed_s: float  # spent before training starts (start-up, data checks, the probe itself)
    epoch_s: float = 0.0  # fixed cost of every epoch: last.ckpt (and best.ckpt) written, metrics.csv, callbacks
    final_val_s: float | None = None  # the final evaluation, which scores the whole split (None = val_s)

    @property
    def final_s(self) -> float:
        return self.val_s if self.final_val_s is None else self.final_val_s


@dataclass
class Plan:
    epochs: int
    steps_per_epoch: int
    val_every: int
    freeze_epochs: int
    warmup_epochs: float
    seconds: float  # planned, from the start of the process to the end of the final evaluation
    ends_at: datetime

    def describe(self) -> str:
        val = "val every epoch" if self.val_every == 1 else f"val every {self.val_every} epochs"
        freeze = f", backbone frozen for {self.freeze_epochs}" if self.freeze_epochs else ""
        return (
            f"budget plan: ≈ {self.epochs} epochs × {self.steps_per_epoch} steps, {val}{freeze}, "
            f"ends ~{self.ends_at:%H:%M:%S}"
        )


def _scaled(value: float, recipe_epochs: int, epochs: int) -> float:
    """A phase length of the recipe (in epochs) at the same share of a schedule of `epochs` epochs."""
    return value * epochs / max(1, recipe_epochs)


def _smallest_divisor_from(n: int, low: int) -> int:
    """The smallest divisor of `n` that is at least `low` (n itself at the latest)."""
    divisors = [d for i in range(1, math.isqrt(n) + 1) if n % i == 0 for d in (i, n // i)]
    return min(d for d in divisors if d >= low)


def plan(
    budget_s: float,
    costs: Costs,
    recipe_epochs: int,
    freeze_epochs: int = 0,
    warmup_epochs: float = 0.0,
    started: datetime | None = None,
) -> Plan:
    """The most epochs whose training, validation and final evaluation fit `budget_s` (seconds since `started`,
    when the budget began counting; `costs.elapsed_s` of it are spent before the first step)."""
    available = budget_s * MARGIN - costs.elapsed_s - costs.final_s  # the final evaluation: one more full pass
    steps = max(1, costs.steps_per_epoch)
    best = None
    for epochs in range(1, 10_000):
        freeze = int(math.floor(_scaled(freeze_epochs, recipe_epochs, epochs)))
        train_s = steps * (freeze * costs.frozen_step_s + (epochs - freeze) * costs.step_s) + epochs * costs.epoch_s
        if train_s > available:
            break  # training alone grows with every epoch: no longer schedule can fit
        # The cheapest cadence whose validation stays within VAL_SHARE of training, stretched to one that divides
        # the epochs: the last epoch must be a validated one, so the best checkpoint and the final metrics see the
        # finished schedule. (Cutting the epochs to a multiple of the cadence instead would throw budget away.)
        # Stretched at most twofold, so the curves keep at least half their points (22 epochs validated every 11
        # would leave two); an epoch count without such a divisor is skipped.
        needed = max(1, min(epochs, math.ceil(epochs * costs.val_s / max(1e-9, VAL_SHARE * train_s))))
        val_every = _smallest_divisor_from(epochs, needed)
        total = train_s + (epochs // val_every) * costs.val_s
        if val_every <= 2 * needed and total <= available:
            best = (epochs, freeze, val_every, total)
    if best is None:
        one_epoch = steps * costs.step_s + costs.epoch_s + costs.val_s
        need = costs.elapsed_s + one_epoch + costs.final_s
        raise ConfigError(
            f"run.budget {budget_s:.0f}s is too short: start-up ({costs.elapsed_s:.0f}s), one epoch "
            f"({one_epoch:.0f}s with its validation) and the final evaluation ({costs.final_s:.0f}s) need about "
            f"{need / MARGIN:.0f}s. Give more time, or make an epoch cheaper (data.image_size, data.batch_size)."
        )
    epochs, freeze, val_every, total = best
    seconds = costs.elapsed_s + total + costs.final_s
    started = started or datetime.now()
    return Plan(
        epochs=epochs,
        steps_per_epoch=steps,
        val_every=val_every,
        freeze_epochs=freeze,
        warmup_epochs=round(_scaled(warmup_epochs, recipe_epochs, epochs), 3),
        seconds=seconds,
        ends_at=started + timedelta(seconds=seconds),
    )


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


# ---- wiring into a run ----------------------------------------------------------------------------------------
# The keys a plan sets; a resumed run takes them from its checkpoint, so the schedule it continues is the planned one.
PLANNED_KEYS = (
    ("trainer", "max_epochs"),
    ("trainer", "check_val_every_n_epoch"),
    ("finetune", "freeze_epochs"),
    ("optim", "warmup_epochs"),
)


def process_start() -> float:
    """Unix time at which this process started (Linux ``/proc``), else now: ``tools/train.py``'s budget counts
    Python's start-up and imports too."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        stat = Path("/proc/stat").read_text().splitlines()
        boot = next(int(line.split()[1]) for line in stat if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


def checkpoint_seconds(module: L.LightningModule) -> float:
    """What one epoch's checkpoint writes cost: last.ckpt and best.ckpt, each about three times the weights (an
    Adam optimiser keeps two moments per weight), timed by serialising the weights once in memory."""
    buffer = io.BytesIO()
    t0 = time.perf_counter()
    torch.save(module.state_dict(), buffer)
    return 2 * 3 * (time.perf_counter() - t0) + EPOCH_FIXED_S


def safety_net_s(budget_s: float, costs: Costs) -> int:
    """Lightning's ``max_time`` for a budget run, counted from the first training step: training stops there at the
    latest, leaving room for what follows a stop — the epoch's validation and checkpoint writes, the final
    evaluation, and writing metrics and plots before the process exits — so a run slower than its plan (a busy
    machine) still ends inside the budget, with a schedule cut short rather than late."""
    after = costs.val_s + costs.epoch_s + costs.final_s + EXIT_S + EXIT_SHARE * budget_s
    return max(1, int(budget_s - costs.elapsed_s - after))


def _limited(batches: int, limit: Any) -> int:
    """Batches per epoch under a trainer ``limit_*_batches`` (an int count or a float fraction)."""
    if limit is None:
        return batches
    if isinstance(limit, float) and limit <= 1.0:
        return max(1, int(batches * limit)) if limit > 0 else 0
    return min(batches, int(limit))


def budget_config(cfg: Config, spec: Any, datamodule: L.LightningDataModule, started: float) -> tuple[Config, Plan]:
    """`cfg` with the epochs, validation cadence, freeze and warm-up planned for ``run.budget`` (seconds counted
    from `started`, a Unix time), and the plan. Measures a throwaway copy of the task's module on `datamodule`."""
    budget_s = parse_duration(cfg.run.budget)
    devices = cfg.trainer.get("devices", 1)
    if devices not in (1, "1", None) or int(cfg.trainer.get("num_nodes", 1) or 1) > 1:
        raise ConfigError(
            "run.budget plans a one-process run (it measures one device); with several devices set "
            "trainer.max_epochs (and trainer.max_time as a limit) instead"
        )
    t0 = time.perf_counter()
    probe = spec.build_module(cfg, datamodule)
    build_s = time.perf_counter() - t0  # the real module is built once more after planning
    step_s, frozen_s, val_batch_s, train_batches = measure(probe, datamodule, cfg.trainer)
    epoch_s = checkpoint_seconds(probe)
    del probe
    steps = _limited(train_batches, cfg.trainer.get("limit_train_batches"))
    val_s = val_batch_s * _limited(datamodule.val_batches(training=True), cfg.trainer.get("limit_val_batches"))
    final_val_s = val_batch_s * datamodule.val_batches(training=False)
    # What still comes before the first step: the run's own module, and Lightning's sanity-check batches.
    sanity, val_batches = cfg.trainer.get("num_sanity_val_steps", 2), datamodule.val_batches(training=True)
    sanity_s = val_batch_s * (val_batches if sanity == -1 else min(val_batches, int(sanity or 0)))
    elapsed_s = time.time() - started + build_s + sanity_s
    costs = Costs(step_s, frozen_s, steps, val_s, elapsed_s, epoch_s, final_val_s)
    p = plan(
        budget_s,
        costs,
        int(cfg.trainer.get("max_epochs") or 1),
        cfg.finetune.freeze_epochs,
        cfg.optim.warmup_epochs,
        started=datetime.fromtimestamp(started),
    )
    planned = copy.deepcopy(cfg)
    planned.trainer.update(
        max_epochs=p.epochs, check_val_every_n_epoch=p.val_every, max_time={"seconds": safety_net_s(budget_s, costs)}
    )
    planned.finetune.freeze_epochs = p.freeze_epochs
    planned.optim.warmup_epochs = p.warmup_epochs
    log.info(
        "%s (measured: %.3fs/step, %.3fs/step frozen, %.1fs per validation, %.1fs final evaluation, %.0fs spent "
        "before training)",
        p.describe(),
        step_s,
        frozen_s,
        val_s,
        final_val_s,
        costs.elapsed_s,
    )
    return planned, p


def resumed_config(cfg: Config, stored: dict[str, Any]) -> Config:
    """A resumed budget run continues its checkpoint's plan (the schedule was sized to it) without a time limit:
    the budget counted from the start of the first process."""
    out = copy.deepcopy(cfg)
    for section, key in PLANNED_KEYS:
        value = (stored.get(section) or {}).get(key)
        if value is None:
            continue
        if section == "trainer":
            out.trainer[key] = value
        else:
            setattr(getattr(out, section), key, value)
    out.trainer.pop("max_time", None)
    return out
