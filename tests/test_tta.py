"""Flip test-time augmentation (model.tta) for classification and segmentation: the mean of the outputs for an
image and its mirror (dense outputs mirrored back), an eval-time setting of a trained checkpoint."""

from __future__ import annotations

import torch

from cvsuite.config import from_dict
from cvsuite.data.common import read_image
from cvsuite.run import evaluate, load_checkpoint, train
from cvsuite.tasks.classification import ClassificationTask
from cvsuite.tasks.segmentation import SegmentationTask
from tests.conftest import TINY_BACKBONE, tiny_recipe, write_class_folders

OPTIM = {"optimizer": "adam", "lr": 0.01, "weight_decay": 0.0, "scheduler": "none"}


def test_classification_tta_averages_the_image_and_its_mirror():
    torch.manual_seed(0)
    module = ClassificationTask(["a", "b", "c"], OPTIM, {}, backbone=TINY_BACKBONE, pretrained=False, dropout=0.0)
    module.eval()
    x = torch.rand(2, 3, 32, 40)
    plain = module.infer(x)
    assert torch.equal(plain, module(x))
    module.tta = True
    expected = (module(x) + module(x.flip(-1))) / 2
    torch.testing.assert_close(module.infer(x), expected)
    assert not torch.allclose(expected, plain)  # the mirror is seen: the tiny net is not flip-invariant
    module.train()
    assert torch.equal(module.infer(x), module(x))  # never while training


def test_segmentation_tta_mirrors_the_logits_back():
    torch.manual_seed(0)
    module = SegmentationTask(["bg", "fg"], OPTIM, {}, backbone=TINY_BACKBONE, pretrained=False, tta=True).eval()
    x = torch.rand(1, 3, 64, 96)
    expected = (module(x) + module(x.flip(-1)).flip(-1)) / 2
    torch.testing.assert_close(module.infer(x), expected)


def test_tta_is_an_eval_setting_of_a_trained_checkpoint(tmp_path):
    root = write_class_folders(tmp_path / "data", per_class=6)
    run_dir = train(from_dict(tiny_recipe(root, tmp_path / "run", trainer={"max_epochs": 1}, run={"plots": False})))
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    image = read_image(next((root / "val").rglob("*.png")))
    plain, _, _ = load_checkpoint(ckpt)
    mirrored, _, _ = load_checkpoint(ckpt, overrides=["--model.tta", "true"])
    assert plain.tta is False and mirrored.tta is True
    x = plain.eval_pipeline()(image=image)["image"][None]
    expected = plain.scores((plain.eval()(x) + plain(x.flip(-1))) / 2)
    torch.testing.assert_close(mirrored.predict_images([image]), expected)
    assert not torch.allclose(plain.predict_images([image]), expected)
    metrics = evaluate(ckpt, overrides=["--model.tta", "true"], output=str(tmp_path / "tta.json"))
    assert metrics["num_samples"] == evaluate(ckpt, output=str(tmp_path / "plain.json"))["num_samples"]
