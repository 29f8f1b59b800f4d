"""The console of a training run: none of the known third-party noise, one line per epoch with the monitored
metric and the best so far, the best epoch at the end; --quiet leaves only the result."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import yaml

from cvsuite.console import _DropHeadKeys, best_epoch
from tests.conftest import tiny_recipe

pytest_plugins = ["tests.surface_fixtures"]  # seg_run

REPO = Path(__file__).resolve().parents[1]
NOISE = (
    "litlogger",
    "LeafSpec",
    "module(s) in eval mode",
    "No positive samples",
    "smaller than the logging interval",
    "Unexpected keys",
    "TPU available",
)


def _train(tmp_path: Path, data: Path, *flags: str) -> subprocess.CompletedProcess:
    # freeze_epochs: the frozen backbone's BatchNorm is in eval mode (Lightning's "eval mode" warning);
    # log_every_n_steps 50 with 3 batches (Lightning's logging-interval warning); sanity check on (torchmetrics).
    recipe = tiny_recipe(
        data,
        tmp_path / "run",
        finetune={"freeze_epochs": 1},
        run={"plots": False},
        trainer={"log_every_n_steps": 50, "num_sanity_val_steps": 1, "enable_progress_bar": False},
    )
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    cmd = [sys.executable, "tools/train.py", "--config", str(tmp_path / "r.yaml"), *flags]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={"PYTHONPATH": str(REPO)}, check=True)


def test_training_console_has_epoch_lines_and_no_noise(colour_data, tmp_path):
    err = _train(tmp_path, colour_data).stderr
    for noise in NOISE:
        assert noise not in err, noise
    epochs = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 2
    assert all("train_loss" in x and "val_loss" in x and "val_accuracy" in x and "best" in x for x in epochs)
    assert epochs[0].endswith("*")  # the first epoch is the best so far
    row = best_epoch(tmp_path / "run/metrics.csv", "val_accuracy", "max")
    assert f"best val_accuracy {row['val_accuracy']:.4g} at epoch {row['epoch'] + 1}" in err


def test_quiet_prints_only_the_result(colour_data, tmp_path, capsys):
    from cvsuite.commands import main

    recipe = tiny_recipe(colour_data, tmp_path / "run", run={"plots": False}, trainer={"max_epochs": 1})
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["train", "--config", str(tmp_path / "r.yaml"), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert not [x for x in err.splitlines() if x.startswith("epoch ")]
    assert out.strip().startswith("run folder:")


def test_timm_head_keys_are_dropped_but_other_unexpected_keys_stay():
    def passes(message: str) -> bool:
        return _DropHeadKeys().filter(logging.LogRecord("timm", logging.WARNING, "", 0, message, None, None))

    assert not passes(
        "Unexpected keys (conv_head.weight, bn2.weight, bn2.bias) found while loading pretrained weights."
    )
    assert passes("Unexpected keys (blocks.0.conv.weight) found while loading pretrained weights.")


def test_best_epoch_reads_the_monitored_column(tmp_path):
    (tmp_path / "m.csv").write_text("epoch,val_loss,val_map\n0,1.0,0.2\n1,0.8,0.5\n2,0.7,0.4\n")
    assert best_epoch(tmp_path / "m.csv", "val_map", "max")["epoch"] == 1
    assert best_epoch(tmp_path / "m.csv", "val_loss", "min")["epoch"] == 2
    assert best_epoch(tmp_path / "m.csv", "val_fid", "min") is None


def test_tensorboard_holds_the_learning_rate_and_sample_predictions(seg_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run = seg_run
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert any(tag.startswith("lr-") for tag in events.Tags()["scalars"])
    images = events.Tags()["images"]
    assert "val_example_0/truth_prediction" in images
    img = events.Images("val_example_0/truth_prediction")[0]
    assert img.width > img.height  # truth and prediction side by side
