"""Label smoothing is applied once: with mixup/cutmix, timm's Mixup smooths the targets and the loss must not
smooth them again."""

from __future__ import annotations

import math

import pytest
import torch

from cvsuite.losses import build_loss


def test_mixed_soft_targets_are_not_smoothed_twice():
    # Two classes, smoothing 0.2: timm's Mixup turns class 0 into (0.9, 0.1) and class 1 into (0.1, 0.9); mixing
    # them with lam = 0.75 gives (0.7, 0.3). Logits (1, 0): log p = (log e/(1+e), log 1/(1+e)).
    logits = torch.tensor([[1.0, 0.0]])
    soft = torch.tensor([[0.7, 0.3]])
    log_p0, log_p1 = 1 - math.log(1 + math.e), -math.log(1 + math.e)
    once = -(0.7 * log_p0 + 0.3 * log_p1)  # 0.6133
    twice = -(0.66 * log_p0 + 0.34 * log_p1)  # what smoothing (0.7, 0.3) again by 0.2 would give: 0.6533
    loss = build_loss("ce", multilabel=False, label_smoothing=0.2)
    assert float(loss(logits, soft)) == pytest.approx(once, abs=1e-6)
    assert abs(once - twice) > 0.03
    # Hard targets (a batch mixup skipped) are still smoothed by the loss: (0.9, 0.1) for class 0.
    assert float(loss(logits, torch.tensor([0]))) == pytest.approx(-(0.9 * log_p0 + 0.1 * log_p1))


def test_the_task_with_mixup_smooths_once_as_timm_mixup_does():
    from timm.data import Mixup

    torch.manual_seed(0)
    logits = torch.randn(4, 3)
    labels = torch.tensor([0, 1, 2, 1])
    mixup = Mixup(mixup_alpha=1.0, label_smoothing=0.1, num_classes=3, mode="batch")
    images, soft = mixup(torch.zeros(4, 3, 8, 8), labels)
    # timm's own target: lam * smooth(y) + (1 - lam) * smooth(y flipped), rows summing to 1, no further smoothing.
    expected = -(soft * logits.log_softmax(-1)).sum(-1).mean()
    loss = build_loss("ce", multilabel=False, label_smoothing=0.1)
    torch.testing.assert_close(loss(logits, soft), expected)
    assert soft.min() > 0.0  # the targets were smoothed (by Mixup)
