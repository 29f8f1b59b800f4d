"""Tiny trained checkpoints of each task, trained once per test session and shared by the API, export and
command tests (import the fixtures into a test module to use them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cvsuite.config import from_dict
from cvsuite.run import train
from tests.conftest import tiny_recipe, write_class_folders

QUIET = {"enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0}


@pytest.fixture(scope="session")
def cls_run(tmp_path_factory) -> tuple[Path, Path]:
    """(data root, run folder) of a 1-epoch classifier on red/blue colour images."""
    tmp = tmp_path_factory.mktemp("cls")
    data = write_class_folders(tmp / "data", per_class=6)
    recipe = tiny_recipe(data, tmp / "run", trainer={"max_epochs": 1, **QUIET}, run={"plots": False})
    return data, train(from_dict(recipe))


@pytest.fixture(scope="session")
def seg_run(tmp_path_factory) -> tuple[Path, Path]:
    from tests.test_segmentation_data import write_dataset
    from tests.test_segmentation_task import tiny_recipe as seg_recipe

    tmp = tmp_path_factory.mktemp("seg")
    data = tmp / "data"
    write_dataset(data, n_train=4, n_val=2, fmt="binary", num_classes=2)
    recipe = seg_recipe(data, tmp / "run", trainer={"max_epochs": 1, **QUIET}, run={"plots": False})
    return data, train(from_dict(recipe))


@pytest.fixture(scope="session")
def det_run(tmp_path_factory) -> tuple[Path, Path]:
    from cvsuite.data.formats import write_split
    from cvsuite.testing import make_shapes
    from tests.test_detection_tools import tiny_detection_recipe

    tmp = tmp_path_factory.mktemp("det")
    records, names = make_shapes(tmp / "raw", n=6, size=(60, 80), seed=1)
    data = tmp / "data"
    write_split(records[:4], names, data / "train", "voc")
    write_split(records[4:], names, data / "val", "voc")
    recipe = tiny_detection_recipe(data, tmp / "run")
    recipe["trainer"].update(max_epochs=1, **QUIET)
    recipe["run"] = {"plots": False}
    return data, train(from_dict(recipe))
