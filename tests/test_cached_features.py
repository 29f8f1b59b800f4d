"""finetune.cache_features: frozen epochs train the head on backbone features computed once; the head they give
is the head the slow path (the frozen backbone run every step) gives, and the run goes on to fine-tune."""

from __future__ import annotations

import csv

import pytest
import torch

from cvsuite.config import ConfigError, from_dict
from cvsuite.run import train
from tests.conftest import tiny_recipe, write_class_folders


def _run(tmp_path, name: str, cache: bool, epochs: int, freeze: int = 2) -> dict:
    root = write_class_folders(tmp_path / "data", per_class=10)
    recipe = tiny_recipe(
        root,
        tmp_path / name,
        model={"dropout": 0.0, "drop_path_rate": 0.0},
        optim={"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "scheduler": "cosine"},
        finetune={"freeze_epochs": freeze, "cache_features": cache},
        trainer={"max_epochs": epochs},
        run={"plots": False},
    )
    run_dir = train(from_dict(recipe))
    with (run_dir / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return {"rows": rows, "state": last["state_dict"]}


def test_a_cached_frozen_epoch_gives_the_slow_paths_head(tmp_path):
    """Same images (un-augmented), same batches, same optimiser steps: the same head, the backbone untouched."""
    slow = _run(tmp_path, "slow", cache=False, epochs=1, freeze=1)
    fast = _run(tmp_path, "fast", cache=True, epochs=1, freeze=1)
    for key in ("head.1.weight", "head.1.bias"):
        torch.testing.assert_close(fast["state"][key], slow["state"][key], rtol=1e-4, atol=1e-6, msg=key)
    assert float(fast["rows"][0]["train_loss"]) == pytest.approx(float(slow["rows"][0]["train_loss"]), rel=1e-5)
    assert float(fast["rows"][0]["val_loss"]) == pytest.approx(float(slow["rows"][0]["val_loss"]), rel=1e-5)
    backbone = [k for k in slow["state"] if k.startswith("backbone.") and slow["state"][k].is_floating_point()]
    for key in backbone:
        torch.testing.assert_close(fast["state"][key], slow["state"][key])


def test_after_the_cached_phase_the_backbone_fine_tunes_on_images(tmp_path):
    frozen = _run(tmp_path, "frozen", cache=True, epochs=2)
    fast = _run(tmp_path, "fast", cache=True, epochs=3)
    assert [int(r["epoch"]) for r in fast["rows"]] == [1, 2, 3]
    weight = "backbone.conv_stem.weight"
    torch.testing.assert_close(frozen["state"][weight], _run(tmp_path, "again", cache=True, epochs=2)["state"][weight])
    assert not torch.allclose(fast["state"][weight], frozen["state"][weight])  # epoch 3 trained the backbone
    assert all(float(r["train_loss"]) > 0 for r in fast["rows"])


def test_cache_features_without_a_frozen_phase_is_refused(tmp_path):
    root = write_class_folders(tmp_path / "data", per_class=4)
    recipe = tiny_recipe(root, tmp_path / "run", finetune={"cache_features": True})
    with pytest.raises(ConfigError, match="finetune.cache_features applies to a frozen phase"):
        train(from_dict(recipe))
    assert not (tmp_path / "run").exists()


def test_cache_features_on_a_dense_head_is_refused_with_the_reason():
    from cvsuite.tasks.segmentation import SegmentationTask
    from tests.conftest import TINY_BACKBONE

    with pytest.raises(ConfigError, match="only classification trains its head on cached features.*BENCHMARKS"):
        SegmentationTask(
            ["bg", "fg"], {}, {"cache_features": True, "freeze_epochs": 1}, backbone=TINY_BACKBONE, pretrained=False
        )
