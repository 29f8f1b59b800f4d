"""Scale-out, proven on this CPU: every task trained with 2 processes through Lightning's own DDP launcher
(gloo) logs the validation metrics that one process computes on the same checkpoint, writes one run folder from
rank 0, and survives the freeze -> unfreeze milestone without ``find_unused_parameters``; a torchrun launch works
too. Validation splits have an odd number of images, so the distributed sampler pads one and the metrics must
drop it. Plus the up-front errors for settings that cannot work here.

Each DDP run is a subprocess of tools/train.py: Lightning's launcher re-executes the script for rank 1.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from cvsuite.config import ConfigError, from_dict
from cvsuite.data.formats import write_split
from cvsuite.distributed import check_trainer
from cvsuite.models.backbone import create_backbone
from cvsuite.testing import make_shapes
from tests.conftest import TINY_BACKBONE, colour_image, tiny_recipe, write_class_folders
from tests.test_detection_tools import tiny_detection_recipe
from tests.test_generation_task import blob_images, gan_recipe
from tests.test_segmentation_data import write_dataset
from tests.test_segmentation_task import tiny_recipe as segmentation_recipe

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
DDP = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
# What each task logs as val_<key> in metrics.csv and prints as <key> in eval.py's JSON.
KEYS = {
    "classification": ("accuracy", "precision", "recall", "f1", "auroc", "average_precision"),
    "detection": ("map", "map_50", "mar_100"),
    "segmentation": ("miou", "dice", "pixel_accuracy"),
    "generation": ("fid", "kid"),
}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "CVSUITE_RUN_DIR")}
    return {**env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _run(cmd: list[str], timeout: int = 240) -> str:
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout


def _train_ddp(recipe: dict, tmp: Path, launcher: list[str] | None = None) -> Path:
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    _run([*(launcher or [PYTHON]), "tools/train.py", "--config", str(path), *DDP])
    return Path(recipe["trainer"]["default_root_dir"])


def _eval_one_process(ckpt: Path) -> dict:
    # eval always runs in one process, whatever devices the checkpoint was trained on
    out = _run([PYTHON, "tools/eval.py", "--ckpt", str(ckpt)])
    return json.loads(out.strip().splitlines()[-1])


def _check_run(run: Path, task: str, epochs: int) -> None:
    """One folder written by rank 0 alone (no run-2 made by rank 1, one metrics.csv row per epoch), and the
    validation metrics of the checkpoint's epoch equal one process's eval of that checkpoint."""
    assert run.is_dir() and not run.with_name(run.name + "-2").exists()
    assert (run / "config.yaml").is_file() and (run / "metrics.json").is_file()
    with (run / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == list(range(1, epochs + 1))
    ckpt = run / "checkpoints" / "last.ckpt"
    epoch = torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"]
    logged = rows[epoch]
    single = _eval_one_process(ckpt)
    for key in KEYS[task]:
        assert float(logged[f"val_{key}"]) == pytest.approx(single[key], rel=1e-5, abs=2e-6), key


def test_classification_ddp_freeze_unfreeze_metrics_equal_one_process(tmp_path):
    data = write_class_folders(tmp_path / "data", per_class=5)
    colour_image((220, 40, 40), seed=99).save(data / "val" / "red" / "extra.png")  # 11 val images: one padded
    recipe = tiny_recipe(
        data, tmp_path / "run", data={"batch_size": 2}, finetune={"freeze_epochs": 1}, trainer={"max_epochs": 2}
    )
    run = _train_ddp(recipe, tmp_path)
    _check_run(run, "classification", 2)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_samples"] == 11


def test_detection_ddp_metrics_equal_one_process(tmp_path):
    records, names = make_shapes(tmp_path / "raw", n=9, size=(60, 80), seed=1)
    write_split(records[:6], names, tmp_path / "data" / "train", "voc")
    write_split(records[6:], names, tmp_path / "data" / "val", "coco")  # 3 images: one padded
    recipe = tiny_detection_recipe(tmp_path / "data", tmp_path / "run")
    recipe["data"]["batch_size"] = 2  # 3 training images per process: one batch each
    recipe["trainer"].update(max_epochs=2, accumulate_grad_batches=1)
    run = _train_ddp(recipe, tmp_path)
    _check_run(run, "detection", 2)
    assert json.loads((run / "metrics.json").read_text())["num_images"] == 3


def test_segmentation_ddp_metrics_equal_one_process(tmp_path):
    write_dataset(tmp_path / "data", n_train=4, n_val=3, size=(32, 32))
    recipe = segmentation_recipe(tmp_path / "data", tmp_path / "run", data={"batch_size": 2}, trainer={"max_epochs": 1})
    run = _train_ddp(recipe, tmp_path)
    _check_run(run, "segmentation", 1)
    assert json.loads((run / "metrics.json").read_text())["num_pixels"] == 3 * 32 * 32


def test_generation_ddp_both_optimisers_fid_kid_equal_one_process(tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "features.pth"
    torch.save(create_backbone(TINY_BACKBONE, pretrained=False).state_dict(), weights)
    data = blob_images(tmp_path / "photos", n=7)
    recipe = gan_recipe(data, tmp_path / "run", str(weights), trainer={"max_epochs": 1})
    run = _train_ddp(recipe, tmp_path)
    _check_run(run, "generation", 1)
    assert json.loads((run / "metrics.json").read_text())["num_real"] == 7
    assert (run / "samples" / "epoch_001.png").is_file()


def test_torchrun_launch_trains_and_its_checkpoint_evaluates(tmp_path):
    data = write_class_folders(tmp_path / "data", per_class=4)
    recipe = tiny_recipe(data, tmp_path / "run", data={"batch_size": 2}, trainer={"max_epochs": 1})
    # `python -m torch.distributed.run` is the torchrun command (a venv layered over another may lack the script)
    torchrun = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29561"]
    run = _train_ddp(recipe, tmp_path, launcher=torchrun)
    _check_run(run, "classification", 1)


@pytest.mark.parametrize(
    "trainer, message",
    [
        ({"accelerator": "cpu", "precision": "16-mixed"}, "16-mixed needs a CUDA GPU"),
        ({"accelerator": "cpu", "devices": 2, "strategy": "fsdp"}, "cannot run 2 CPU processes"),
        ({"accelerator": "cpu", "devices": 2, "strategy": "deepspeed"}, "cannot run 2 CPU processes"),
        ({"accelerator": "cpu", "devices": 2, "strategy": "ddp", "sync_batchnorm": True}, "SyncBatchNorm"),
    ],
)
def test_settings_that_cannot_work_here_are_named_before_a_run_folder_exists(tmp_path, trainer, message):
    from cvsuite.run import train

    data = write_class_folders(tmp_path / "data", per_class=2)
    cfg = from_dict(tiny_recipe(data, tmp_path / "run", trainer=trainer))
    with pytest.raises(ConfigError, match=message):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_gpu_and_fsdp_freeze_settings_are_named(tmp_path):
    if not torch.cuda.is_available():
        cfg = from_dict(tiny_recipe(tmp_path, tmp_path / "run", trainer={"accelerator": "gpu"}))
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            check_trainer(cfg)
    cfg = from_dict(
        tiny_recipe(tmp_path, tmp_path / "run", finetune={"freeze_epochs": 2}, trainer={"strategy": "fsdp"})
    )
    with pytest.raises(ConfigError, match="FSDP"):
        check_trainer(cfg)


def test_tools_train_prints_the_named_error_and_exits_2(tmp_path):
    data = write_class_folders(tmp_path / "data", per_class=2)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(data, tmp_path / "run")))
    proc = subprocess.run(
        [
            PYTHON,
            "tools/train.py",
            "--config",
            str(path),
            "--trainer.accelerator",
            "cpu",
            "--trainer.precision",
            "16-mixed",
        ],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "error: trainer.precision 16-mixed needs a CUDA GPU" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_sync_batchnorm_layers_stay_frozen_with_the_backbone():
    """What Lightning does for trainer.sync_batchnorm (GPU only): convert every BatchNorm. A frozen backbone's
    converted layers must still keep their running statistics (eval mode) during training."""
    from cvsuite.tasks.classification import ClassificationTask

    task = ClassificationTask(
        ["a", "b"], {"lr": 0.01, "weight_decay": 0.0}, {"freeze_backbone": True}, TINY_BACKBONE, pretrained=False
    )
    task = torch.nn.SyncBatchNorm.convert_sync_batchnorm(task)
    task.apply_freeze()
    task.train()
    sync = [m for m in task.backbone.modules() if isinstance(m, torch.nn.SyncBatchNorm)]
    assert sync and not any(m.training for m in sync)
    assert task.head.training
