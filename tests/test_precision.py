"""bf16-mixed on the CPU for all four tasks: training losses finite and falling on tiny data, and the metrics
accumulated in float32/float64 (never in bf16), through the same runner as fp32. (16-mixed needs a CUDA GPU: see
bench/gpu_check.py; on a CPU it is refused up front, tests/test_distributed.py.)"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch

from cvsuite.config import from_dict
from cvsuite.data.formats import write_split
from cvsuite.models.backbone import create_backbone
from cvsuite.run import load_run, train
from cvsuite.testing import make_shapes
from tests.conftest import TINY_BACKBONE, tiny_recipe, write_class_folders
from tests.test_detection_tools import tiny_detection_recipe
from tests.test_generation_task import blob_images, gan_recipe
from tests.test_segmentation_data import write_dataset
from tests.test_segmentation_task import tiny_recipe as segmentation_recipe

BF16 = {"precision": "bf16-mixed", "accelerator": "cpu"}


def _recipe(task: str, tmp: Path) -> tuple[dict, str]:
    """A tiny recipe of `task` in bf16-mixed, and the training loss column that must fall."""
    if task == "classification":
        data = write_class_folders(tmp / "data", per_class=8)
        # A gentle, decaying step: with Adam at the tiny recipe's 0.01 the bf16 loss of 4-image batches bounced.
        recipe = tiny_recipe(
            data,
            tmp / "run",
            model={"channels_last": True},
            optim={"lr": 0.002, "scheduler": "cosine"},
            trainer={**BF16, "max_epochs": 4},
            data={"batch_size": 4},
        )
        return recipe, "train_loss"
    if task == "detection":
        records, names = make_shapes(tmp / "raw", n=8, size=(60, 80), seed=1)
        write_split(records[:6], names, tmp / "data" / "train", "voc")
        write_split(records[6:], names, tmp / "data" / "val", "coco")
        recipe = tiny_detection_recipe(tmp / "data", tmp / "run")
        recipe["finetune"] = {}
        recipe["data"].update(batch_size=2, augment="none")
        recipe["trainer"].update(BF16, max_epochs=4, accumulate_grad_batches=1)
        return recipe, "train_loss"
    if task == "segmentation":
        write_dataset(tmp / "data", n_train=4, n_val=2, size=(32, 32))
        recipe = segmentation_recipe(
            tmp / "data", tmp / "run", model={"channels_last": True}, data={"augment": "none"}, trainer=BF16
        )
        recipe["trainer"]["max_epochs"] = 4
        return recipe, "train_loss"
    torch.manual_seed(0)
    weights = tmp / "features.pth"
    torch.save(create_backbone(TINY_BACKBONE, pretrained=False).state_dict(), weights)
    data = blob_images(tmp / "photos", n=8)
    recipe = gan_recipe(data, tmp / "run", str(weights), trainer={**BF16, "max_epochs": 4})
    recipe["model"].update(discriminator="dcgan", diffaugment="", d_lr=0.002)
    # The GAN's two losses fight; the discriminator's falls first on tiny data.
    return recipe, "train_d_loss"


def _metric_states_dtypes(module, task: str) -> list[torch.dtype]:
    if task == "classification":
        return [module.metrics.probs[0].dtype]
    if task == "detection":
        return [module.evaluator.pred_boxes[0].dtype, module.evaluator.pred_scores[0].dtype]
    if task == "segmentation":
        return [module.metrics.matrix.dtype]
    bank = module.metrics().banks["fake"]
    return [bank.features[0].dtype]


@pytest.mark.parametrize("task", ["classification", "detection", "segmentation", "generation"])
def test_bf16_mixed_trains_every_task_with_fp32_metrics(task, tmp_path):
    recipe, loss_key = _recipe(task, tmp_path)
    run = train(from_dict(recipe))
    with (run / "metrics.csv").open() as fh:
        losses = [float(r[loss_key]) for r in csv.DictReader(fh)]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0], losses
    metrics = json.loads((run / "metrics.json").read_text())
    scalars = [v for v in metrics.values() if isinstance(v, float)]
    assert scalars and all(math.isfinite(v) for v in scalars)

    module, cfg, spec, state = load_run(run / "checkpoints" / "last.ckpt")
    dm = spec.build_datamodule(cfg, state)
    dm.setup("validate")
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, **BF16, devices=1)
    trainer.validate(module, datamodule=dm, verbose=False)
    dtypes = _metric_states_dtypes(module, task)
    assert all(d in (torch.float32, torch.float64, torch.int64) for d in dtypes), dtypes
    if recipe["model"].get("channels_last"):
        conv = next(m for m in module.backbone.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] > 1)
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_gpu_check_says_so_and_exits_0_without_cuda(capsys, monkeypatch):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert module.main(["--steps", "5"]) == 0
    assert "no CUDA device" in capsys.readouterr().out
