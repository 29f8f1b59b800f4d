"""Recipes: unknown keys are errors with a suggestion, overrides are typed, the shipped recipes load."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cvsuite.config import ConfigError, from_dict, load_config, parse_overrides

ROOT = Path(__file__).resolve().parents[1]


def base() -> dict:
    return {"task": "classification", "data": {"root": "x"}}


@pytest.mark.parametrize(
    "raw, message",
    [
        ({**base(), "modle": {}}, "Unknown config key 'modle'. Did you mean 'model'?"),
        ({**base(), "data": {"image_szie": 3}}, "Unknown config key 'data.image_szie'. Did you mean 'image_size'?"),
        ({**base(), "optim": {"learning_rate": 1}}, "Unknown config key 'optim.learning_rate'"),
        ({**base(), "trainer": {"max_epoch": 1}}, "Did you mean 'max_epochs'?"),
        ({**base(), "trainer": {"callbacks": []}}, "'trainer.callbacks' is set by cvsuite"),
        ({**base(), "task": "clasification"}, "'task' must be one of"),
        ({**base(), "data": {"image_size": "big"}}, "'data.image_size' must be int"),
        ({**base(), "model": {"pretrained": "yes"}}, "'model.pretrained' must be true or false"),
    ],
)
def test_bad_keys_and_values_are_named(raw, message):
    with pytest.raises(ConfigError) as err:
        from_dict(raw)
    assert message in str(err.value)


def test_overrides_are_typed_and_merged(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(base()))
    cfg = load_config(
        path,
        [
            "--data.root",
            "ROOT",
            "--trainer.max_epochs=3",
            "--model.backbone",
            "resnet50",
            "--data.image_size",
            "160",
            "--trainer.precision",
            "bf16-mixed",
            "--optim.lr",
            "1e-4",
            "--finetune.layer_decay",
            "null",
        ],
    )
    assert cfg.data.root == "ROOT" and cfg.data.image_size == 160
    assert cfg.trainer["max_epochs"] == 3 and cfg.trainer["precision"] == "bf16-mixed"
    assert cfg.model.backbone == "resnet50" and cfg.optim.lr == 1e-4 and cfg.finetune.layer_decay is None
    with pytest.raises(ConfigError, match="Did you mean 'root'"):
        load_config(path, ["--data.rot", "x"])
    with pytest.raises(ConfigError, match="needs a value"):
        parse_overrides(["--data.root"])


def test_resolved_config_round_trips():
    cfg = from_dict(base())
    again = from_dict(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict()


@pytest.mark.parametrize("recipe", sorted((ROOT / "configs").glob("*/*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_are_valid(recipe):
    raw = yaml.safe_load(recipe.read_text())
    from cvsuite.tasks import TASK_MODULES

    if raw["task"] not in TASK_MODULES:
        pytest.fail(f"{recipe} names task {raw['task']} that is not registered")
    cfg = from_dict(raw, str(recipe))
    assert cfg.task == raw["task"]


@pytest.mark.parametrize(
    "section, values, message",
    [
        ("optim", {"optimizer": "adamx"}, "'optim.optimizer' must be one of sgd, rmsprop, adam, adamw, got 'adamx'"),
        ("optim", {"scheduler": "cosin"}, "Did you mean 'cosine'?"),
        ("model", {"loss": "focall"}, "'model.loss' must be one of ce, bce, focal"),
        ("run", {"mode": "maximum"}, "'run.mode' must be one of min, max"),
        ("optim", {"betas": [0.9]}, "'optim.betas' must be a list of 2 values"),
        ("optim", {"betas": ["a", "b"]}, "'optim.betas[0]' must be float"),
        ("optim", {"betas": 0.9}, "'optim.betas' must be a list"),
        ("model", {"class_weights": "balancd"}, "'model.class_weights' must be list or one of 'balanced'"),
        ("trainer", {"max_epochs": "two"}, "'trainer.max_epochs' must be int"),
        ("trainer", {"max_epochs": -5}, "'trainer.max_epochs' must be >= 1, or -1"),
        ("trainer", {"precision": "17-mixed"}, "'trainer.precision' must be"),
        ("trainer", {"enable_progress_bar": "no"}, "'trainer.enable_progress_bar' must be true or false"),
    ],
)
def test_choices_lists_and_trainer_arguments_are_checked(section, values, message):
    with pytest.raises(ConfigError) as err:
        from_dict({**base(), section: values})
    assert message in str(err.value)


def test_lists_are_coerced_and_choices_normalised():
    cfg = from_dict({**base(), "optim": {"betas": [0, 0.5], "optimizer": "AdamW"}, "model": {"class_weights": [1, 2]}})
    assert cfg.optim.betas == [0.0, 0.5] and all(type(b) is float for b in cfg.optim.betas)
    assert cfg.optim.optimizer == "adamw" and cfg.model.class_weights == [1.0, 2.0]
    cfg = from_dict({**base(), "trainer": {"limit_val_batches": 1, "devices": "auto", "precision": 16}})
    # An int stays an int where Lightning tells 1 (one batch) from 1.0 (all of them).
    assert cfg.trainer["limit_val_batches"] == 1 and type(cfg.trainer["limit_val_batches"]) is int


@pytest.mark.parametrize("override", [["--optim.optimizer", "adamx"], ["--optim.betas", "[0.9]"]])
def test_bad_choice_fails_before_a_run_folder_exists(tmp_path, override):
    from tests.conftest import tiny_recipe
    from tools.train import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tmp_path / "data", tmp_path / "runs" / "exp")))
    assert main(["--config", str(recipe), *override]) == 2
    assert not (tmp_path / "runs").exists()
