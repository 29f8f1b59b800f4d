"""Detectors on the shared backbone: the three torchvision heads train and predict, a tiny FCOS learns synthetic
boxes, and the transfer-learning controls reach the trunk inside the detector."""

from __future__ import annotations

import pytest
import torch

from cvsuite.models.detection import Detector
from cvsuite.optim import param_groups
from cvsuite.tasks.detection import DetectionTask, to_original

TINY = dict(backbone="test_efficientnet", pretrained=False, fpn_channels=64, image_size=64)
OPTIM = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "scheduler": "none", "warmup_epochs": 0.0}


def _batch(n: int = 2, size: int = 64, seed: int = 0):
    """Bright squares on a dark background, one per image, class = which half of the image it is in."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(n):
        img = torch.rand(3, size, size, generator=g) * 0.3 - 1
        s = int(torch.randint(14, 24, (1,), generator=g))
        x, y = (int(v) for v in torch.randint(0, size - s, (2,), generator=g))
        img[:, y : y + s, x : x + s] = 0.9
        images.append(img)
        label = int(x + s / 2 > size / 2)
        targets.append(
            {"boxes": torch.tensor([[x, y, x + s, y + s]], dtype=torch.float), "labels": torch.tensor([label])}
        )
    return images, targets


@pytest.mark.parametrize(
    "architecture, loss_keys",
    [
        ("fcos", {"classification", "bbox_regression", "bbox_ctrness"}),
        ("retinanet", {"classification", "bbox_regression"}),
        ("faster_rcnn", {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}),
    ],
)
def test_each_architecture_trains_and_predicts(architecture, loss_keys):
    torch.manual_seed(0)
    det = Detector(architecture, num_classes=2, score_thresh=0.0, max_detections=5, **TINY)
    images, targets = _batch()
    images.append(torch.zeros(3, 48, 64))  # another size, and no objects: both must be accepted
    targets.append({"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)})
    det.train()
    losses = det(images, targets)
    assert set(losses) == loss_keys
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert det.trunk.conv_stem.weight.grad is not None and det.trunk.conv_stem.weight.grad.abs().sum() > 0
    det.eval()
    with torch.no_grad():
        out = det(images)
    assert len(out) == 3
    for o, im in zip(out, images):
        assert 0 < len(o["boxes"]) <= 5
        # Labels are 0..K-1 for every head (Faster R-CNN's background slot is hidden).
        assert o["labels"].min() >= 0 and o["labels"].max() < 2
        assert (o["boxes"][:, 2] <= im.shape[-1] + 1e-3).all() and (o["boxes"][:, 3] <= im.shape[-2] + 1e-3).all()


def test_any_timm_backbone_fits():
    # A ResNet trunk (other channels per level than EfficientNet) under RetinaNet, levels chosen by index.
    det = Detector("retinanet", 3, **{**TINY, "backbone": "test_resnet", "out_indices": [2, 3, 4]}).eval()
    assert det.model.backbone.strides == [8, 16, 32, 64, 128]
    with torch.no_grad():
        out = det([torch.zeros(3, 64, 96)])
    assert set(out[0]) == {"boxes", "scores", "labels"}


def test_a_tiny_fcos_loss_falls_on_synthetic_boxes():
    torch.manual_seed(0)
    det = Detector("fcos", num_classes=2, head_convs=2, **TINY)
    images, targets = _batch(n=4)
    opt = torch.optim.Adam(det.parameters(), lr=3e-3)
    det.train()
    history = []
    for _ in range(20):
        losses = det(images, targets)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        history.append({k: float(v) for k, v in losses.items()})
    total = [sum(h.values()) for h in history]
    assert sum(total[-3:]) / 3 < 0.6 * sum(total[:3]) / 3, total
    # Not only the class prior settling: the box regression (GIoU) improves as well.
    assert history[-1]["bbox_regression"] < 0.9 * history[0]["bbox_regression"], history


def test_validation_losses_leave_the_model_untouched():
    det = Detector("fcos", num_classes=2, **TINY)
    det.eval()
    bn = next(m for m in det.trunk.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    images, targets = _batch()
    losses = det.losses(images, targets)
    assert set(losses) == {"classification", "bbox_regression", "bbox_ctrness"}
    assert torch.equal(bn.running_mean, before)
    assert not any(m.training for m in det.modules())


def test_postprocess_settings_apply_to_every_head():
    images, _ = _batch()
    for arch in ("fcos", "retinanet", "faster_rcnn"):
        det = Detector(arch, num_classes=2, score_thresh=0.0, max_detections=3, **TINY).eval()
        with torch.no_grad():
            assert all(len(o["boxes"]) <= 3 for o in det(images))
            det.set_postprocess(score_thresh=1.01, nms_iou=0.5, max_detections=3)
            assert all(len(o["boxes"]) == 0 for o in det(images))


def test_unknown_architecture_is_named():
    with pytest.raises(ValueError, match="model.architecture: unknown 'yolo'. Choose one of fcos, retinanet"):
        Detector("yolo", num_classes=1, **TINY)
    with pytest.raises(ValueError, match="fpn_channels must be a multiple of 32 and at least 64 for fcos, got 32"):
        Detector("fcos", num_classes=1, **{**TINY, "fpn_channels": 32})


def _task(**kw) -> DetectionTask:
    finetune = {"freeze_epochs": 0, "backbone_lr_mult": 0.1, **kw.pop("finetune", {})}
    tiny = {k: v for k, v in TINY.items()}
    return DetectionTask(["a", "b"], OPTIM, finetune, **tiny, **kw)


def test_freeze_and_backbone_lr_reach_the_trunk():
    task = _task(finetune={"freeze_backbone": True})
    assert task.backbone is task.detector.model.backbone.body
    task.apply_freeze()
    trunk = {id(p) for p in task.backbone.parameters()}
    assert all(not p.requires_grad for p in task.backbone.parameters())
    assert all(p.requires_grad for p in task.parameters() if id(p) not in trunk)  # FPN and head still learn
    task.train()
    assert not any(m.training for m in task.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    groups = param_groups(task, task.backbone, lr=1.0, weight_decay=0.0, backbone_lr_mult=0.1)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert {round(lr_of[i], 9) for i in trunk} == {0.1}
    assert {v for k, v in lr_of.items() if k not in trunk} == {1.0}
    # The trunk is stored once in the checkpoint (a property, not a second registered module).
    assert not any(k.startswith("backbone.") for k in task.state_dict())


def test_checkpoint_round_trip_predicts_the_same(tmp_path):
    import lightning as L

    torch.manual_seed(0)
    task = _task(score_thresh=0.0, eval_pipeline=None).eval()
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_epochs=0)
    trainer.strategy.connect(task)
    trainer.save_checkpoint(tmp_path / "t.ckpt")
    loaded = DetectionTask.load_from_checkpoint(tmp_path / "t.ckpt", pretrained=False).eval()
    images, _ = _batch()
    with torch.no_grad():
        a, b = task(images), loaded(images)
    assert loaded.hparams.class_names == ["a", "b"]
    torch.testing.assert_close(a[0]["boxes"], b[0]["boxes"])


def test_mixed_precision_step_is_finite():
    det = Detector("fcos", num_classes=2, **TINY).train()
    images, targets = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = det(images, targets)
    loss = sum(losses.values())
    loss.backward()
    assert torch.isfinite(loss)


def test_boxes_map_back_to_the_original_image():
    pred = [
        {"boxes": torch.tensor([[10.0, 5.0, 20.0, 15.0]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}
    ]
    out = to_original(pred, [torch.zeros(3, 32, 64)], [(96, 256)])  # input is the original shrunk 4x / 3x
    torch.testing.assert_close(out[0]["boxes"], torch.tensor([[40.0, 15.0, 80.0, 45.0]]))


@pytest.mark.parametrize("architecture, box_key", [("fcos", "bbox_regression"), ("retinanet", "bbox_regression")])
def test_box_loss_weight_scales_the_box_loss_only(architecture, box_key):
    images, targets = _batch()
    images.append(torch.rand(3, 75, 100) - 0.5)  # non-square, one box near the right edge
    targets.append({"boxes": torch.tensor([[60.0, 20.0, 99.0, 70.0]]), "labels": torch.tensor([1])})
    torch.manual_seed(0)
    det = Detector(architecture, num_classes=2, **TINY)
    plain = det.losses(images, targets)
    det.box_loss_weight = 2.5
    weighted = det.losses(images, targets)
    assert plain[box_key] > 0
    torch.testing.assert_close(weighted[box_key], 2.5 * plain[box_key])
    for key in set(plain) - {box_key}:
        torch.testing.assert_close(weighted[key], plain[key])


def test_box_loss_weight_reaches_the_gradient_of_the_regression_branch():
    images, targets = _batch()
    grads = []
    for weight in (1.0, 3.0):
        torch.manual_seed(0)
        det = Detector("fcos", num_classes=2, box_loss_weight=weight, **TINY).train()
        losses = det(images, targets)
        losses["bbox_regression"].backward()
        grads.append(det.model.head.regression_head.bbox_reg.weight.grad.clone())
    torch.testing.assert_close(grads[1], 3.0 * grads[0])


def test_center_sampling_radius_widens_the_fcos_positives():
    # One large box: with radius 1.5 only locations within 1.5 strides of its centre are positives; with 8 every
    # location inside the box is. More positives share the classification loss's normaliser, so it changes.
    images = [torch.rand(3, 64, 64) - 0.5]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 60.0, 58.0]]), "labels": torch.tensor([0])}]
    losses = {}
    for radius in (1.5, 8.0):
        torch.manual_seed(0)
        det = Detector("fcos", num_classes=2, center_sampling_radius=radius, **TINY)
        assert det.model.center_sampling_radius == radius
        losses[radius] = det.losses(images, targets)
    assert not torch.allclose(losses[1.5]["classification"], losses[8.0]["classification"])


def test_box_loss_weight_and_radius_are_checked_and_kept_by_the_checkpoint(tmp_path):
    import lightning as L

    from cvsuite.config import ConfigError, build_section
    from cvsuite.tasks.detection import DetectionModelConfig

    for key in ("box_loss_weight", "center_sampling_radius"):
        with pytest.raises(ConfigError, match=f"'model.{key}' must be > 0, got 0"):
            build_section(DetectionModelConfig, {key: 0}, "model")
    task = _task(box_loss_weight=2.0, center_sampling_radius=2.5)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_epochs=0)
    trainer.strategy.connect(task)
    trainer.save_checkpoint(tmp_path / "t.ckpt")
    loaded = DetectionTask.load_from_checkpoint(tmp_path / "t.ckpt", pretrained=False)
    assert loaded.detector.box_loss_weight == 2.0 and loaded.detector.model.center_sampling_radius == 2.5


def test_frozen_levels_keep_the_first_layers_fixed_through_the_freeze_schedule():
    torch.manual_seed(0)
    task = _task(frozen_levels=2, finetune={"freeze_share": 0.5})
    trunk = task.detector.trunk
    fixed = ("conv_stem", "bn1", "blocks.0", "blocks.1")
    assert sorted(task.state_dict()) == sorted(_task().state_dict())  # nothing stored twice
    task._frozen_now = None
    for frozen_phase in (True, False):  # the schedule's frozen phase, then the whole trunk unfrozen
        task.backbone_frozen = lambda epoch=None, f=frozen_phase: f
        task.apply_freeze()
        task.train()
        for name, p in trunk.named_parameters():
            assert p.requires_grad == (not frozen_phase and not name.startswith(fixed)), name
    bn = trunk.blocks[1][0].bn1
    assert not bn.training and trunk.blocks[2][0].bn1.training
    stats, weights = bn.running_mean.clone(), trunk.conv_stem.weight.clone()
    later = trunk.blocks[2][0].conv_pwl.weight.clone()
    images, targets = _batch()
    images.append(torch.rand(3, 75, 100) - 0.5)
    targets.append({"boxes": torch.tensor([[10.0, 20.0, 50.0, 70.0]]), "labels": torch.tensor([0])})
    opt = torch.optim.SGD([p for p in task.parameters() if p.requires_grad], lr=0.1)
    sum(task.detector(images, targets).values()).backward()
    opt.step()
    assert trunk.conv_stem.weight.grad is None
    assert torch.equal(bn.running_mean, stats) and torch.equal(trunk.conv_stem.weight, weights)
    assert not torch.equal(trunk.blocks[2][0].conv_pwl.weight, later)


def test_frozen_levels_follow_the_backbone_and_are_checked():
    det = Detector(
        "fcos", num_classes=2, frozen_levels=2, **{**TINY, "backbone": "test_resnet", "out_indices": [2, 3, 4]}
    )
    det.fix_early_layers()
    frozen = {n.split(".")[0] for n, p in det.trunk.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "bn1", "layer1"}
    with pytest.raises(ValueError, match=r"model.frozen_levels must be in \[0, 5\] .*got 6"):
        Detector("fcos", num_classes=2, frozen_levels=6, **TINY)
