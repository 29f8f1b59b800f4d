"""Every loss / optimiser / schedule choice builds and trains a step; lr groups and schedules are right."""

from __future__ import annotations

import math
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F

from cvsuite.config import OptimConfig
from cvsuite.losses import FocalLoss, build_loss
from cvsuite.models.backbone import create_backbone
from cvsuite.models.heads import ClassifierHead
from cvsuite.optim import build_optimizer, lr_lambda, param_groups


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = create_backbone("test_efficientnet", pretrained=False)
        self.head = ClassifierHead(self.backbone.num_features, 3, 0.0, "he")

    def forward(self, x):
        return self.head(self.backbone(x))


def batch():
    torch.manual_seed(0)
    return torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2])


@pytest.mark.parametrize("optimizer", ["sgd", "rmsprop", "adam", "adamw"])
@pytest.mark.parametrize("loss", ["ce", "focal"])
def test_each_optimiser_and_loss_reduces_loss(optimizer, loss):
    model = Tiny()
    cfg = {**asdict(OptimConfig()), "optimizer": optimizer, "lr": {"sgd": 0.1, "rmsprop": 0.001}.get(optimizer, 0.01)}
    opt = build_optimizer(param_groups(model, model.backbone, cfg["lr"], 1e-4), cfg)
    criterion = build_loss(loss, multilabel=False, label_smoothing=0.1 if loss == "ce" else 0.0)
    x, y = batch()
    model.eval()  # fixed BatchNorm statistics, so the loss is comparable before/after
    with torch.no_grad():
        first = float(criterion(model(x), y))
    for _ in range(5):
        opt.zero_grad()
        criterion(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        assert float(criterion(model(x), y)) < first


def test_bce_multilabel_and_wrong_pairings():
    logits, target = torch.randn(4, 3), torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]]).float()
    assert torch.isclose(build_loss("bce", True)(logits, target), F.binary_cross_entropy_with_logits(logits, target))
    assert build_loss("focal", True)(logits, target) > 0
    with pytest.raises(ValueError, match="multi-label"):
        build_loss("ce", True)
    with pytest.raises(ValueError, match="single-label"):
        build_loss("bce", False)
    with pytest.raises(ValueError, match="Choose one of"):
        build_loss("hinge", False)


def test_focal_loss_is_ce_at_gamma_zero_and_downweights_easy_examples():
    logits, target = torch.tensor([[4.0, 0.0], [0.2, 0.0]]), torch.tensor([0, 0])
    assert torch.isclose(FocalLoss(0.0)(logits, target), F.cross_entropy(logits, target))
    per_example = [float(FocalLoss(2.0)(logits[i : i + 1], target[i : i + 1])) for i in range(2)]
    ce = [float(F.cross_entropy(logits[i : i + 1], target[i : i + 1])) for i in range(2)]
    assert per_example[0] / ce[0] < per_example[1] / ce[1]  # the easy one (p=0.98) loses more weight


def test_class_weights_change_the_loss():
    logits, target = torch.zeros(2, 2), torch.tensor([0, 1])
    weighted = build_loss("ce", False, class_weights=torch.tensor([1.0, 3.0]))
    assert torch.isclose(weighted(logits, target), torch.tensor(math.log(2)))  # weighted mean of equal CEs
    logits = torch.tensor([[0.0, 2.0], [0.0, 2.0]])
    assert weighted(logits, target) != build_loss("ce", False)(logits, target)


def test_param_groups_backbone_lr_layer_decay_and_no_decay():
    model = Tiny()
    groups = param_groups(model, model.backbone, lr=1.0, weight_decay=0.1, backbone_lr_mult=0.1, layer_decay=0.5)
    head_ids = {id(p) for p in model.head.parameters()}
    stem = model.backbone.conv_stem.weight
    last = model.backbone.conv_head.weight
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert all(lr_of[i] == 1.0 for i in head_ids)
    assert lr_of[id(stem)] < lr_of[id(last)] <= 0.1 * 0.5 + 1e-12  # deeper = closer to the head = larger lr
    assert wd_of[id(model.head[1].bias)] == 0.0 and wd_of[id(model.backbone.bn1.weight)] == 0.0
    assert wd_of[id(model.head[1].weight)] == 0.1
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_schedules_with_warmup():
    cfg = {**asdict(OptimConfig()), "warmup_epochs": 1, "scheduler": "cosine", "min_lr_ratio": 0.0}
    f = lr_lambda(cfg, total_steps=110, steps_per_epoch=10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.5) and f(110) == pytest.approx(0.0)
    step = lr_lambda({**cfg, "scheduler": "step", "step_size": 2, "gamma": 0.1}, 110, 10)
    assert step(10) == 1.0 and step(29) == 1.0 and step(30) == pytest.approx(0.1) and step(50) == pytest.approx(0.01)
    assert lr_lambda({**cfg, "scheduler": "none", "warmup_epochs": 0}, 110, 10)(77) == 1.0
    with pytest.raises(ValueError, match="optim.scheduler"):
        lr_lambda({**cfg, "scheduler": "poly"}, 10, 1)


def test_head_init_schemes():
    xavier = ClassifierHead(512, 10, init="xavier")[1].weight.detach()
    he = ClassifierHead(512, 10, init="he")[1].weight.detach()
    assert xavier.abs().max() <= math.sqrt(6 / (512 + 10)) + 1e-6
    assert he.std() == pytest.approx(math.sqrt(2 / 512), rel=0.15)
    with pytest.raises(ValueError, match="head_init"):
        ClassifierHead(4, 2, init="orthogonal")
