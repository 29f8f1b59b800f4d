"""Adaptive augmentation strength for the GAN (ADA, Karras et al. 2020): the probability p follows the
discriminator's overfitting, stays in [0, 1], is saved and resumed, is synced over DDP processes, and spans
identity (p = 0) to the fixed DiffAugment (p = 1)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import lightning as L
import pytest
import torch

from cvsuite.config import ConfigError, load_config
from cvsuite.models.generation import AdaptiveDiffAugment, DiffAugment
from cvsuite.tasks.generation import GenerationTask
from tests.test_generation_task import ROOT, _feature_weights, _OneBatch, blob_images, gan_recipe, tiny_task


def _logits(value: float, n: int = 8) -> list[torch.Tensor]:
    """A projected discriminator's output shape: one (n, 1, h, w) patch-logit map per scale."""
    return [torch.full((n, 1, 4, 4), value), torch.full((n, 1, 2, 2), value)]


def _steps(aug: AdaptiveDiffAugment, logits: list[torch.Tensor], steps: int) -> list[float | None]:
    out = []
    for _ in range(steps):
        aug.accumulate(logits)
        out.append(aug.update())
    return out


# ---- the controller ------------------------------------------------------------------------------------------
def test_p_rises_when_the_discriminator_is_sure_of_the_reals_and_falls_when_it_is_not():
    aug = AdaptiveDiffAugment(target=0.6, interval=4, ramp_images=320)
    # Every real patch called real: r_t = 1 > 0.6, adjusted once per 4 steps by 4 x 8 images / 320 = 0.1.
    assert _steps(aug, _logits(2.5), 4) == [None, None, None, 1.0]
    assert float(aug.p) == pytest.approx(0.1)
    _steps(aug, _logits(0.3), 8)
    assert float(aug.p) == pytest.approx(0.3)
    assert aug.stats.tolist() == [0, 0, 0, 0]  # reset after each adjustment
    # Half the patches negative: r_t = 0 < 0.6, p falls by the same step.
    mixed = [torch.cat([torch.ones(4, 1, 4, 4), -torch.ones(4, 1, 4, 4)]), torch.zeros(8, 1, 2, 2) + 1e-3]
    mixed[1][4:] = -1
    assert _steps(aug, mixed, 4)[-1] == pytest.approx(0.0)
    assert float(aug.p) == pytest.approx(0.2)
    _steps(aug, _logits(-1.0), 4)
    assert float(aug.p) == pytest.approx(0.1)
    # r_t exactly at the target: p stays.
    at_target = [torch.cat([torch.ones(8, 1, 4, 4), -torch.ones(2, 1, 4, 4)])]  # (8 - 2) / 10 = 0.6
    _steps(aug, at_target, 4)
    assert float(aug.p) == pytest.approx(0.1)


def test_p_is_clamped_to_0_and_1():
    aug = AdaptiveDiffAugment(target=0.6, interval=1, ramp_images=3)  # 8 images per step: a step of 2.67
    _steps(aug, _logits(1.0), 3)
    assert float(aug.p) == 1.0
    _steps(aug, _logits(-1.0), 1)
    assert float(aug.p) == 0.0
    _steps(aug, _logits(-1.0), 3)
    assert float(aug.p) == 0.0


def test_p_and_the_running_counts_round_trip_through_a_state_dict():
    aug = AdaptiveDiffAugment(target=0.6, interval=4, ramp_images=100)
    _steps(aug, _logits(1.0), 6)  # one adjustment, then two steps into the next interval
    state = aug.state_dict()
    assert set(state) == {"p", "stats"}
    fresh = AdaptiveDiffAugment(target=0.6, interval=4, ramp_images=100)
    fresh.load_state_dict(state)
    assert float(fresh.p) == float(aug.p) == pytest.approx(0.32)
    assert fresh.stats.tolist() == aug.stats.tolist() == [2 * 8 * 20, 2 * 8 * 20, 16, 2]
    # Both go on identically: the resumed one adjusts after the same two remaining steps.
    assert _steps(fresh, _logits(1.0), 2) == _steps(aug, _logits(1.0), 2) == [None, 1.0]
    assert float(fresh.p) == float(aug.p)
    # The fixed DiffAugment has no state, so checkpoints of runs without ADA keep their keys.
    assert DiffAugment().state_dict() == {}


# ---- the augmentation ----------------------------------------------------------------------------------------
def _images(n: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 1.8 - 0.9


def test_p_0_is_the_identity_and_p_1_is_exactly_the_fixed_diffaugment():
    x = _images()
    assert torch.equal(AdaptiveDiffAugment(p=0.0)(x), x)
    torch.manual_seed(3)
    fixed = DiffAugment()(x)
    torch.manual_seed(3)
    adaptive = AdaptiveDiffAugment(p=1.0)(x)
    assert torch.equal(adaptive, fixed) and not torch.equal(fixed, x)


def test_in_between_each_image_is_augmented_with_probability_p_and_gradients_flow():
    torch.manual_seed(0)
    x = _images(400).requires_grad_(True)
    out = AdaptiveDiffAugment("cutout", p=0.25)(x)  # cutout always zeroes part of a (non-zero) image
    changed = (out != x).flatten(1).any(1).float().mean()
    assert 0.17 < float(changed) < 0.33
    out.sum().backward()
    # Untouched images pass gradient 1 everywhere; cut-out ones 0 under the square.
    untouched = ~(out != x).flatten(1).any(1)
    assert torch.equal(x.grad[untouched], torch.ones_like(x.grad[untouched]))
    assert (x.grad[~untouched] == 0).any()


# ---- in the task ---------------------------------------------------------------------------------------------
def test_bad_ada_settings_are_named_errors():
    with pytest.raises(ConfigError, match="model.ada_target"):
        tiny_task(ada_target=1.5)
    with pytest.raises(ConfigError, match="model.ada_interval"):
        tiny_task(ada_target=0.6, ada_interval=0)
    with pytest.raises(ConfigError, match="model.ada_ramp_images"):
        tiny_task(ada_target=0.6, ada_ramp_images=0)
    with pytest.raises(ConfigError, match="model.diffaugment"):
        tiny_task(ada_target=0.6, diffaugment="")
    recipe = ROOT / "configs" / "generation" / "fewshot.yaml"
    with pytest.raises(ConfigError, match="model.ada_target"):
        load_config(recipe, ["--data.root", "x", "--model.ada_target", "high"])
    with pytest.raises(ConfigError, match="ada_target"):
        load_config(recipe, ["--data.root", "x", "--model.ada_targt", "0.6"])
    assert load_config(recipe, ["--data.root", "x", "--model.ada_target", "null"]).model.ada_target is None


def test_training_with_ada_adjusts_p_checkpoints_it_and_samples_vary(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    torch.manual_seed(0)
    module = tiny_task(ada_target=0.6, ada_interval=1, ada_ramp_images=8, grid_size=8, g_channels=4)
    trainer = L.Trainer(
        max_epochs=1,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ModelCheckpoint(dirpath=tmp_path, filename="last", enable_version_counter=False)],
        accelerator="cpu",
    )
    trainer.fit(module, torch.utils.data.DataLoader(_OneBatch(), batch_size=2))
    # 2 steps of 2 images, adjusted after each by 2 / 8 = 0.25 up or down (or held at 0).
    p = float(module.augment.p)
    assert p in (0.0, 0.25, 0.5)
    assert module.augment.stats.tolist() == [0, 0, 0, 0]
    assert 0.0 <= float(trainer.callback_metrics["ada_p"]) <= 1.0
    assert -1.0 <= float(trainer.callback_metrics["ada_rt"]) <= 1.0
    loaded = GenerationTask.load_from_checkpoint(tmp_path / "last.ckpt", pretrained=False)
    assert isinstance(loaded.augment, AdaptiveDiffAugment) and float(loaded.augment.p) == p
    samples = loaded.eval().sample_grid()
    assert samples.shape == (8, 3, 32, 32)
    assert float(samples.std(0).mean()) > 1e-3  # the samples differ from each other


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_rank(rank: int, port: int, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    aug = AdaptiveDiffAugment(target=0.6, interval=2, ramp_images=64)
    # Rank 0's discriminator is sure of its reals, rank 1's calls them all fake: r_t over both = 0 < 0.6.
    r_t = _steps(aug, _logits(1.0 if rank == 0 else -1.0), 2)[-1]
    torch.save({"p": float(aug.p), "r_t": r_t}, Path(out) / f"{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_p_is_the_same_on_every_ddp_process(tmp_path):
    torch.multiprocessing.start_processes(
        _ddp_rank, args=(_free_port(), str(tmp_path)), nprocs=2, start_method="fork" if os.name == "posix" else "spawn"
    )
    results = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    assert results[0] == results[1] == {"p": 0.0, "r_t": 0.0}
    # Alone, rank 0 would have raised p by 2 x 8 / 64; summed with rank 1 it sees r_t = 0 and holds p at 0.
    alone = AdaptiveDiffAugment(target=0.6, interval=2, ramp_images=64)
    _steps(alone, _logits(1.0), 2)
    assert float(alone.p) == pytest.approx(0.25)


@pytest.mark.slow  # FID/KID every epoch: ~10 s on an idle machine
def test_generation_resume_with_ada_is_exact(tmp_path, monkeypatch):
    from tests.test_resume import _load, assert_same_run, interrupt_and_resume

    data = blob_images(tmp_path / "data" / "train", n=8)
    recipe = gan_recipe(
        data.parent,
        tmp_path,
        _feature_weights(tmp_path),
        model={"ada_target": 0.6, "ada_interval": 3, "ada_ramp_images": 16},
        trainer={"max_epochs": 3},
    )
    recipe["run"] = {"plots": False}
    recipe["data"]["num_workers"] = 0
    full, cut = interrupt_and_resume(recipe, tmp_path, monkeypatch, epoch=2)
    assert_same_run(full, cut)  # every state_dict key, augment.p and augment.stats included
    # 2 steps per epoch, adjusted every 3: the cut after epoch 1 (4 steps) fell mid-interval, with counts to carry.
    state = _load(full / "checkpoints" / "last.ckpt")["state_dict"]
    assert {"augment.p", "augment.stats"} <= set(state)
