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
