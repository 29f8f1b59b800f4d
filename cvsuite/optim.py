"""Optimisers, parameter groups and learning-rate schedules from the `optim` and `finetune` config sections."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from cvsuite.config import ConfigError
from cvsuite.schedule import lr_factor, shares

OPTIMIZERS = ("sgd", "rmsprop", "adam", "adamw")
SCHEDULERS = ("none", "step", "cosine")  # cvsuite.schedule.lr_factor


def _no_decay(name: str, param: nn.Parameter) -> bool:
    # Norm weights and biases are 1-D; decaying them only fights the normalisation (timm does the same).
    return param.ndim <= 1 or name.endswith(".bias")


def _layer_ids(backbone: nn.Module, num_groups: int = 12) -> dict[str, int]:
    """Depth index of each backbone parameter, 0 = closest to the input."""
    names = [n for n, _ in backbone.named_parameters()]
    if hasattr(backbone, "group_matcher"):
        from timm.models import group_parameters

        ids = group_parameters(backbone, backbone.group_matcher(coarse=False), reverse=True)
        if ids and max(ids.values()) > 0:
            return {n: ids.get(n, max(ids.values())) for n in names}
    # features_only wrappers have no group matcher: split the parameters, in order, into even groups.
    per = max(1, math.ceil(len(names) / num_groups))
    return {n: i // per for i, n in enumerate(names)}


def param_groups(
    model: nn.Module,
    backbone: nn.Module | None,
    lr: float,
    weight_decay: float,
    no_decay_norm_bias: bool = True,
    backbone_lr_mult: float = 1.0,
    layer_decay: float | None = None,
) -> list[dict[str, Any]]:
    """Split `model`'s parameters into groups with their own lr and weight decay.

    Everything outside `backbone` is the new head and gets `lr`; backbone parameters get
    ``lr * backbone_lr_mult``, further scaled by ``layer_decay ** (depth from the top)`` when set.
    Frozen parameters are kept in the groups: freezing is done with requires_grad, so the optimiser
    state is complete when they are unfrozen (and across a resume).
    """
    backbone_ids = {id(p) for p in backbone.parameters()} if backbone is not None else set()
    layer_of = _layer_ids(backbone) if (backbone is not None and layer_decay) else {}
    depth = max(layer_of.values()) + 1 if layer_of else 0
    prefix = _module_prefix(model, backbone)
    groups: dict[tuple[float, float], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        scale = 1.0
        if id(param) in backbone_ids:
            scale = backbone_lr_mult
            if layer_of:
                scale *= layer_decay ** (depth - layer_of.get(name[len(prefix) :], depth - 1))
        wd = 0.0 if (no_decay_norm_bias and _no_decay(name, param)) else weight_decay
        key = (scale, wd)
        group = groups.setdefault(key, {"params": [], "lr": lr * scale, "weight_decay": wd, "lr_scale": scale})
        group["params"].append(param)
    return list(groups.values())


def _module_prefix(model: nn.Module, child: nn.Module | None) -> str:
    if child is None:
        return ""
    for name, module in model.named_modules():
        if module is child:
            return f"{name}." if name else ""
    return ""


def build_optimizer(groups: list[dict[str, Any]], optim: dict[str, Any]) -> torch.optim.Optimizer:
    name = optim["optimizer"].lower()
    lr = optim["lr"]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=optim["momentum"], nesterov=optim["nesterov"])
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, momentum=optim["momentum"], alpha=0.9, eps=1e-3)
    if name == "adam":
        # Adam's weight_decay is classic L2 added to the gradient; AdamW's is decoupled.
        return torch.optim.Adam(groups, lr=lr, betas=tuple(optim["betas"]))
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(optim["betas"]))
    raise ConfigError(f"optim.optimizer: unknown '{name}'. Choose one of {', '.join(OPTIMIZERS)}")


def lr_lambda(optim: dict[str, Any], total_steps: int, steps_per_epoch: int) -> Callable[[int], float]:
    """Per-step multiplier of the base lr over `total_steps` steps: warm-up, then step or cosine decay, all as
    shares of the schedule (`cvsuite.schedule.lr_factor`); ``warmup_epochs`` count `steps_per_epoch` steps each."""
    epochs = max(1, round(total_steps / max(1, steps_per_epoch)))
    warmup = shares(optim, {}, epochs).warmup
    return progress_lambda(optim, lambda step: step / max(1, total_steps), warmup, epochs, 1 / max(1, total_steps))


def progress_lambda(
    optim: dict[str, Any], progress: Callable[[int], float], warmup: float, epochs: int, first: float
) -> Callable[[int], float]:
    """Per-step multiplier of the base lr, where `progress` maps the scheduler's step count to the share of the
    schedule done (steps over the total in an epoch-based run; the clock's share of the time under run.budget)."""
    lr_factor(optim, 0.0, warmup)  # an unknown optim.scheduler fails here, before training

    def fn(step: int) -> float:
        return lr_factor(optim, progress(step), warmup, epochs, first)

    return fn


def build_scheduler(optimizer: torch.optim.Optimizer, optim: dict[str, Any], total_steps: int, steps_per_epoch: int):
    """The epoch-based schedule of `total_steps` optimiser steps (see `lr_lambda`), stepped every step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(optim, total_steps, steps_per_epoch))


def progress_scheduler(
    optimizer: torch.optim.Optimizer,
    optim: dict[str, Any],
    progress: Callable[[int], float],
    warmup: float,
    epochs: int = 1,
    first: float = 0.0,
):
    """A scheduler whose rate follows `progress` (see `progress_lambda`), stepped every optimiser step. Its state
    is the step count only: a resumed run gets its rate from the restored progress, not from stored numbers."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, progress_lambda(optim, progress, warmup, epochs, first))
