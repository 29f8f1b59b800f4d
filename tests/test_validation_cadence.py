"""Validation cadence and size while training: every k epochs, a seeded subset inside training, the whole split at
the end (metrics.json, eval.py)."""

from __future__ import annotations

import csv
import json

import lightning as L
import pytest

from cvsuite.config import ConfigError, from_dict
from cvsuite.data.base import subset_size
from cvsuite.run import evaluate, train
from cvsuite.tasks import get_spec
from tests.conftest import tiny_recipe, write_class_folders


@pytest.mark.parametrize(("subset", "n"), [(None, 20), (0.25, 5), (1.0, 20), (7, 7), (50, 20), (1, 1)])
def test_subset_size(subset, n):
    assert subset_size(20, subset) == n


@pytest.mark.parametrize("subset", [0.0, 1.5, 0, -3])
def test_a_bad_subset_is_a_config_error_as_the_recipe_is_read(tmp_path, subset):
    with pytest.raises(ConfigError, match="data.val_subset"):
        from_dict(tiny_recipe(tmp_path / "data", tmp_path / "runs", data={"val_subset": subset}))


class ScoredSamples(L.Callback):
    """How many validation samples each validation scored, by what the Trainer was doing."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, frozenset]] = []

    def on_validation_epoch_start(self, trainer, module) -> None:
        self._indices: set[int] = set()

    def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._indices.update(int(i) for i in batch["index"])

    def on_validation_epoch_end(self, trainer, module) -> None:
        self.seen.append((trainer.state.fn.value, trainer.sanity_checking, frozenset(self._indices)))


def test_validations_inside_training_score_a_fixed_seeded_subset_and_validate_scores_all(tmp_path):
    root = write_class_folders(tmp_path / "data", per_class=8)  # 16 validation images
    cfg = from_dict(tiny_recipe(root, tmp_path / "runs", data={"val_subset": 0.25}, trainer={"max_epochs": 3}))
    spec = get_spec("classification")
    dm = spec.build_datamodule(cfg, None)
    dm.setup("fit")
    module = spec.build_module(cfg, dm)
    counter = ScoredSamples()
    trainer = L.Trainer(
        max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=[counter]
    )
    trainer.fit(module, datamodule=dm)
    fit_sets = [s for fn, sanity, s in counter.seen if fn == "fit" and not sanity]
    assert len(fit_sets) == 3 and all(len(s) == 4 for s in fit_sets)
    assert len(set(fit_sets)) == 1  # the same images every epoch: the curve compares like with like
    assert dm.val_batches(training=True) == 1 and dm.val_batches(training=False) == 2  # batch size 8
    trainer.validate(module, datamodule=dm, verbose=False)
    assert len(counter.seen[-1][2]) == 16  # outside fit: the whole split
    # Another seed chooses other images.
    other = spec.build_datamodule(from_dict({**cfg.to_dict(), "run": {**cfg.to_dict()["run"], "seed": 7}}), None)
    other.setup("fit")
    assert {int(other.val_set[i]["index"]) for i in other.training_val_set().indices} != set(fit_sets[0])


def test_a_run_validates_every_k_epochs_on_the_subset_and_scores_the_whole_split_at_the_end(tmp_path):
    root = write_class_folders(tmp_path / "data", per_class=8)
    recipe = tiny_recipe(
        root, tmp_path / "runs", data={"val_subset": 3}, trainer={"max_epochs": 4, "check_val_every_n_epoch": 2}
    )
    run_dir = train(from_dict(recipe))
    with (run_dir / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows if r.get("val_loss")] == [2, 4]  # epochs count from 1
    final = json.loads((run_dir / "metrics.json").read_text())
    assert final["num_samples"] == 16
    again = evaluate(run_dir / "checkpoints" / "best.ckpt")
    assert again["num_samples"] == 16 and again["accuracy"] == pytest.approx(final["accuracy"])
