"""The GAN task: which parameters each optimiser step changes, mixed precision, and the whole user path:
train -> run folder -> resume -> tools/eval.py -> tools/generate.py."""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from cvsuite.config import ConfigError, FinetuneConfig, OptimConfig, from_dict, load_config
from cvsuite.metrics.generation import BackboneFeatures, feature_network
from cvsuite.models.backbone import create_backbone
from cvsuite.run import train
from cvsuite.tasks.generation import GenerationTask

TINY = "test_efficientnet"
EXTRA = "test_resnet"
ROOT = Path(__file__).resolve().parents[1]


def blob_images(folder: Path, n: int = 8, size: int = 24) -> Path:
    """Bright discs on dark noise, each at its own place: a tiny image set with some structure."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        cy, cx = rng.integers(6, size - 6, 2)
        img = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 25] = (230, 200, 40)
        Image.fromarray(img).save(folder / f"{i}.png")
    return folder


def _optim() -> dict:
    return {
        **asdict(OptimConfig()),
        "optimizer": "adam",
        "lr": 1e-3,
        "betas": [0.0, 0.99],
        "weight_decay": 0.0,
        "scheduler": "none",
    }


def tiny_task(**kw) -> GenerationTask:
    args = dict(
        optim=_optim(),
        finetune=asdict(FinetuneConfig()),
        image_size=32,
        backbone=TINY,
        pretrained=False,
        latent_dim=8,
        g_channels=2,
        d_channels=4,
        grid_size=4,
    )
    return GenerationTask(**{**args, **kw})


class Snapshots(L.Callback):
    """Parameters and backbone buffers before each optimiser step and after the batch."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def _snap(self, module) -> None:
        self.states.append({k: v.detach().clone() for k, v in module.state_dict().items()})

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        self._snap(module)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self._snap(module)


def _changed(a: dict, b: dict, prefix: str) -> set[str]:
    return {k for k in a if k.startswith(prefix) and not torch.equal(a[k], b[k])}


class _OneBatch(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        return {"image": torch.rand(3, 32, 32, generator=g) * 2 - 1, "label": i % 2}


def _one_batch_trainer(**kw) -> L.Trainer:
    """Trains on `_OneBatch` only: no validation, no files, no output."""
    quiet = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    return L.Trainer(max_epochs=1, limit_val_batches=0, accelerator="cpu", **quiet, **kw)


@pytest.mark.parametrize(("precision", "classes"), [("32-true", None), ("bf16-mixed", None), ("32-true", ["a", "b"])])
def test_d_step_then_g_step_change_only_their_own_parameters(precision, classes):
    torch.manual_seed(0)
    module = tiny_task(class_names=classes)
    snaps = Snapshots()
    trainer = _one_batch_trainer(callbacks=[snaps], precision=precision)
    trainer.fit(module, torch.utils.data.DataLoader(_OneBatch(), batch_size=4))
    before_d, before_g, after = snaps.states
    trainable_d = {n for n, p in module.discriminator.named_parameters() if "backbone" not in n and p.requires_grad}

    d_params = {f"discriminator.{n}" for n in trainable_d}
    # D step: discriminator weights move (every head's; hinge gradients of the output biases can cancel exactly),
    # the generator's do not.
    weights = {k for k in d_params if not k.endswith("bias")}
    assert _changed(before_d, before_g, "discriminator.") & d_params >= weights
    assert not _changed(before_d, before_g, "generator.")
    # G step: generator weights move, the discriminator's do not (its BatchNorm statistics may).
    g_params = {f"generator.{n}" for n, _ in module.generator.named_parameters()}
    assert _changed(before_g, after, "generator.") & g_params
    assert not _changed(before_g, after, "discriminator.") & d_params
    # The pretrained trunk is frozen: no parameter or BatchNorm statistic moves in either step.
    assert not _changed(before_d, after, "discriminator.backbone.")
    assert not any(p.requires_grad for p in module.backbone.parameters())
    assert module.backbone is module.discriminator.backbone
    # The EMA generator moved towards the trained one, and counted the update.
    assert _changed(before_d, after, "generator_ema.") and int(module.ema_updates) == 1
    assert np.isfinite(float(trainer.callback_metrics["train_g_loss"]))


def test_a_scheduler_counts_trainer_max_steps_as_two_optimiser_steps_per_batch():
    # trainer.max_steps counts both optimisers' steps: 4 steps are 2 batches, and the cosine ends at its floor there
    # (planned over 4 batches it would stop halfway down).
    module = tiny_task(optim={**_optim(), "scheduler": "cosine", "min_lr_ratio": 0.0, "warmup_share": 0.0})
    trainer = _one_batch_trainer(max_steps=4)
    trainer.fit(module, torch.utils.data.DataLoader(_OneBatch(), batch_size=1))
    assert int(module.ema_updates) == 2 and module.planned_batches() == 2
    for optimizer in trainer.optimizers:
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)


def test_under_a_budget_the_schedulers_follow_the_clock():
    # run.budget: the Trainer's epoch count is the clock's estimate, so the rates follow the clock's progress (as
    # every other task's), not a step count planned from trainer.max_epochs.
    from types import SimpleNamespace

    module = tiny_task(optim={**_optim(), "scheduler": "cosine", "min_lr_ratio": 0.0, "warmup_share": 0.0})
    state = {"progress": 0.5}
    module.clock = SimpleNamespace(lr_progress=lambda: state["progress"], recipe_epochs=18)
    optimizers, schedulers = module.configure_optimizers()
    for optimizer, scheduler in zip(optimizers, schedulers):
        scheduler.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5)  # the cosine halfway down
    state["progress"] = 1.0
    for optimizer, scheduler in zip(optimizers, schedulers):
        scheduler.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_optimisers_hold_no_frozen_parameters():
    module = tiny_task(d_lr=5e-4, d_betas=[0.5, 0.9], projection="fixed")
    module.trainer = None  # configure_optimizers needs no trainer when there is no schedule
    opt_g, opt_d = module.configure_optimizers()
    g_ids = {id(p) for group in opt_g.param_groups for p in group["params"]}
    d_ids = {id(p) for group in opt_d.param_groups for p in group["params"]}
    assert g_ids == {id(p) for p in module.generator.parameters()}
    assert d_ids == {id(p) for p in module.discriminator.heads.parameters()}
    assert opt_d.param_groups[0]["lr"] == 5e-4 and opt_d.param_groups[0]["betas"] == (0.5, 0.9)
    assert opt_g.param_groups[0]["lr"] == 1e-3 and opt_g.param_groups[0]["betas"] == (0.0, 0.99)
    learned = tiny_task(projection="learned")
    _, opt_d = learned.configure_optimizers()
    d_ids = {id(p) for group in opt_d.param_groups for p in group["params"]}
    trainable = [p for n, p in learned.discriminator.named_parameters() if not n.startswith("backbone.")]
    assert d_ids == {id(p) for p in trainable} and len(trainable) > len(list(learned.discriminator.heads.parameters()))


def test_bad_choices_fail_early():
    with pytest.raises(KeyError, match="projected, dcgan"):
        tiny_task(discriminator="stylegan")
    with pytest.raises(ValueError, match="hinge, nonsaturating"):
        tiny_task(loss="wgan")
    with pytest.raises(ValueError, match="freeze_epochs"):
        tiny_task(finetune={**asdict(FinetuneConfig()), "freeze_epochs": 2})


def test_dcgan_baseline_has_no_backbone():
    module = tiny_task(discriminator="dcgan", generator="dcgan")
    assert list(module.backbone.parameters()) == []
    assert module(torch.randn(2, 8)).shape == (2, 3, 32, 32)


@pytest.mark.parametrize("name", ["fewshot", "dcgan"])
def test_shipped_recipes_are_valid(name):
    cfg = load_config(ROOT / "configs" / "generation" / f"{name}.yaml", ["--data.root", "x"])
    assert cfg.task == "generation" and cfg.data.image_size == 64


def _feature_weights(tmp_path: Path) -> str:
    """A local weights file for the tiny FID feature network (the real one is pretrained lite0 at 224 px)."""
    torch.manual_seed(0)
    path = tmp_path / "features.pth"
    torch.save(create_backbone(TINY, pretrained=False).state_dict(), path)
    return str(path)


def gan_recipe(root: Path, out: Path, weights: str, **sections) -> dict:
    recipe = {
        "task": "generation",
        "data": {"root": str(root), "image_size": 32, "batch_size": 4, "images_per_epoch": 8},
        "model": {
            "backbone": TINY,
            "pretrained": False,
            "latent_dim": 8,
            "g_channels": 2,
            "d_channels": 4,
            "feature_network": TINY,
            "feature_weights": weights,
            "feature_input_size": 32,
            "extra_feature_networks": [],  # the default's lite0 column at 224 px: tested once, below
            "kid_subset_size": 4,
            "grid_size": 4,
        },
        "optim": {"optimizer": "adam", "lr": 2e-4, "betas": [0.0, 0.99], "weight_decay": 0.0, "scheduler": "none"},
        "trainer": {
            "max_epochs": 2,
            "default_root_dir": str(out),
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "log_every_n_steps": 1,
        },
    }
    for section, values in sections.items():
        recipe[section] = {**recipe.get(section, {}), **values}
    return recipe


def test_train_resume_eval_generate(tmp_path, capsys, monkeypatch):
    import tools.eval
    import tools.generate

    def networks(name: str, *args):  # the extra column in another tiny network (the default's is pretrained lite0)
        if args:
            return feature_network(name, *args)
        torch.manual_seed(1)
        return BackboneFeatures(name, input_size=32, pretrained=False)

    monkeypatch.setattr("cvsuite.tasks.generation.feature_network", networks)
    data = blob_images(tmp_path / "photos")
    recipe = gan_recipe(data, tmp_path / "run", _feature_weights(tmp_path), model={"extra_feature_networks": [EXTRA]})
    run_dir = train(from_dict(recipe))

    for name in ("config.yaml", "metrics.csv", "metrics.json", "samples.png", "gan_curves.png", "curves.png"):
        assert (run_dir / name).is_file(), name
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == ["epoch_001.png", "epoch_002.png"]
    with (run_dir / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {"train_g_loss", "train_d_loss", "val_fid", "val_kid", f"val_fid_{EXTRA}"} <= set(rows[0])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["feature_network"] == TINY and metrics["num_real"] == 8
    assert metrics["fid"] == metrics[f"fid_{TINY}"] > 0 and metrics[f"fid_{EXTRA}"] > 0
    # The best checkpoint is the epoch of the lowest FID in the main space, whatever the extra column says.
    assert metrics["fid"] == pytest.approx(min(float(r["val_fid"]) for r in rows), rel=1e-3)  # csv: 4 digits
    best_fid = min(float(r["val_fid"]) for r in rows)  # epochs may tie to the CSV's digits: either is the best
    extra = [float(r[f"val_fid_{EXTRA}"]) for r in rows if float(r["val_fid"]) == best_fid]
    assert any(metrics[f"fid_{EXTRA}"] == pytest.approx(v, rel=1e-3) for v in extra)
    assert metrics["epochs_done"] == 2 and metrics["stopped_by"] == "max_epochs"
    # The final evaluation is the best checkpoint's own validation read back (FID is not computed twice for the
    # same weights); scoring the checkpoint again gives the same numbers.
    best_ckpt = run_dir / "checkpoints" / "best.ckpt"
    state = torch.load(best_ckpt, weights_only=True)
    assert state["cvsuite_validation"]["step"] == state["global_step"]
    assert state["cvsuite_validation"]["metrics"]["fid"] == metrics["fid"]
    capsys.readouterr()
    assert tools.eval.main(["--ckpt", str(best_ckpt), "--output", str(tmp_path / "best_eval.json")]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("fid", "kid", f"fid_{EXTRA}", "num_fake"):
        assert again[key] == pytest.approx(metrics[key], rel=1e-5), key

    # Resume through the runner: the run folder gets the next epoch (see test_resume_restores_counters_and_optimisers).
    last = run_dir / "checkpoints" / "last.ckpt"
    assert train(from_dict({**recipe, "trainer": {**recipe["trainer"], "max_epochs": 3}}), resume=last) == run_dir
    assert (run_dir / "samples" / "epoch_003.png").is_file()
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 1 + 3

    capsys.readouterr()
    assert tools.eval.main(["--ckpt", str(last)]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"fid", "kid", "kid_std", f"fid_{TINY}", f"fid_{EXTRA}", "feature_network"} <= set(evaluated)

    out = tmp_path / "generated"
    assert tools.generate.main(["--ckpt", str(last), "--num", "5", "--output", str(out), "--seed", "3"]) == 0
    files = sorted(out.glob("*.png"))
    assert len(files) == 5 and all(Image.open(f).size == (32, 32) for f in files)
    again = tmp_path / "again"
    tools.generate.main(["--ckpt", str(last), "--num", "5", "--output", str(again), "--seed", "3"])
    assert np.array_equal(np.asarray(Image.open(files[0])), np.asarray(Image.open(again / "00000.png")))
    # The run folder stands for its best checkpoint: the epoch with the lowest FID.
    best = tmp_path / "best"
    assert tools.generate.main(["--ckpt", str(run_dir), "--num", "2", "--output", str(best), "--seed", "3"]) == 0
    by_hand = tmp_path / "by-hand"
    tools.generate.main(["--ckpt", str(run_dir / "checkpoints" / "best.ckpt"), "--num", "2", "--output", str(by_hand),
                         "--seed", "3"])  # fmt: skip
    assert np.array_equal(np.asarray(Image.open(best / "00001.png")), np.asarray(Image.open(by_hand / "00001.png")))


def test_the_final_evaluation_scores_again_when_validation_saw_part_of_the_split(tmp_path, monkeypatch):
    """Validation inside training limited to 1 of the 2 validation batches: its FID is not the evaluation of the
    whole split, so the final evaluation computes it (all 8 images) instead of reading the checkpoint's back."""
    calls = {"validate": 0}
    original = L.Trainer.validate

    def counting(self, *args, **kwargs):
        calls["validate"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(L.Trainer, "validate", counting)
    data = blob_images(tmp_path / "photos")
    recipe = gan_recipe(data, tmp_path / "run", _feature_weights(tmp_path), trainer={"limit_val_batches": 1})
    run_dir = train(from_dict(recipe))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    state = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    assert state["cvsuite_validation"]["metrics"]["num_fake"] == 4
    assert metrics["num_fake"] == metrics["num_real"] == 8 and calls["validate"] == 1
    # With the whole split validated, the run itself calls validate no more (see test_train_resume_eval_generate).
    calls["validate"] = 0
    recipe = gan_recipe(data, tmp_path / "run2", _feature_weights(tmp_path))
    metrics = json.loads((train(from_dict(recipe)) / "metrics.json").read_text())
    assert metrics["num_fake"] == 8 and calls["validate"] == 0


def test_the_first_validation_reports_its_one_off_work_to_the_budget_clock(tmp_path, monkeypatch):
    """The first validation loads the FID network and extracts the real images' features (made 1.5 s slower
    here); it reports that time as ``validation_once_s`` and later validations report none, so the budget clock
    does not charge it to every validation and the final evaluation (which would end training minutes early)."""

    def slow_network(name: str, *args):
        time.sleep(1.5)
        return feature_network(name, *args)

    monkeypatch.setattr("cvsuite.tasks.generation.feature_network", slow_network)
    seen: list[float] = []
    monkeypatch.setattr(GenerationTask, "on_validation_end", lambda self: seen.append(self.validation_once_s))
    data = blob_images(tmp_path / "photos", n=12)
    recipe = gan_recipe(data, tmp_path / "run", _feature_weights(tmp_path), trainer={"num_sanity_val_steps": 0})
    train(from_dict(recipe))  # as the recipes: no sanity check (its real features would not be kept)
    assert len(seen) >= 2  # two epochs' validations (and the final evaluation's)
    assert seen[0] >= 1.5  # the load and the real features
    assert seen[1:] == [0.0] * (len(seen) - 1)


@pytest.fixture
def one_thread():
    """One torch thread: with two, beside two busy processes on 2 cores, this tiny GAN's step took 3.8-4.0 s instead
    of 0.05 in about half of the tries (threads waiting for each other at every parallel region; BENCHMARKS.md, "CPU:
    other busy processes"), and a 20-s budget run then has too few steps to validate."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_budget_run_validates_its_final_weights_and_reads_that_validation_back(
    tmp_path, monkeypatch, caplog, one_thread
):
    """The GAN's final evaluation reads the best checkpoint's validation back, so the clock keeps no time for
    scoring it again: a final evaluation measured dearer than the whole budget (as if FID took 60 s) neither ends
    training early nor drops the validation of the final weights, and the run ends inside its budget."""
    from cvsuite.budget import BudgetClock

    measured = BudgetClock._measured_validation

    def dear_final(self, first_s, per_batch):
        measured(self, first_s, per_batch)
        self.costs.final_s = 60.0

    monkeypatch.setattr(BudgetClock, "_measured_validation", dear_final)
    caplog.set_level(logging.INFO, logger="cvsuite")
    data = blob_images(tmp_path / "photos")
    recipe = gan_recipe(
        data, tmp_path / "run", _feature_weights(tmp_path), run={"budget": "20s", "plots": False},
        trainer={"num_sanity_val_steps": 0},
    )  # fmt: skip
    started = time.time()
    run_dir = train(from_dict(recipe), started=started)
    assert time.time() - started < 20 * 1.05
    metrics = json.loads((run_dir / "metrics.json").read_text())
    with (run_dir / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    messages = [r.getMessage() for r in caplog.records]
    assert metrics["stopped_by"] == "deadline" and len(rows) >= 2
    assert rows[-1]["val_fid"]  # the final weights were validated
    assert not any("no validation of the final weights" in m for m in messages)
    assert any("own validation at step" in m for m in messages)
    assert metrics["fid"] == pytest.approx(min(float(r["val_fid"]) for r in rows if r["val_fid"]), rel=1e-3)


def test_g_upsample_is_for_fastgan_only_and_old_checkpoints_keep_nearest():
    assert tiny_task(g_upsample="bilinear").generator.ups["8"][0].mode == "bilinear"
    assert tiny_task().generator.ups["8"][0].mode == "nearest"  # hparams without the key: as trained before it
    with pytest.raises(ConfigError, match="model.g_upsample applies to the fastgan generator only"):
        tiny_task(generator="dcgan", g_upsample="bilinear")


def test_run_ema_is_refused_for_the_gan(tmp_path):
    recipe = gan_recipe(blob_images(tmp_path / "photos", n=4), tmp_path / "run", "unused", run={"ema_decay": 0.99})
    with pytest.raises(ValueError, match="model.ema_decay"):
        train(from_dict(recipe))


def test_resume_restores_counters_and_optimisers(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    def fit(module: GenerationTask, epochs: int, ckpt_path: str | None = None) -> L.Trainer:
        trainer = L.Trainer(
            max_epochs=epochs,
            limit_val_batches=0,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[ModelCheckpoint(dirpath=tmp_path, filename="last", enable_version_counter=False)],
            accelerator="cpu",
        )
        trainer.fit(module, torch.utils.data.DataLoader(_OneBatch(), batch_size=2), ckpt_path=ckpt_path)
        return trainer

    torch.manual_seed(0)
    fit(tiny_task(), 2)
    module = GenerationTask.load_from_checkpoint(tmp_path / "last.ckpt", pretrained=False)
    assert int(module.ema_updates) == 4  # 2 epochs x 2 batches
    trainer = fit(module, 3, str(tmp_path / "last.ckpt"))
    opt_g, opt_d = trainer.optimizers
    assert int(module.ema_updates) == 6
    # Adam's step counters went on from the checkpoint instead of restarting at 0.
    assert all(int(s["step"]) == 6 for s in opt_g.state.values())
    assert all(int(s["step"]) == 6 for s in opt_d.state.values())
    # The fixed sampling noise is part of the checkpoint, so a resumed run draws the same grid.
    assert torch.equal(module.grid_noise, tiny_task().grid_noise)


def _early_training(module: GenerationTask, steps: int = 6) -> None:
    """A few generator steps that move its weights fast, as the first steps of a GAN run do."""
    opt = torch.optim.Adam(module.generator.parameters(), 1e-2)
    for _ in range(steps):
        loss = (module.generator(torch.randn(8, module.hparams.latent_dim)) - 0.3).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        module.update_ema()


def test_eval_mode_samples_differ_from_each_other_after_a_few_steps():
    torch.manual_seed(0)
    module = tiny_task(image_size=32, g_channels=4, grid_size=16)
    _early_training(module)
    module.eval()
    samples = module.sample_grid()
    with torch.no_grad():
        module.generator_ema.train()
        train_mode = module.generator_ema(module.grid_noise)
        module.generator_ema.eval()
    spread_eval = float(samples.std(0).mean())
    spread_train = float(((train_mode.clamp(-1, 1) + 1) / 2).std(0).mean())
    # Without standing statistics the EMA generator's eval-mode samples were near-identical (spread ~1e-3 of the
    # train-mode spread); now they are as varied as in training.
    assert spread_eval > 0.5 * spread_train > 0


def test_standing_statistics_keep_samples_independent_of_the_batch_and_the_global_rng():
    torch.manual_seed(0)
    module = tiny_task(image_size=32, g_channels=4)
    _early_training(module)
    z = module.noise(5, seed=3)
    state = torch.get_rng_state()
    batch = module(z)
    assert torch.equal(state, torch.get_rng_state())  # refreshing the statistics drew no global random numbers
    alone = torch.cat([module(z[i : i + 1]) for i in range(5)])
    assert torch.allclose(batch, alone, atol=1e-5)
    # The statistics are refreshed once per EMA update, not per call.
    calls = module._stats_at
    module(z)
    assert module._stats_at == calls == int(module.ema_updates)


def test_the_gan_shares_the_ddp_and_gpu_base_but_no_fine_tuning_schedule():
    from cvsuite.tasks.base import BaseTask, TaskModule

    assert issubclass(GenerationTask, TaskModule) and not issubclass(GenerationTask, BaseTask)
    for name in ("apply_freeze", "backbone_frozen", "l1_penalty", "finetune_cfg"):
        assert not hasattr(GenerationTask, name), name


def _one_step(module: GenerationTask) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    _one_batch_trainer().fit(module, torch.utils.data.DataLoader(_OneBatch(), batch_size=4))
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_channels_last_gan_step_is_the_nchw_step_in_another_memory_layout():
    # The few-shot recipe trains in channels_last (faster on CPUs too): the same weights must come out of a step.
    torch.manual_seed(0)
    nchw = tiny_task(ada_target=0.6)
    nhwc = tiny_task(ada_target=0.6, channels_last=True)
    nhwc.load_state_dict(nchw.state_dict())
    before = {k: v.clone() for k, v in nchw.state_dict().items()}
    after_nchw, after_nhwc = _one_step(nchw), _one_step(nhwc)
    conv = next(m for m in nhwc.backbone.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    moved = [k for k in after_nchw if k.startswith("generator.") and not torch.equal(after_nchw[k], before[k])]
    assert len(moved) > 3, moved  # both optimiser steps ran
    for key in moved:
        torch.testing.assert_close(after_nhwc[key], after_nchw[key], rtol=1e-4, atol=1e-5, msg=key)
