"""The console of a training run: none of the known third-party noise, one line per epoch with the monitored
metric and the best so far, the best epoch at the end; --quiet leaves only the result."""

from __future__ import annotations

import csv
import logging
import subprocess
import sys
from pathlib import Path

import pytest
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
    "GPU available: False",
    "Non-trainable",
)


def _train(tmp_path: Path, data: Path, *flags: str) -> subprocess.CompletedProcess:
    # freeze_epochs: the frozen backbone's BatchNorm is in eval mode (Lightning's "eval mode" warning);
    # log_every_n_steps 50 with 3 batches (Lightning's logging-interval warning); sanity check on (torchmetrics).
    recipe = tiny_recipe(
        data,
        tmp_path / "run",
        finetune={"freeze_epochs": 1, "backbone_lr_mult": 0.1},
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
    # One epoch numbering, from 1: the epoch lines, metrics.csv and the best epoch agree.
    assert [x.split()[1] for x in epochs] == ["1/2", "2/2"]
    with (tmp_path / "run/metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    row = best_epoch(tmp_path / "run/metrics.csv", "val_accuracy", "max")
    assert f"best val_accuracy {row['val_accuracy']:.4g} at epoch {row['epoch']}" in err
    # Learning rates named by what they drive (scheduler none: lr 0.01, backbone 0.1 x that), no lr-Adam/pgN.
    assert [float(r["lr_head"]) for r in rows] == [0.01, 0.01]
    assert [float(r["lr_backbone"]) for r in rows] == pytest.approx([0.001, 0.001])
    assert not [k for k in rows[0] if k.startswith("lr-") or k == "lr"]
    assert len([x for x in err.splitlines() if "Trainer.fit` stopped" in x]) == 1  # each Lightning line once


def test_quiet_prints_only_the_result(colour_data, tmp_path, capsys):
    from cvsuite.commands import main

    recipe = tiny_recipe(colour_data, tmp_path / "run", run={"plots": False}, trainer={"max_epochs": 1})
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["train", "--config", str(tmp_path / "r.yaml"), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert not [x for x in err.splitlines() if x.startswith("epoch ")]
    assert out.strip().startswith("run folder:")


def test_the_progress_bar_counts_epochs_from_one(monkeypatch):
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import TQDMProgressBar

    from cvsuite.console import EpochProgressBar

    shown = []
    monkeypatch.setattr(TQDMProgressBar, "on_train_epoch_start", lambda self, trainer, *a: None)  # no terminal
    monkeypatch.setattr(TQDMProgressBar, "train_progress_bar", SimpleNamespace(set_description=shown.append))
    EpochProgressBar().on_train_epoch_start(SimpleNamespace(current_epoch=0, max_epochs=3))
    assert shown == ["Epoch 1/3"]


def test_cvsuite_warnings_print_without_a_source_line():
    import warnings

    from cvsuite import cli
    from cvsuite.data import common

    ours = cli.format_warning("Skipping unreadable image a.png: truncated", UserWarning, common.__file__, 12)
    assert ours == "warning: Skipping unreadable image a.png: truncated\n"
    theirs = cli.format_warning("deprecated", UserWarning, "/site-packages/x.py", 3, "x = 1")
    assert theirs == warnings.formatwarning("deprecated", UserWarning, "/site-packages/x.py", 3, "x = 1")


def test_quiet_silences_timm_and_lightning_info():
    from cvsuite.console import setup

    setup(verbose=False)
    assert logging.getLogger("timm.models._builder").getEffectiveLevel() == logging.WARNING  # "Loading pretrained"
    assert logging.getLogger("lightning.pytorch").getEffectiveLevel() == logging.WARNING
    setup(verbose=True)
    assert logging.getLogger("timm.models._builder").getEffectiveLevel() == logging.INFO


def test_a_command_says_each_warning_once(caplog):
    """eval --predictions builds the detection data twice; "ROOT has no train/ folder" shows once per command."""
    from cvsuite.console import end_command, setup

    log = logging.getLogger("cvsuite")
    setup(verbose=False)
    with caplog.at_level("WARNING", logger="cvsuite"):
        for _ in range(2):
            log.warning("%s has no train/ folder; using it as one split", "data/x")
        log.warning("another message")
    assert [r.getMessage() for r in caplog.records] == [
        "data/x has no train/ folder; using it as one split",
        "another message",
    ]
    end_command()
    caplog.clear()
    with caplog.at_level("WARNING", logger="cvsuite"):
        log.warning("another message")  # the next command (or library code) says it again
    assert [r.getMessage() for r in caplog.records] == ["another message"]


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


def test_learning_rates_are_named_by_role():
    import torch
    from torch import nn

    from cvsuite.optim import param_groups
    from cvsuite.trainer import learning_rates

    model = nn.Module()
    model.backbone, model.head = nn.Linear(4, 4), nn.Linear(4, 2)
    layered = torch.optim.SGD(param_groups(model, model.backbone, 0.1, 0.0, backbone_lr_mult=0.25), lr=0.1)
    assert learning_rates(model, [layered]) == {"lr_head": 0.1, "lr_backbone": pytest.approx(0.025)}
    shared = torch.optim.SGD(param_groups(model, model.backbone, 0.1, 0.0), lr=0.1)  # one group holds both
    assert learning_rates(model, [shared]) == {"lr_head": 0.1, "lr_backbone": 0.1}
    gan = nn.Module()
    gan.generator, gan.discriminator = nn.Linear(2, 2), nn.Linear(2, 1)
    g, d = torch.optim.Adam(gan.generator.parameters(), 2e-4), torch.optim.Adam(gan.discriminator.parameters(), 1e-4)
    assert learning_rates(gan, [g, d]) == {"lr_generator": 2e-4, "lr_discriminator": 1e-4}
