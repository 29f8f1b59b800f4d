"""Exact resume: a run interrupted at any epoch and resumed from last.ckpt ends where the uninterrupted run ends:
the same weights, metrics.csv rows and best checkpoint, for each task (freeze -> unfreeze, EMA, augmentation and
mixup randomness, the GAN's two optimisers), and a real SIGINT/SIGTERM to tools/train.py stops it cleanly, with
metrics.json written. ``--resume CKPT`` alone is a whole command; a resume may change only the declared keys."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

import cvsuite.run
from cvsuite.config import from_dict
from cvsuite.data.formats import write_split
from cvsuite.run import train
from cvsuite.testing import make_shapes
from cvsuite.trainer import TrainingInterrupted
from tests.conftest import tiny_recipe, write_class_folders
from tests.test_detection_tools import tiny_detection_recipe
from tests.test_generation_task import _feature_weights, blob_images, gan_recipe
from tests.test_segmentation_data import write_dataset
from tests.test_segmentation_task import tiny_recipe as tiny_segmentation_recipe

REPO = Path(__file__).resolve().parents[1]


class StopAt(Callback):
    """Stops training the way Lightning does on SIGTERM, at the start of batch `batch` of epoch `epoch`."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise SIGTERMException()


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if a[key].is_floating_point():
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
        else:
            assert torch.equal(a[key], b[key]), key


def assert_same_run(full: Path, resumed: Path) -> None:
    """Same metrics.csv rows (every column), same final weights, same best checkpoint (epoch, score, weights)."""
    full_rows, resumed_rows = _rows(full), _rows(resumed)
    assert [r["epoch"] for r in resumed_rows] == [r["epoch"] for r in full_rows]
    for a, b in zip(full_rows, resumed_rows):
        assert a.keys() == b.keys()
        for key in a:
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-4, abs=1e-5), (a["epoch"], key)
    last_a, last_b = _load(full / "checkpoints" / "last.ckpt"), _load(resumed / "checkpoints" / "last.ckpt")
    assert last_a["epoch"] == last_b["epoch"] and last_a["global_step"] == last_b["global_step"]
    _same_state(last_a["state_dict"], last_b["state_dict"])
    best_a, best_b = _load(full / "checkpoints" / "best.ckpt"), _load(resumed / "checkpoints" / "best.ckpt")
    assert best_a["epoch"] == best_b["epoch"]
    _same_state(best_a["state_dict"], best_b["state_dict"])


def interrupt_and_resume(recipe: dict, tmp_path: Path, monkeypatch, epoch: int, batch: int = 1) -> tuple[Path, Path]:
    """The recipe run straight through, and again stopped at (epoch, batch) then resumed from its last.ckpt."""
    full = train(from_dict({**recipe, "trainer": {**recipe["trainer"], "default_root_dir": str(tmp_path / "full")}}))
    cut_recipe = {**recipe, "trainer": {**recipe["trainer"], "default_root_dir": str(tmp_path / "cut")}}
    build = cvsuite.run.build_trainer

    def build_stopping(*args, **kwargs):
        trainer, best, last = build(*args, **kwargs)
        trainer.callbacks.append(StopAt(epoch, batch))
        return trainer, best, last

    monkeypatch.setattr(cvsuite.run, "build_trainer", build_stopping)
    with pytest.raises(TrainingInterrupted, match="continue with: cvsuite train --resume") as info:
        train(from_dict(cut_recipe))
    assert info.value.signum == signal.SIGTERM
    stopped = json.loads((tmp_path / "cut" / "metrics.json").read_text())  # a result, even so
    assert stopped["stopped_by"] == "SIGTERM" and stopped["steps_done"] > 0
    monkeypatch.setattr(cvsuite.run, "build_trainer", build)
    cut = tmp_path / "cut"
    assert [int(r["epoch"]) for r in _rows(cut)] == list(range(1, epoch + 1))  # the partial epoch left no row
    assert _load(cut / "checkpoints" / "last.ckpt")["epoch"] == epoch - 1
    assert train(from_dict(cut_recipe), resume=cut / "checkpoints" / "last.ckpt") == cut
    return full, cut


def test_classification_resume_is_exact_across_unfreeze_with_ema_and_mixup(tmp_path, monkeypatch):
    data = write_class_folders(tmp_path / "data", per_class=4)
    recipe = tiny_recipe(
        data,
        tmp_path,
        data={"augment": "light", "mixup_alpha": 0.4, "batch_size": 4},
        finetune={"freeze_epochs": 2},  # frozen for epochs 0-1, unfrozen from epoch 2: the resume crosses it
        run={"plots": False, "ema_decay": 0.9},
        trainer={"max_epochs": 3},
    )
    full, cut = interrupt_and_resume(recipe, tmp_path, monkeypatch, epoch=1)
    assert_same_run(full, cut)
    # EMA: both runs carry the same running average as well as the same raw weights.
    _same_state(
        _load(full / "checkpoints" / "last.ckpt")["current_model_state"],
        _load(cut / "checkpoints" / "last.ckpt")["current_model_state"],
    )


def test_segmentation_resume_is_exact(tmp_path, monkeypatch):
    data = tmp_path / "data"
    write_dataset(data, n_train=6, n_val=2, fmt="binary", num_classes=2)
    recipe = tiny_segmentation_recipe(data, tmp_path, run={"plots": False}, finetune={"freeze_epochs": 1})
    full, cut = interrupt_and_resume(recipe, tmp_path, monkeypatch, epoch=2, batch=0)
    assert_same_run(full, cut)


def test_detection_resume_is_exact(tmp_path, monkeypatch):
    records, names = make_shapes(tmp_path / "raw", n=8, size=(48, 64), seed=1)
    write_split(records[:6], names, tmp_path / "data" / "train", "voc")
    write_split(records[6:], names, tmp_path / "data" / "val", "voc")
    recipe = tiny_detection_recipe(tmp_path / "data", tmp_path)
    recipe["trainer"] = {**recipe["trainer"], "max_epochs": 3, "accumulate_grad_batches": 1}
    recipe["data"] = {**recipe["data"], "batch_size": 3}
    full, cut = interrupt_and_resume(recipe, tmp_path, monkeypatch, epoch=1)  # unfreezes at epoch 1
    assert_same_run(full, cut)


@pytest.mark.slow  # FID/KID every epoch: ~10 s on an idle machine
def test_generation_resume_is_exact_with_both_optimisers(tmp_path, monkeypatch):
    data = blob_images(tmp_path / "data" / "train", n=8)
    recipe = gan_recipe(data.parent, tmp_path, _feature_weights(tmp_path), trainer={"max_epochs": 3})
    recipe["run"] = {"plots": False}
    # In-process loading: persistent DataLoader workers keep their own augmentation generators across epochs,
    # which a checkpoint cannot capture (see README, Guarantees).
    recipe["data"]["num_workers"] = 0
    full, cut = interrupt_and_resume(recipe, tmp_path, monkeypatch, epoch=2)
    assert_same_run(full, cut)
    # Both optimisers' moments carried over, not only the weights.
    opt_a = _load(full / "checkpoints" / "last.ckpt")["optimizer_states"]
    opt_b = _load(cut / "checkpoints" / "last.ckpt")["optimizer_states"]
    assert len(opt_a) == len(opt_b) == 2
    for a, b in zip(opt_a, opt_b):
        for sa, sb in zip(a["state"].values(), b["state"].values()):
            torch.testing.assert_close(sa["exp_avg"], sb["exp_avg"], rtol=1e-4, atol=1e-6)


@pytest.mark.slow  # a second Python process, importing torch
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_real_signal_stops_train_py_cleanly_and_the_resume_is_exact(tmp_path, signum):
    import yaml

    data = write_class_folders(tmp_path / "data", per_class=8)
    recipe = tiny_recipe(
        data, tmp_path / "cut", data={"augment": "light"}, run={"plots": False}, trainer={"max_epochs": 8}
    )
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "tools" / "train.py"), "--config", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signum, err[-2000:]
    assert "interrupted: training stopped by" in err and f"cvsuite train --resume {last}" in err
    assert "Traceback" not in err
    stopped_at = _load(last)["epoch"]
    assert stopped_at < 7  # it did stop early
    metrics = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert metrics["stopped_by"] == signal.Signals(signum).name and metrics["accuracy"] is not None

    assert train(resume=last) == tmp_path / "cut"  # the checkpoint alone: its own recipe
    full = train(from_dict({**recipe, "trainer": {**recipe["trainer"], "default_root_dir": str(tmp_path / "full")}}))
    assert_same_run(full, tmp_path / "cut")


class Kill(Callback):
    """Sends this process a real SIGTERM at batch `batch` of epoch `epoch`."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_mid_run_ends_with_the_final_evaluation_and_a_whole_command_to_continue(tmp_path, monkeypatch):
    data = write_class_folders(tmp_path / "data", per_class=8)
    recipe = tiny_recipe(data, tmp_path / "run", run={"plots": False}, trainer={"max_epochs": 5})
    build = cvsuite.run.build_trainer

    def build_killing(*args, **kwargs):
        trainer, best, last = build(*args, **kwargs)
        trainer.callbacks.append(Kill(epoch=2, batch=0))  # the step goes on, then training stops
        return trainer, best, last

    monkeypatch.setattr(cvsuite.run, "build_trainer", build_killing)
    with pytest.raises(TrainingInterrupted) as info:
        train(from_dict(recipe))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    message = str(info.value)
    assert info.value.signum == signal.SIGTERM
    assert "metrics.json scores best.ckpt" in message and f"continue with: cvsuite train --resume {last}" in message
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["stopped_by"] == "SIGTERM" and metrics["checkpoint"].endswith("best.ckpt")
    assert metrics["steps_done"] == 2 * 2 + 1 and metrics["epochs_done"] == 2.5  # 2 batches an epoch
    assert _load(last)["epoch"] == 1  # the epoch in progress is not saved: the resume replays it
    assert signal.getsignal(signal.SIGTERM) is not None  # the run's handler is gone again


def test_resume_alone_is_a_whole_command_and_refuses_a_changed_recipe(tmp_path, capsys):
    from cvsuite.commands import main
    from cvsuite.config import ConfigError
    from cvsuite.run import resume_config

    data = write_class_folders(tmp_path / "data", per_class=4)
    recipe = tiny_recipe(data, tmp_path / "run", run={"plots": False}, trainer={"max_epochs": 1})
    run_dir = train(from_dict(recipe))
    last = run_dir / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError) as info:
        changed = ["--data.image_size", "48", "--data.batch_size", "4", "--trainer.max_epochs", "3"]
        resume_config(last, overrides=changed)
    assert str(info.value).startswith("data.image_size, data.batch_size: --resume continues the checkpoint's own")
    moved = tmp_path / "moved"
    data.rename(moved)
    cfg = resume_config(last, overrides=["--data.root", str(moved), "--trainer.max_epochs", "2"])
    assert cfg.data.root == str(moved) and cfg.trainer["max_epochs"] == 2
    assert main(["train", "--resume", str(last), "--data.root", str(moved), "--trainer.max_epochs", "2"]) == 0
    assert [int(r["epoch"]) for r in _rows(run_dir)] == [1, 2]
    assert main(["train", "--resume", str(last), "--data.image_size", "48"]) == 2
    assert "error: data.image_size: --resume continues" in capsys.readouterr().err
