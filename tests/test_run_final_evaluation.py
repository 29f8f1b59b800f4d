"""The final evaluation of a training run (metrics.json): the best checkpoint's weights scored on the whole
validation split, the same numbers as evaluating that checkpoint afterwards, however the run gets to them."""

from __future__ import annotations

import json

import pytest
import torch

import cvsuite.run
from cvsuite.config import from_dict
from cvsuite.run import evaluate, train
from tests.conftest import CLASSES, colour_image, stable_seed, tiny_recipe

# What only the training run's metrics.json says, or says differently: the file it scored, and the split it derived
# where eval reads the list stored in the checkpoint (the same files; `num_samples` and the scores must agree).
RUN_ONLY = {"checkpoint", "stopped_by", "epochs_done", "steps_done", "timings", "split_files"}


def flat(value, prefix: str = "") -> dict:
    """Nested dicts and lists as one dict, path -> leaf."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flat(item, f"{prefix}/{key}").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in flat(item, f"{prefix}/{i}").items()}
    return {prefix: value}


def odd_class_folders(root, per_class: int = 12):
    """Class folders of non-square, odd-sized images (as users bring), 24 training and 24 validation images."""
    sizes = [(53, 37), (75, 100), (41, 29)]
    for split in ("train", "val"):
        for c, (name, colour) in enumerate(CLASSES.items()):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                image = colour_image(colour, size=48, seed=stable_seed(split, c, i))
                image.resize(sizes[i % len(sizes)]).save(folder / f"{i}.png")
    return root


def test_metrics_json_of_an_earlier_best_checkpoint_equals_evaluating_that_checkpoint(tmp_path, monkeypatch):
    root = odd_class_folders(tmp_path / "data")
    # 3 steps per epoch (24 images, batch 8): validated after step 3 only; steps 4 and 5 move the weights on, so the
    # best checkpoint is not what the module holds when training ends.
    recipe = tiny_recipe(root, tmp_path / "runs", trainer={"max_epochs": 2, "max_steps": 5})

    def no_second_module(*args, **kwargs):
        raise AssertionError("the final evaluation built a second module")

    with monkeypatch.context() as patch:
        patch.setattr(cvsuite.run, "load_module", no_second_module)
        run_dir = train(from_dict(recipe))
    final = json.loads((run_dir / "metrics.json").read_text())
    best = run_dir / "checkpoints" / "best.ckpt"
    assert final["checkpoint"] == str(best) and final["steps_done"] == 5
    assert torch.load(best, map_location="cpu", weights_only=True)["global_step"] == 3
    again = evaluate(best)
    shared = (set(final) & set(again)) - RUN_ONLY
    assert {"accuracy", "auroc", "per_class", "confusion_matrix", "num_samples"} <= shared
    assert final["num_samples"] == 24
    ours, theirs = flat({k: final[k] for k in shared}), flat({k: again[k] for k in shared})
    assert ours.keys() == theirs.keys()
    for key, value in ours.items():
        if isinstance(value, float):
            assert value == pytest.approx(theirs[key], rel=1e-6, abs=1e-7), key
        else:
            assert value == theirs[key], key
