"""Time budgets: ``run.budget`` ("15min", "90s", "1h") as a deadline that the schedule follows.

The deadline is fixed when the process starts: the budget, minus a reserve for what follows training (the validation
of the final weights, the last checkpoint, the final evaluation of the whole validation split, plots and the exit).
`BudgetClock` measures what the run itself does (steps with their data loading, validations, checkpoint writes) and
re-estimates the reserve as it goes; the learning rate (warm-up, cosine to its floor), the freeze -> unfreeze switch
and the validation cadence follow the share of the training time spent (`cvsuite.schedule.Clock`). A machine that
slows down or speeds up mid-run still gets a fully decayed schedule that ends on time. There is no probe run.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import statistics
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from cvsuite.schedule import (
    EXIT_S,
    EXIT_SHARE,
    FINAL_FIXED_S,
    MIN_VAL_GAP,
    PLOTS_S,
    VAL_SHARE,
    Clock,
    Costs,
    format_duration,
    lr_factor,
    parse_duration,
    reserve_s,
    shares,
)

__all__ = ["BudgetClock", "parse_duration", "process_start"]

log = logging.getLogger("cvsuite")

# Lightning's batch counter for "validate now" (`Trainer.val_check_batch` with ``check_val_every_n_epoch=None``):
# a number no run reaches, until the clock asks for a validation at the current batch.
NEVER = 10**12
# The Trainer's epoch count under the clock, until the clock's own estimate replaces it.
MANY_EPOCHS = 10**6
# The first validation inside training comes once this share of the time is spent, whatever the gap rule says: it
# measures what validating costs here (the sanity check's two batches also pay the process's first-batch warm-up),
# and with it the reserve for the end.
CALIBRATE_AT = 0.1
# "lr at floor" in the end line: the decay done to within this share of its range.
AT_FLOOR = 0.02
# One step as a share of the training time before any step was measured: a warm-up's first step is not wasted at 0.
FIRST_STEP_SHARE = 1e-3


def process_start() -> float:
    """Unix time at which this process started (Linux ``/proc``), else now: ``cvsuite train``'s budget counts
    Python's start-up and imports too."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        stat = Path("/proc/stat").read_text().splitlines()
        boot = next(int(line.split()[1]) for line in stat if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


class BudgetClock(Callback):
    """Drives a ``run.budget`` run by the clock: progress for the learning rate and the freeze (read by the task
    through ``module.clock``), when to validate, and when to stop.

    Args:
        budget: ``run.budget`` as written. started: Unix time the budget counts from (the process start).
        optim, finetune: the recipe's sections; recipe_epochs: ``trainer.max_epochs`` (for the older epoch keys).
        val_batches: validation batches inside training; final_batches: of the final evaluation (the whole split).
        plots: whether plots follow the final evaluation.

    Its state (budget, seconds of it used, progress) is saved in every checkpoint: a resumed run continues the
    progress it had, with what was left of the budget, or with a new budget for this process when ``run.budget``
    is given anew on the resume.
    """

    def __init__(
        self,
        budget: str | float,
        started: float,
        optim: dict[str, Any],
        finetune: dict[str, Any],
        recipe_epochs: int,
        val_batches: int,
        final_batches: int,
        plots: bool = True,
    ) -> None:
        self.budget = budget
        self.budget_s = parse_duration(budget)
        self.started = started
        self.optim, self.finetune = dict(optim), dict(finetune)
        self.recipe_epochs = max(1, int(recipe_epochs))
        self.shares = shares(self.optim, self.finetune, self.recipe_epochs)
        self.val_batches, self.final_batches = val_batches, final_batches
        after = (PLOTS_S if plots else 0.0) + EXIT_S + EXIT_SHARE * self.budget_s
        self.costs = Costs(after_s=after)
        self.clock: Clock | None = None
        self.stored: dict[str, Any] | None = None  # the state of a resumed run
        self.stopped = False  # by the deadline
        self.step_share = 0.0  # one step as a share of the training time
        self.train_started = self.train_ended = 0.0
        self.steps_done = 0
        self._steps: collections.deque[float] = collections.deque(maxlen=9)
        self._last = 0.0  # end of the previous step (or start of the epoch, or end of a validation)
        self._epoch_end: float | None = None
        self._epoch_start = 0.0
        self._val_start = 0.0
        self._last_val = 0.0
        self._cached = False
        self._validated = False  # a validation inside training was measured
        self._last_step_next = False  # the next step is the last that fits
        self._next = 0.0  # the progress the scheduler last set the rate for
        self.trained_at = 0.0  # the progress whose rate the last step trained with
        self._sanity_times: list[float] = []
        self._floor_step = False  # the one extra step at the floor rate after an early stop was taken

    # ---- what the task reads --------------------------------------------------------------------------------
    @property
    def progress(self) -> float:
        if self.clock is not None:
            return self.clock.progress
        return float(self.stored["progress"]) if self.stored else 0.0

    def lr_progress(self) -> float:
        """The progress at the next step (the scheduler sets the rate after each step, for the next); 1 when the
        next step is the last one, so the schedule ends at its floor whatever the step's length."""
        if self._last_step_next or self.progress >= 1.0:
            self._next = 1.0
        else:
            self._next = min(1.0, self.progress + max(self.step_share, FIRST_STEP_SHARE))
        return self._next

    # ---- state in checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        used = (self.stored or {}).get("used_s", 0.0) if self._same_budget() else 0.0
        return {"budget_s": self.budget_s, "used_s": used + time.time() - self.started, "progress": self.progress}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stored = dict(state)

    def _same_budget(self) -> bool:
        return bool(self.stored) and abs(float(self.stored["budget_s"]) - self.budget_s) < 1e-6

    # ---- measuring --------------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        module.clock = self  # before configure_optimizers: the scheduler reads the clock

    def on_sanity_check_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._val_start = time.time()
        self._sanity_times = []

    def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.sanity_checking:
            self._sanity_times.append(time.time())

    def on_sanity_check_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        ends = self._sanity_times
        if len(ends) >= 2:  # the first batch also starts the loader: counted once, not per batch
            self._measured_validation(ends[0] - self._val_start, (ends[-1] - ends[0]) / (len(ends) - 1))
        elif ends:
            self._measured_validation(ends[0] - self._val_start, ends[0] - self._val_start)

    def _measured_validation(self, first_s: float, per_batch: float) -> None:
        """Validation costs from a pass whose first batch (loader start included) took `first_s`."""
        self.costs.val_s = first_s + per_batch * max(0, self.val_batches - 1)
        self.costs.final_s = first_s + per_batch * max(0, self.final_batches - 1) + FINAL_FIXED_S

    def _written(self, trainer: L.Trainer) -> float:
        return max([getattr(cb, "written_at", 0.0) for cb in trainer.checkpoint_callbacks] + [0.0])

    def _writes_s(self, trainer: L.Trainer) -> float:
        return max([getattr(cb, "write_s", 0.0) for cb in trainer.checkpoint_callbacks] + [0.0])

    def _reserve(self, trainer: L.Trainer) -> float:
        val_s, final_s = self.costs.val_s, self.costs.final_s
        if val_s is None and self._steps:
            # No validation measured yet (no sanity check): a forward pass is about a third of a training step.
            per_batch = statistics.median(self._steps) / 3
            val_s, final_s = per_batch * self.val_batches, per_batch * self.final_batches + FINAL_FIXED_S
        final_s = self._final_s(trainer, final_s)
        costs = Costs(None, (val_s or 0.0) + self._writes_s(trainer), final_s, self.costs.ckpt_s, self.costs.after_s)
        return reserve_s(costs, validates=self._validates_at_stop(trainer))

    def _final_s(self, trainer: L.Trainer, final_s: float | None) -> float | None:
        """What the final evaluation costs: `final_s`, or only reading a checkpoint back where the task's validation
        is its whole evaluation (the GAN's), it scores the whole split, and a validation leaves a best checkpoint
        (`cvsuite.run` then reads that checkpoint's own metrics)."""
        reads_back = getattr(trainer.lightning_module, "validation_is_evaluation", False)
        if reads_back and self.val_batches == self.final_batches and self._validates_at_stop(trainer):
            return FINAL_FIXED_S
        return final_s

    def _validates_at_stop(self, trainer: L.Trainer) -> bool:
        """Whether the final weights are validated when training stops: only when an earlier validation left a best
        checkpoint to compare them with; else the final evaluation scores them anyway, and once is enough."""
        return trainer.enable_validation and (
            self._validated or any(cb.monitor is not None and cb.best_model_path for cb in trainer.checkpoint_callbacks)
        )

    # ---- the clock ----------------------------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        now = time.time()
        deadline = self.started + self.budget_s
        if self.stored:
            if self._same_budget():
                deadline -= float(self.stored["used_s"])
            else:
                log.info(
                    "run.budget %s on resume: a new budget for this process, for the rest of the schedule (%.0f %% "
                    "of it done)",
                    self.budget,
                    100 * self.progress,
                )
        self.clock = Clock(deadline, now, self.progress)
        self.clock.set_reserve(self._reserve(trainer), now)
        self.train_started = self._last = self._last_val = now
        trainer.fit_loop.max_epochs = max(trainer.current_epoch + 1, MANY_EPOCHS)  # the clock stops training
        trainer.val_check_batch = NEVER
        finished = bool(self.stored) and float(self.stored["progress"]) >= 1.0
        progress, finished = self._rank_zero(trainer, self.clock.progress, finished)
        self.clock.progress = progress
        if finished:  # a finished schedule resumed (every rank stops before its first step, as rank 0 decided)
            log.info("budget: the schedule of this checkpoint is complete; evaluating it")
            self.stopped = trainer.should_stop = True
            return
        if trainer.is_global_zero:
            log.info(self.describe(now))

    def describe(self, now: float) -> str:
        """The printed plan: when training ends, what is kept for after it, the schedule's shape."""
        clock = self.clock
        phases = [f"warm-up {self.shares.warmup:.0%}"] if self.shares.warmup else []
        if self.finetune.get("freeze_backbone"):
            phases.append("backbone frozen")
        elif self.shares.freeze:
            phases.append(f"backbone frozen {self.shares.freeze:.0%}")
        shape = " and ".join(phases) + " of that time" if phases else "no warm-up"
        if self.optim.get("scheduler") == "cosine":
            shape += f", cosine to {self.optim.get('min_lr_ratio', 0.0):g}x lr"
        done = f", {self.progress:.0%} of the schedule done before" if self.progress else ""
        left = clock.train_end - now
        until = datetime.fromtimestamp(clock.train_end)
        if left <= 0:
            when = f"has no training time left ({format_duration(-left)} short): one step"
        else:
            when = f"trains until ~{until:%H:%M:%S} ({format_duration(left)}{done})"
        return (
            f"budget plan: {format_duration(self.budget_s)}, {when}, keeps {format_duration(clock.reserve)} for the "
            f"final evaluation and exit; {shape}; validation by time and at the end"
        )

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        now = self._epoch_start = time.time()
        if self._epoch_end is not None:  # last.ckpt, metrics.csv and the other epoch-end work
            self.costs.ckpt_s = max(now - self._epoch_end, 0.0)
        self._last = now  # the first step's time includes starting the loader
        cached = bool(getattr(module, "uses_cached_features", lambda: False)())
        if self._cached and not cached:
            # The cached-features phase ran by steps; the clock takes over from its share at this moment.
            self.clock.anchor(now, self.shares.freeze)
        self._cached = cached

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, batch_idx) -> None:
        now = time.time()
        # From the end of the previous step (or validation, or epoch start) to now, data loading included, less any
        # checkpoint written in between (best.ckpt after a validation is written after this callback's hook).
        self._steps.append(now - max(self._last, self._written(trainer)))
        self._last = now
        self.steps_done += 1
        clock = self.clock
        # The recent median, or the last step when slower (a machine that slows down), at most twice the median (a
        # one-off hiccup must not end training early).
        median = statistics.median(self._steps)
        step_s = max(median, min(self._steps[-1], 2 * median))
        at_epoch_end = batch_idx + 1 >= trainer.num_training_batches
        stop = validate = False
        if self._cached:
            # Cached features: whole epochs of head steps, progress by steps through the phase's share.
            phase = module.frozen_epochs() * trainer.num_training_batches
            clock.anchor(now, self.shares.freeze * min(1.0, module.global_step / max(1, phase)))
        else:
            clock.set_reserve(self._reserve(trainer), now)
            clock.update(now)
            stop = clock.out_of_time(now, step_s + (self.costs.ckpt_s if at_epoch_end else 0.0))
            rest_s = (trainer.num_training_batches - batch_idx - 1) * step_s
            val_s = self.costs.val_s if self.costs.val_s is not None else step_s * self.val_batches / 3
            # Calibrate only where validations by time can happen at all: one dearer than the gap rule allows for
            # the whole training time would only eat it (and then the final evaluation alone scores the weights).
            cheap = val_s <= VAL_SHARE * (clock.train_end - self.train_started)
            calibrate = (
                not self._validated
                and cheap
                and clock.progress >= CALIBRATE_AT
                and (at_epoch_end or rest_s > MIN_VAL_GAP * (clock.train_end - self.train_started))
            )
            validate = (
                not stop
                and trainer.enable_validation
                and (calibrate or clock.validation_due(now, self._last_val, val_s, at_epoch_end, rest_s))
            )
        self.step_share = step_s / max(1e-9, clock.train_end - self.train_started)
        # The next step is the last if the one after it would not fit (counting the epoch end it may cross), with half
        # a step to spare: a stop that comes a step early leaves the rate short of its floor, a floor reached a step
        # early costs nothing.
        next_end = batch_idx + 2 >= trainer.num_training_batches
        after_next = 1.5 * step_s + (self.costs.ckpt_s if at_epoch_end or next_end else 0.0)
        last_next = not stop and not self._cached and clock.out_of_time(now + step_s, after_next)
        # Too late for what follows to fit as measured (a step far slower than any before): the final evaluation
        # goes first, so the validation of the final weights is left out.
        costs = dataclasses.replace(self.costs, final_s=self._final_s(trainer, self.costs.final_s))
        after = (costs.val_s or 0.0) + self._writes_s(trainer) + costs.ckpt_s + (costs.final_s or 0.0) + costs.after_s
        late = stop and (clock.deadline - now < after or not self._validates_at_stop(trainer))
        if stop and not self._cached and not self._floor_step and not self._at_floor(self.trained_at):
            # Stopped with the rate still far from its floor (the reserve re-estimated upwards after a slow
            # validation, a machine that slowed down): one more step, at the floor, when it and what must follow it
            # (the last checkpoint, the final evaluation, the exit; the validation of the final weights only if that
            # fits too) end before the deadline as the reserve counts them, so the schedule still ends decayed.
            essential = reserve_s(costs, validates=False)
            if now + step_s + essential <= clock.deadline:
                stop, last_next, late = False, True, False
                self._floor_step = True
        # Every rank takes rank 0's values: the same rate (progress and step share), freeze, validation and stop.
        flags = self._rank_zero(trainer, clock.progress, self.step_share, stop, validate, last_next, late)
        clock.progress, self.step_share, stop, validate, last_next, late = flags
        self._last_step_next = last_next
        if stop:
            clock.progress = 1.0
            self.stopped = trainer.should_stop = True
            self.train_ended = now
            if late and trainer.enable_validation:
                if self._validates_at_stop(trainer):
                    log.info(
                        "budget: %s past the time for training; no validation of the final weights",
                        format_duration(now - clock.train_end),
                    )
                trainer.limit_val_batches = 0  # Lightning validates on a stop otherwise
        elif validate:
            trainer.val_check_batch = trainer.fit_loop.epoch_loop.total_batch_idx + 1
        if last_next or stop:
            # Lightning set the next step's rate before this hook; set it again from the decision just taken.
            for config in trainer.lr_scheduler_configs:
                config.scheduler.step()

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch, batch_idx) -> None:
        self.trained_at = self._next

    def _rank_zero(self, trainer: L.Trainer, progress: float, *values: float | bool) -> tuple[Any, ...]:
        """Rank 0's progress and values (floats, then decisions) on every rank (DDP): all ranks follow one clock,
        so they set the same rate and switch the freeze, validate and stop at the same step."""
        if trainer.world_size <= 1 or not torch.distributed.is_initialized():
            return (progress, *values)
        sent = torch.tensor([progress, *map(float, values)], dtype=torch.float64)
        sent = sent.to(trainer.strategy.root_device) * float(trainer.is_global_zero)
        torch.distributed.all_reduce(sent, op=torch.distributed.ReduceOp.MAX)  # the others sent zeros
        got = sent.tolist()
        return tuple(g > 0.5 if isinstance(v, bool) else g for g, v in zip(got, (progress, *values)))

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._val_start = time.time()

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        now = time.time()
        batches = sum(trainer.num_val_batches)
        if batches:
            self.val_batches = batches
            # Work a task does once, in its first validation (a GAN's feature networks loaded and the real images'
            # features extracted), is not what each later validation and the final evaluation cost: counted in,
            # it would end training minutes early.
            once = float(getattr(module, "validation_once_s", 0.0) or 0.0)
            per_batch = max(0.0, now - self._val_start - once) / batches
            self._measured_validation(per_batch, per_batch)
            self._validated = True
        self._last = self._last_val = now
        trainer.val_check_batch = NEVER

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        now = self._epoch_end = time.time()
        if trainer.should_stop:
            trainer.fit_loop.max_epochs = trainer.current_epoch + 1  # the epoch line reads "epoch 6/6"
            return
        # The Trainer's epoch count is the clock's estimate (what the progress bar and epoch lines show); training
        # goes on until the clock stops it, however many epochs that is.
        epoch_s = now - self._epoch_start
        if self._steps:  # steadier than the last epoch's time alone
            epoch_s = statistics.median(self._steps) * trainer.num_training_batches + self.costs.ckpt_s
        left = max(0.0, self.clock.train_end - now) / max(1e-3, epoch_s)
        trainer.fit_loop.max_epochs = trainer.current_epoch + 1 + max(1, round(left))

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.train_ended = self.train_ended or time.time()

    def _at_floor(self, progress: float) -> bool:
        """Whether a step at `progress` trains at the cosine's floor ("lr at floor": the decay 98 % done); True
        for schedules without a floor."""
        if self.optim.get("scheduler") != "cosine":
            return True
        floor = self.optim.get("min_lr_ratio", 0.0)
        factor = lr_factor(self.optim, progress, self.shares.warmup, self.recipe_epochs)
        return factor - floor <= AT_FLOOR * (1 - floor) + 1e-9

    # ---- the end line ---------------------------------------------------------------------------------------
    def summary(self, epochs: float, eval_s: float, stopped_by: str) -> str:
        """The end line: "budget 3m: trained 2m41s, evaluation 6s, 14 epochs (98 steps), lr at floor; stopped by
        deadline, 2m55s used"."""
        trained = (self.train_ended or time.time()) - self.train_started
        factor = lr_factor(self.optim, self.trained_at, self.shares.warmup, self.recipe_epochs)
        cosine = self.optim.get("scheduler") == "cosine"
        lr = "lr at floor" if cosine and self._at_floor(self.trained_at) else f"lr at {factor:.2g}x"
        used = time.time() - self.started
        return (
            f"budget {format_duration(self.budget_s)}: trained {format_duration(trained)}, evaluation "
            f"{format_duration(eval_s)}, {epochs:g} epochs ({self.steps_done} steps), {lr}; stopped by {stopped_by}, "
            f"{format_duration(used)} used"
        )
