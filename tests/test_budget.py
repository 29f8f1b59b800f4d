"""The time-budget planner: reading durations, and plans that fit the budget with the whole schedule inside."""

from __future__ import annotations

import csv
import json
import logging
import time
from datetime import datetime
from pathlib import Path

import pytest
import torch
import yaml

from cvsuite import budget
from cvsuite.budget import MARGIN, Costs, parse_duration, plan, safety_net_s
from cvsuite.config import ConfigError, from_dict
from cvsuite.run import train
from tests.conftest import tiny_recipe, write_class_folders


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15min", 900), ("1h", 3600), ("1h30m", 5400), ("00:15:00", 900), ("2:30", 150), (45, 45.0)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["fast", "15 parsecs", "-5min", "0s", "", True])
def test_bad_durations_name_the_key(text):
    with pytest.raises(ConfigError, match="run.budget"):
        parse_duration(text)


def _total(p, c: Costs) -> float:
    train = p.steps_per_epoch * (p.freeze_epochs * c.frozen_step_s + (p.epochs - p.freeze_epochs) * c.step_s)
    return c.elapsed_s + train + (p.epochs // p.val_every) * c.val_s + c.val_s


@pytest.mark.parametrize("budget", [120, 900, 3600])
def test_plan_fits_the_budget_and_is_the_longest_that_does(budget):
    c = Costs(step_s=2.0, frozen_step_s=0.8, steps_per_epoch=10, val_s=6.0, elapsed_s=20.0)
    p = plan(budget, c, recipe_epochs=8, freeze_epochs=2, warmup_epochs=1.0, started=datetime(2026, 1, 1, 12))
    assert p.seconds == pytest.approx(_total(p, c))
    assert p.seconds <= budget * MARGIN
    # One more epoch (at the plan's cadence) would not fit.
    longer = plan(budget * 10, c, recipe_epochs=8, freeze_epochs=2, warmup_epochs=1.0)
    assert longer.epochs > p.epochs
    assert p.epochs % p.val_every == 0  # the last epoch is validated
    # Freeze and warm-up keep the recipe's share of the schedule: 2/8 and 1/8 of it.
    assert p.freeze_epochs == int(2 * p.epochs / 8)
    assert p.warmup_epochs == pytest.approx(p.epochs / 8, abs=1e-3)
    assert "epochs ×" in p.describe() and "ends ~" in p.describe()


def test_validation_is_spread_out_when_it_would_dominate():
    c = Costs(step_s=1.0, frozen_step_s=1.0, steps_per_epoch=5, val_s=10.0, elapsed_s=5.0)
    p = plan(600, c, recipe_epochs=10)
    assert p.val_every > 1
    assert (p.epochs // p.val_every) * c.val_s <= 0.2 * p.epochs * 5 * c.step_s + c.val_s


def test_the_cadence_divides_the_epochs_instead_of_the_epochs_shrinking_to_the_cadence():
    """GAN-like costs (FID validation 13.5 s against 18.5 s epochs): 6 epochs with one validation at the end fit
    (10 + 6 x 18.8 + 13.5 + 13.5 = 149.8 s of 162 s); 7 would not (168.6 s). Cutting to a multiple of the cadence
    the first fit needed (4) planned 4 epochs and left a third of the budget unused."""
    c = Costs(
        step_s=0.185, frozen_step_s=0.185, steps_per_epoch=100, val_s=13.5, elapsed_s=10, epoch_s=0.3, final_val_s=13.5
    )
    p = plan(180, c, recipe_epochs=18)
    assert (p.epochs, p.val_every) == (6, 6)
    assert p.seconds == pytest.approx(10 + 6 * 18.8 + 13.5 + 13.5)


@pytest.mark.parametrize("budget", [60, 95, 180, 400, 1000])
def test_no_longer_schedule_with_a_validated_last_epoch_fits(budget):
    """Hand rule: validation (8 s) may take a fifth of training (10 s an epoch), so the cheapest cadence is every
    4 epochs (every e for e < 4); it may stretch up to 8 to divide e. e epochs cost 5 + 10 e + 8 e/k + 8 s final;
    the plan is the largest e that fits, e.g. never 11 (prime) or 22 (divisors 11, 22: too few validations)."""
    c = Costs(step_s=1.0, frozen_step_s=1.0, steps_per_epoch=10, val_s=8.0, elapsed_s=5.0)
    p = plan(budget, c, recipe_epochs=10)

    def fits(e: int) -> bool:
        cheapest = min(e, 4)
        cadences = [k for k in range(cheapest, 2 * cheapest + 1) if e % k == 0]
        return bool(cadences) and 5 + e * 10 + e // cadences[0] * 8.0 + 8.0 <= budget * MARGIN

    assert p.epochs == max(e for e in range(1, 200) if fits(e))
    assert p.epochs % p.val_every == 0 and p.val_every <= 2 * min(p.epochs, 4)


def test_the_cadence_keeps_enough_validations_for_the_curves():
    """The segmentation recipe's costs at 3 minutes (bench/recipes.py): 22 epochs would only divide into a cadence
    of 11 (two validations); the plan takes 21 validated every 3 instead."""
    c = Costs(
        step_s=0.98, frozen_step_s=0.654, steps_per_epoch=6, val_s=2.5, elapsed_s=23.0, epoch_s=0.3, final_val_s=2.5
    )
    p = plan(180, c, recipe_epochs=10, freeze_epochs=1)
    assert p.epochs % p.val_every == 0 and p.epochs // p.val_every >= 4
    assert p.epochs >= 20


def test_the_safety_net_leaves_room_for_what_follows_training():
    c = Costs(step_s=1.0, frozen_step_s=0.3, steps_per_epoch=8, val_s=4.0, elapsed_s=29.0, epoch_s=0.5, final_val_s=4.2)
    # 180 - 29 before training - (4 validation + 0.5 checkpoints + 4.2 final + 2 + 2 % of 180 exit) = 136.7
    assert safety_net_s(180, c) == 136
    p = plan(180, c, recipe_epochs=8, freeze_epochs=1)
    assert p.seconds - c.elapsed_s - c.final_s <= safety_net_s(180, c)  # the plan ends before the net


def test_a_budget_too_short_for_one_epoch_is_a_named_error():
    c = Costs(step_s=5.0, frozen_step_s=5.0, steps_per_epoch=20, val_s=30.0, elapsed_s=40.0)
    with pytest.raises(ConfigError, match="run.budget 60s is too short"):
        plan(60, c, recipe_epochs=5)


# ---- a budgeted run --------------------------------------------------------------------------------------------
def _budget_recipe(tmp_path: Path, budget: str) -> dict:
    root = write_class_folders(tmp_path / "data", per_class=12)
    return tiny_recipe(
        root,
        tmp_path / "runs",
        optim={"scheduler": "cosine", "warmup_epochs": 1.0},
        finetune={"freeze_epochs": 1},
        run={"budget": budget, "plots": False},
        trainer={"max_epochs": 4},
    )


def test_a_budgeted_run_trains_the_whole_planned_schedule(tmp_path, monkeypatch, caplog):
    """With fixed measured costs the plan is known: the run trains every planned epoch, validates on the planned
    cadence (the last epoch included), scales freeze and warm-up, and ends with the cosine fully decayed."""

    def fixed_costs(module, datamodule, trainer_cfg, steps=4):
        return 1.0, 0.5, 1.0, len(datamodule.train_dataloader())  # seconds: step, frozen step, validation batch

    monkeypatch.setattr(budget, "measure", fixed_costs)
    # The real steps are far cheaper than these costs, but a busy machine must not trip the net here (it has its
    # own test below): this one checks that the plan reaches the Trainer, scheduler and metrics intact.
    monkeypatch.setattr(budget, "safety_net_s", lambda budget_s, costs: 3600)
    caplog.set_level(logging.INFO, logger="cvsuite")
    run_dir = train(from_dict(_budget_recipe(tmp_path, "60s")))
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    epochs, every = saved["trainer"]["max_epochs"], saved["trainer"]["check_val_every_n_epoch"]
    assert epochs > 4 and epochs % every == 0
    assert saved["finetune"]["freeze_epochs"] == int(epochs / 4)
    assert saved["optim"]["warmup_epochs"] == pytest.approx(epochs / 4, abs=1e-3)
    assert any("budget plan: ≈ " in r.getMessage() for r in caplog.records)
    with (run_dir / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == list(range(1, epochs + 1))  # epochs count from 1
    validated = [int(r["epoch"]) for r in rows if r.get("val_loss")]
    assert validated == [e for e in range(1, epochs + 1) if e % every == 0] and validated[-1] == epochs
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    lr = last["lr_schedulers"][0]["_last_lr"][0]
    assert lr == pytest.approx(0.01 * 0.01, rel=0.05)  # optim.lr x optim.min_lr_ratio: the cosine ran to its end


def test_a_budgeted_run_measures_this_machine_and_finishes(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="cvsuite")
    run_dir = train(from_dict(_budget_recipe(tmp_path, "20s")))
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["run"]["budget"] == "20s" and saved["trainer"]["max_time"]["seconds"] < 20
    assert saved["trainer"]["max_epochs"] % saved["trainer"]["check_val_every_n_epoch"] == 0
    assert json.loads((run_dir / "metrics.json").read_text())["accuracy"] is not None
    assert any("budget plan: ≈ " in r.getMessage() for r in caplog.records)


def test_a_resumed_budget_run_continues_its_own_plan():
    cfg = from_dict(tiny_recipe(Path("."), Path("runs"), run={"budget": "10min"}, trainer={"max_epochs": 4}))
    stored = {
        "trainer": {"max_epochs": 23, "check_val_every_n_epoch": 2, "max_time": {"seconds": 500}},
        "finetune": {"freeze_epochs": 5},
        "optim": {"warmup_epochs": 5.75},
    }
    cfg.trainer["max_time"] = {"seconds": 500}
    out = budget.resumed_config(cfg, stored)
    assert out.trainer["max_epochs"] == 23 and out.trainer["check_val_every_n_epoch"] == 2
    assert out.finetune.freeze_epochs == 5 and out.optim.warmup_epochs == 5.75
    assert "max_time" not in out.trainer  # the budget counted from the first process's start


def test_a_budget_over_several_devices_is_refused(tmp_path):
    cfg = from_dict(tiny_recipe(tmp_path, tmp_path / "runs", run={"budget": "5min"}, trainer={"devices": 2}))
    with pytest.raises(ConfigError, match="run.budget plans a one-process run"):
        budget.budget_config(cfg, None, None, started=0.0)


def test_the_plan_reserves_a_whole_split_for_the_final_evaluation():
    """With data.val_subset, validations inside training are cheap but the final evaluation scores the whole
    split: the plan budgets that full pass once."""
    cheap = Costs(step_s=1.0, frozen_step_s=1.0, steps_per_epoch=10, val_s=2.0, elapsed_s=10.0)
    full = Costs(step_s=1.0, frozen_step_s=1.0, steps_per_epoch=10, val_s=2.0, elapsed_s=10.0, final_val_s=60.0)
    p_cheap, p_full = plan(600, cheap, recipe_epochs=5), plan(600, full, recipe_epochs=5)
    assert p_full.epochs < p_cheap.epochs
    assert p_full.seconds == pytest.approx(_total(p_full, full) - full.val_s + 60.0)
    assert p_full.seconds <= 600 * MARGIN


def test_a_run_slower_than_its_plan_still_ends_inside_the_budget(tmp_path, monkeypatch):
    """Measured costs far too optimistic (a busy machine after the probe): the plan asks for far more epochs than
    fit, and the safety net stops training early enough that validation, the final evaluation and metrics.json
    still end inside the budget."""

    def optimistic(module, datamodule, trainer_cfg, steps=4):
        return 0.0005, 0.0005, 0.0005, len(datamodule.train_dataloader())

    monkeypatch.setattr(budget, "measure", optimistic)
    started = time.time()
    run_dir = train(from_dict(_budget_recipe(tmp_path, "12s")), started=started)
    wall = time.time() - started
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    with (run_dir / "metrics.csv").open() as fh:
        trained = len(list(csv.DictReader(fh)))
    assert trained < saved["trainer"]["max_epochs"]  # stopped by the net, not by the plan
    assert json.loads((run_dir / "metrics.json").read_text())["accuracy"] is not None
    assert wall < 12
