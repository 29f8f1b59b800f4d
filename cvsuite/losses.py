"""Classification losses by name: cross-entropy (label smoothing, class weights), BCE-with-logits for
multi-label, focal loss for imbalance. Soft targets (mixup/cutmix) go through the same functions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cvsuite.config import ConfigError

LOSSES = ("ce", "bce", "focal")


class FocalLoss(nn.Module):
    """Focal loss (Lin et al., 2017): CE scaled by (1 - p_t)^gamma, so easy examples weigh less.

    Softmax over classes for single-label targets (N,) or soft targets (N, C); sigmoid per class when
    `multilabel` (targets (N, C) in [0, 1], via torchvision's sigmoid_focal_loss).
    """

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None, multilabel: bool = False) -> None:
        super().__init__()
        self.gamma = gamma
        self.multilabel = multilabel
        self.register_buffer("weight", weight if weight is not None else None, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.multilabel:
            from torchvision.ops import sigmoid_focal_loss

            loss = sigmoid_focal_loss(logits, target.float(), alpha=-1, gamma=self.gamma, reduction="none")
            if self.weight is not None:
                loss = loss * self.weight
            return loss.mean()
        logp = F.log_softmax(logits.float(), dim=-1)
        soft = target if target.ndim == 2 else F.one_hot(target, logits.shape[-1]).float()
        focal = (1 - logp.exp()) ** self.gamma * logp
        if self.weight is not None:
            focal = focal * self.weight
        return -(soft * focal).sum(-1).mean()


class SoftCrossEntropy(nn.Module):
    """Cross-entropy that also takes soft (N, C) targets, e.g. from mixup/cutmix.

    Label smoothing applies to hard (N,) targets only: soft targets come from timm's ``Mixup``, which has smoothed
    them already (with the same ``label_smoothing``), and smoothing them again would count it twice.
    """

    def __init__(self, weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing
        self.register_buffer("weight", weight if weight is not None else None, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        smoothing = self.label_smoothing if target.ndim == 1 else 0.0
        return F.cross_entropy(logits, target, weight=self.weight, label_smoothing=smoothing)


def build_loss(
    name: str,
    multilabel: bool,
    class_weights: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    focal_gamma: float = 2.0,
) -> nn.Module:
    """`name`: ce | bce | focal. Multi-label data needs bce or focal (one sigmoid per class)."""
    if name not in LOSSES:
        raise ConfigError(f"model.loss: unknown '{name}'. Choose one of {', '.join(LOSSES)}")
    if name == "focal":
        return FocalLoss(focal_gamma, class_weights, multilabel)
    if multilabel:
        if name == "ce":
            raise ConfigError("model.loss: 'ce' is single-label; this data is multi-label, use 'bce' or 'focal'")
        return nn.BCEWithLogitsLoss(pos_weight=class_weights)
    if name == "bce":
        raise ConfigError("model.loss: 'bce' is for multi-label data; this data is single-label, use 'ce' or 'focal'")
    return SoftCrossEntropy(class_weights, label_smoothing)
