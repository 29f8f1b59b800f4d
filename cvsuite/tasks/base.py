"""The one base class of all tasks: optimiser/schedule and the transfer-learning controls (freeze, unfreeze,
backbone lr, layer decay, BatchNorm kept in eval while frozen). Tasks hold the model parts as attributes;
whatever lives under ``self.backbone`` is the pretrained trunk, everything else is new.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
from torch import nn

from cvsuite.optim import build_optimizer, build_scheduler, param_groups


class BaseTask(L.LightningModule):
    backbone: nn.Module

    def __init__(self, optim: dict[str, Any], finetune: dict[str, Any]) -> None:
        super().__init__()
        self.optim_cfg = dict(optim)
        self.finetune_cfg = dict(finetune)
        # The full metric dict (per-class values, matrices) of the last validation epoch; eval.py reads it.
        self.last_metrics: dict[str, Any] = {}

    # ---- transfer learning -------------------------------------------------------------------------------
    def backbone_frozen(self, epoch: int | None = None) -> bool:
        epoch = self.current_epoch if epoch is None else epoch
        return bool(self.finetune_cfg.get("freeze_backbone")) or epoch < int(self.finetune_cfg.get("freeze_epochs", 0))

    def apply_freeze(self) -> None:
        """Set requires_grad (and BatchNorm mode) of the backbone for the current epoch.

        It depends only on current_epoch, so a run resumed mid-schedule freezes or unfreezes exactly as the
        uninterrupted run would.
        """
        frozen = self.backbone_frozen()
        for p in self.backbone.parameters():
            p.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> BaseTask:
        super().train(mode)
        if mode and self.finetune_cfg.get("bn_eval_when_frozen", True) and self._trunk_frozen():
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def _trunk_frozen(self) -> bool:
        params = list(self.backbone.parameters()) if hasattr(self, "backbone") else []
        return bool(params) and not any(p.requires_grad for p in params)

    def on_fit_start(self) -> None:
        self.apply_freeze()

    def on_train_epoch_start(self) -> None:
        self.apply_freeze()

    def head_parameters(self) -> list[nn.Parameter]:
        """Weights (not biases) of everything outside the backbone, for the optional L1 penalty."""
        trunk = {id(p) for p in self.backbone.parameters()}
        return [p for n, p in self.named_parameters() if id(p) not in trunk and p.ndim > 1]

    def l1_penalty(self):
        weight = float(self.optim_cfg.get("l1_head", 0.0))
        if weight <= 0:
            return 0.0
        return weight * sum(p.abs().sum() for p in self.head_parameters())

    # ---- optimisation ------------------------------------------------------------------------------------
    def configure_optimizers(self):
        groups = param_groups(
            self,
            self.backbone,
            lr=self.optim_cfg["lr"],
            weight_decay=self.optim_cfg["weight_decay"],
            no_decay_norm_bias=self.optim_cfg.get("no_decay_norm_bias", True),
            backbone_lr_mult=self.finetune_cfg.get("backbone_lr_mult", 1.0),
            layer_decay=self.finetune_cfg.get("layer_decay"),
        )
        optimizer = build_optimizer(groups, self.optim_cfg)
        total = int(self.trainer.estimated_stepping_batches)
        epochs = max(1, int(self.trainer.max_epochs or 1))
        per_epoch = max(1, math.ceil(total / epochs))
        scheduler = build_scheduler(optimizer, self.optim_cfg, total, per_epoch)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
