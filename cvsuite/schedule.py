"""The training schedule as a function of progress, the share of the schedule done (0 -> 1): pure maths, no torch.

Progress is the optimiser step over the total steps in an epoch-based run, and the share of the training time spent
under ``run.budget`` (`Clock`). Warm-up, freeze and the cosine are shares of it, so a 3-epoch run, a 30-epoch run and
a 3-minute budget get the same shape. Older recipes give warm-up and freeze in epochs; `shares` turns those into the
same shares of ``trainer.max_epochs``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, NamedTuple

from cvsuite.errors import ConfigError

_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}

# Validations inside training may take at most this share of the training time; they are also at least this far
# apart, as a share of the training time (a cheap validation every few seconds only fills metrics.csv).
VAL_SHARE = 0.2
MIN_VAL_GAP = 0.05
# What follows training and cannot be measured before it runs: plots (matplotlib's import alone is ~1 s), metrics.json,
# the process exit (DataLoader workers, interpreter), seconds plus a share of the budget for a noisy machine.
PLOTS_S = 2.0
EXIT_S = 2.0
EXIT_SHARE = 0.02
# The final evaluation's own set-up besides its batches: a Trainer, best.ckpt loaded, the loader started.
FINAL_FIXED_S = 1.5
# Measured costs of what follows training are scaled by this: the machine may be busier at the end.
SAFETY = 1.25


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


def format_duration(seconds: float) -> str:
    """``161`` -> ``"2m41s"``, ``180`` -> ``"3m"``, ``6.4`` -> ``"6s"``, ``3900`` -> ``"1h05m"``."""
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m" + (f"{s % 60:02d}s" if s % 60 else "")
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


# ---- the shape of the schedule --------------------------------------------------------------------------------
class Shares(NamedTuple):
    """Warm-up and freeze as shares of the schedule (0 = none)."""

    warmup: float
    freeze: float


def _share(share: float | None, epochs: float, total: int, key: str, epochs_key: str) -> float:
    if share is not None:
        if epochs:
            raise ConfigError(
                f"{key} and {epochs_key} are both set; give the phase once: a share of the schedule, or epochs "
                f"with --{key} null"
            )
        if not 0.0 <= share < 1.0:
            raise ConfigError(f"{key} must be a share of the schedule in [0, 1), got {share}")
        return float(share)
    if epochs < 0:
        raise ConfigError(f"{epochs_key} must be >= 0, got {epochs}")
    return min(1.0, float(epochs) / max(1, total))


def shares(optim: dict[str, Any], finetune: dict[str, Any], epochs: int) -> Shares:
    """The recipe's warm-up and freeze as shares of a schedule of `epochs` epochs (``trainer.max_epochs``; under
    ``run.budget`` only the older epoch keys need it). A share key and its epoch key together are an error."""
    warmup = _share(
        optim.get("warmup_share"), optim.get("warmup_epochs") or 0.0, epochs, "optim.warmup_share",
        "optim.warmup_epochs",
    )  # fmt: skip
    freeze = _share(
        finetune.get("freeze_share"), finetune.get("freeze_epochs") or 0, epochs, "finetune.freeze_share",
        "finetune.freeze_epochs",
    )  # fmt: skip
    return Shares(warmup, freeze)


def lr_factor(optim: dict[str, Any], progress: float, warmup: float, epochs: int = 1, first: float = 0.0) -> float:
    """The multiplier of the base learning rate at `progress` (share of the schedule done): a linear warm-up over
    the first `warmup` of it, then ``optim.scheduler``: a cosine from 1 to ``optim.min_lr_ratio`` at progress 1, a
    step decay by ``optim.gamma`` every ``optim.step_size`` of `epochs` epochs, or constant.

    `first` is the share of one step: the first step of a warm-up trains at ``first / warmup`` of the rate, not 0.
    """
    name = str(optim.get("scheduler", "cosine")).lower()
    if name not in ("none", "step", "cosine"):
        raise ConfigError(f"optim.scheduler: unknown '{name}'. Choose one of none, step, cosine")
    progress = min(1.0, max(0.0, progress))
    if progress < warmup:
        return min(1.0, (progress + first) / warmup)
    if name == "cosine":
        floor = float(optim.get("min_lr_ratio", 0.0))
        q = (progress - warmup) / max(1e-12, 1.0 - warmup)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, q)))
    if name == "step":
        every = float(optim.get("step_size", 10)) / max(1, epochs)
        return float(optim.get("gamma", 0.1)) ** math.floor((progress - warmup) / max(1e-12, every) + 1e-9)
    return 1.0


def cached_epochs(finetune: dict[str, Any], epochs: int) -> int:
    """Frozen epochs with ``finetune.cache_features``: the head trains on cached features for whole epochs (their
    loader holds features, not images), so the phase is kept whole and never drops to zero: ``freeze_epochs``, or
    the freeze share of `epochs` rounded, at least one."""
    if finetune.get("freeze_epochs"):
        return int(finetune["freeze_epochs"])
    return max(1, round(float(finetune.get("freeze_share") or 0.0) * epochs))


# ---- the clock of a budget run ------------------------------------------------------------------------------
@dataclass
class Costs:
    """What the run measured (seconds); None until measured."""

    step_s: float | None = None  # one training step, its data loading included
    val_s: float | None = None  # one validation inside training, best.ckpt written
    final_s: float | None = None  # the final evaluation of the whole validation split, set-up included
    ckpt_s: float = 0.0  # an epoch end: last.ckpt written, metrics.csv, callbacks
    after_s: float = EXIT_S  # after the final evaluation: plots, metrics.json, the exit


def reserve_s(costs: Costs, validates: bool) -> float:
    """Seconds kept free after training: the validation of the final weights (when the run validates), the last
    checkpoints, the final evaluation and what follows it."""
    measured = (costs.val_s or 0.0) * validates + costs.ckpt_s + (costs.final_s or 0.0)
    return SAFETY * measured + costs.after_s


class Clock:
    """Progress against a deadline: the share of the training time spent, where training must end `reserve`
    seconds before `deadline` (a Unix time by which the whole process ends).

    Progress runs linearly from an anchor (time, progress) to 1 at ``deadline - reserve``. Whenever the reserve is
    re-estimated the clock re-anchors at the current progress, so progress never jumps or goes back: what is left
    of the schedule is spread over what is left of the time. Times are passed in, so the maths is testable.
    """

    def __init__(self, deadline: float, now: float, progress: float = 0.0, reserve: float = 0.0) -> None:
        self.deadline = deadline
        self.reserve = reserve
        self.progress = min(1.0, max(0.0, progress))
        self.started = now  # the first training step of this process
        self._t, self._p = now, self.progress

    @property
    def train_end(self) -> float:
        return self.deadline - self.reserve

    def anchor(self, now: float, progress: float | None = None) -> None:
        """Continue from `progress` (default: the current one) at `now`."""
        self._p = self.progress = min(1.0, max(self.progress if progress is None else progress, 0.0))
        self._t = now

    def set_reserve(self, reserve: float, now: float) -> None:
        self.update(now)
        self.anchor(now)
        self.reserve = reserve

    def update(self, now: float) -> float:
        """The progress at `now` (never less than before)."""
        left = self.train_end - self._t
        p = 1.0 if left <= 0 else self._p + (1.0 - self._p) * (now - self._t) / left
        self.progress = min(1.0, max(self.progress, p))
        return self.progress

    def out_of_time(self, now: float, next_s: float) -> bool:
        """Whether the next piece of work (`next_s` seconds: a step, and at an epoch end its checkpoints) would end
        past the time training has."""
        return self.progress >= 1.0 or now + next_s > self.train_end

    def validation_due(
        self, now: float, last_val: float, val_s: float, at_epoch_end: bool, epoch_rest_s: float
    ) -> bool:
        """Whether to validate now: at least `gap` seconds since the last validation (so validations take at most
        VAL_SHARE of the training time, and are at least MIN_VAL_GAP of it apart), preferably at an epoch end; inside
        an epoch only when its end is still more than half a gap away (an epoch longer than the gap: validation by
        time). Never when training ends within half a gap: the final weights are validated then anyway."""
        gap = max(val_s / VAL_SHARE, MIN_VAL_GAP * max(0.0, self.train_end - self.started))
        if now - last_val < gap or self.train_end - now < 0.5 * gap:
            return False
        return at_epoch_end or epoch_rest_s > 0.5 * gap
