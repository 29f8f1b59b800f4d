"""GAN parts: generator/discriminator shapes per resolution, DiffAugment, losses, FID/KID properties, GAN data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from cvsuite.config import ChoiceError
from cvsuite.data.common import DatasetError
from cvsuite.data.generation import GenerationDataConfig, GenerationDataModule, RepeatSampler
from cvsuite.metrics.generation import INCEPTION_FILE, BackboneFeatures, GenerationMetrics, find_inception_weights
from cvsuite.models.backbone import create_backbone
from cvsuite.models.generation import (
    DCGANDiscriminator,
    DiffAugment,
    ProjectedDiscriminator,
    create_generator,
    discriminator_loss,
    generator_loss,
)
from tests.conftest import gather_like_ddp

TINY = "test_efficientnet"


# ---- models --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["fastgan", "dcgan"])
@pytest.mark.parametrize("size", [32, 64, 128, 256])
def test_generator_output_shape_and_range(name, size):
    g = create_generator(name, image_size=size, latent_dim=8, channels=2, num_classes=3)
    out = g(torch.randn(2, 8), torch.tensor([0, 2]))
    assert out.shape == (2, 3, size, size)
    assert out.abs().max() <= 1


def test_fastgan_upsampling_choice_keeps_the_weights_and_changes_only_the_interpolation():
    torch.manual_seed(0)
    nearest = create_generator("fastgan", image_size=32, latent_dim=8, channels=2).eval()
    bilinear = create_generator("fastgan", image_size=32, latent_dim=8, channels=2, upsample="bilinear").eval()
    bilinear.load_state_dict(nearest.state_dict())  # same parameters: a checkpoint loads into either
    z = torch.randn(2, 8)
    a, b = nearest(z), bilinear(z)
    assert a.shape == b.shape == (2, 3, 32, 32) and not torch.allclose(a, b)
    assert {m.mode for m in bilinear.modules() if isinstance(m, nn.Upsample)} == {"bilinear"}
    assert {m.mode for m in nearest.modules() if isinstance(m, nn.Upsample)} == {"nearest"}  # FastGAN's, the default
    with pytest.raises(ChoiceError, match="model.g_upsample: unknown 'bicubic'. Choose one of nearest, bilinear"):
        create_generator("fastgan", image_size=32, upsample="bicubic")


def test_generator_rejects_bad_size_and_name():
    with pytest.raises(ValueError, match="power of two"):
        create_generator("fastgan", image_size=48)
    with pytest.raises(KeyError, match="fastgan, dcgan"):
        create_generator("stylegan", image_size=64)


def test_conditional_generator_uses_the_label():
    torch.manual_seed(0)
    g = create_generator("fastgan", image_size=32, latent_dim=8, channels=2, num_classes=2).eval()
    z = torch.randn(1, 8)
    assert not torch.allclose(g(z, torch.tensor([0])), g(z, torch.tensor([1])))


@pytest.mark.parametrize("size", [64, 128, 256])
def test_projected_discriminator_scales(size):
    trunk = create_backbone(TINY, pretrained=False, features_only=True)
    d = ProjectedDiscriminator(trunk, (0.5,) * 3, (0.5,) * 3, image_size=size, channels=4, num_classes=2)
    logits = d(torch.rand(2, 3, size, size) * 2 - 1, torch.tensor([0, 1]))
    # One logit map per backbone scale of stride >= 4, each reduced to <= 4x4 patches by its head.
    assert len(logits) == 4
    for x in logits:
        assert x.shape[:2] == (2, 1) and max(x.shape[-2:]) <= 4


def test_projected_discriminator_resizes_input_and_can_fix_projections():
    trunk = create_backbone(TINY, pretrained=False, features_only=True)
    d = ProjectedDiscriminator(
        trunk, (0.5,) * 3, (0.5,) * 3, image_size=32, channels=4, input_size=64, projection="fixed"
    )
    assert [tuple(x.shape) for x in d(torch.zeros(1, 3, 32, 32))] == [
        (1, 1, 4, 4),
        (1, 1, 4, 4),
        (1, 1, 4, 4),
        (1, 1, 2, 2),
    ]
    assert not any(p.requires_grad for p in d.project.parameters())
    assert all(p.requires_grad for p in d.heads.parameters())
    with pytest.raises(ValueError, match="learned or fixed"):
        ProjectedDiscriminator(trunk, (0.5,) * 3, (0.5,) * 3, projection="frozen")


@pytest.mark.parametrize("size", [64, 128, 256])
def test_dcgan_discriminator_shape(size):
    d = DCGANDiscriminator(size, channels=4, num_classes=2)
    (logits,) = d(torch.zeros(2, 3, size, size), torch.tensor([0, 1]))
    assert logits.shape == (2, 1, 4, 4)


def test_diffaugment_keeps_shape_and_gradients():
    torch.manual_seed(0)
    x = (torch.rand(8, 3, 16, 16) * 2 - 1).requires_grad_()
    y = DiffAugment("color,translation,cutout")(x)
    assert y.shape == x.shape and not torch.allclose(y, x)
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert torch.equal(DiffAugment("")(x), x)
    with pytest.raises(ValueError, match="colour"):
        DiffAugment("colour")


def test_cutout_zeroes_a_quarter_and_translation_shifts_in_zeros():
    torch.manual_seed(0)
    ones = torch.ones(64, 3, 16, 16)
    cut = DiffAugment("cutout")(ones)
    # An 8x8 square (half the side) is zeroed, clipped where it leaves the image: at most a quarter.
    zero_frac = (cut == 0).float().mean(dim=(1, 2, 3))
    assert zero_frac.max() <= 0.25 + 1e-6 and zero_frac.mean() > 0.1
    moved = DiffAugment("translation")(ones)
    assert set(moved.unique().tolist()) <= {0.0, 1.0}
    assert (moved == 0).float().mean() > 0  # some images were shifted, exposing the zero padding


def test_losses_match_hand_computed_values():
    real, fake = [torch.tensor([2.0, 0.5])], [torch.tensor([-2.0, 0.0])]
    # hinge: mean(relu(1 - real)) + mean(relu(1 + fake)) = (0 + 0.5)/2 + (0 + 1)/2
    assert torch.isclose(discriminator_loss(real, fake, "hinge"), torch.tensor(0.75))
    assert torch.isclose(generator_loss(fake, "hinge"), torch.tensor(1.0))
    sp = torch.nn.functional.softplus
    expected = sp(-real[0]).mean() + sp(fake[0]).mean()
    assert torch.isclose(discriminator_loss(real, fake, "nonsaturating"), expected)
    assert torch.isclose(discriminator_loss(real * 2, fake * 2, "hinge"), 2 * torch.tensor(0.75))  # summed over scales
    with pytest.raises(ValueError, match="hinge, nonsaturating"):
        generator_loss(fake, "wgan")


# ---- metrics -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_features() -> BackboneFeatures:
    torch.manual_seed(0)
    return BackboneFeatures(TINY, input_size=32, pretrained=False)


def _images(n: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 24, 24, generator=g) * 0.6 + 0.2 + shift).clamp(0, 1)


def _metrics(feature, real, fake, batch: int) -> dict:
    m = GenerationMetrics(feature, kid_subset_size=20, kid_subsets=10)
    for i in range(0, len(real), batch):
        m.update(real[i : i + batch], real=True)
    for i in range(0, len(fake), batch):
        m.update(fake[i : i + batch], real=False)
    return m.compute()


def test_fid_kid_do_not_depend_on_batch_size_and_vanish_for_identical_sets(tiny_features):
    real, fake = _images(48, 0), _images(48, 1, shift=0.15)
    a, b = _metrics(tiny_features, real, fake, 5), _metrics(tiny_features, real, fake, 48)
    assert a["fid"] == pytest.approx(b["fid"], rel=1e-6)
    assert a["kid"] == pytest.approx(b["kid"], rel=1e-6, abs=1e-12)
    same = _metrics(tiny_features, real, real, 16)
    assert abs(same["fid"]) < 1e-3 * a["fid"]
    assert a["fid"] > 0 and a["kid"] > same["kid"]
    assert same["kid"] < 1e-3 * a["kid"] + 1e-9
    assert tiny_features(real[:2]).dtype == torch.float64


def test_metric_keys_name_the_feature_network_and_real_stats_survive_reset(tiny_features):
    real, fake = _images(30, 0), _images(30, 1, shift=0.15)
    m = GenerationMetrics(tiny_features, kid_subset_size=10, kid_subsets=5)
    m.update(real, real=True)
    m.update(fake, real=False)
    first = m.compute()
    assert first["fid"] == first[f"fid_{TINY}"] and first["kid"] == first[f"kid_{TINY}"]
    assert first["feature_network"] == TINY and first["num_real"] == first["num_fake"] == 30
    assert "fid_inception" not in first  # no Inception weights on this machine: the key is skipped, not downloaded
    m.reset()
    assert m.num_real == 30 and m.num_fake == 0
    m.update(fake, real=False)
    assert m.compute()["fid"] == pytest.approx(first["fid"], rel=1e-9)
    m.reset(real=True)
    assert m.num_real == 0


def test_backbone_features_plug_into_torchmetrics_directly(tiny_features):
    real, fake = _images(30, 0), _images(30, 1, shift=0.15)
    fid = FrechetInceptionDistance(feature=tiny_features, normalize=True)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    ours = _metrics(tiny_features, real, fake, 30)["fid"]
    assert float(fid.compute()) == pytest.approx(ours, rel=1e-6)


def test_inception_weights_are_found_locally_or_not_at_all(tiny_features, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="inception_weights"):
        GenerationMetrics(tiny_features, inception_weights=tmp_path / "nope.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    assert find_inception_weights() is None  # nothing cached: skip the key, never download
    cached = tmp_path / "hub" / "checkpoints" / INCEPTION_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert find_inception_weights() == cached
    assert find_inception_weights(cached.parent) == cached  # a folder holding the file works too


# ---- data ----------------------------------------------------------------------------------------------------
def _write(path: Path, size: tuple[int, int], value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


def test_image_folder_any_depth_resized_and_scaled(tmp_path):
    _write(tmp_path / "a.png", (40, 20), 255)
    _write(tmp_path / "deep" / "er" / "b.jpg", (20, 50), 0)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    dm = GenerationDataModule(GenerationDataConfig(root=str(tmp_path), image_size=16, batch_size=2))
    with pytest.warns(UserWarning, match="broken.png"):
        dm.setup("fit")
    assert len(dm.train_set) == 2 and len(dm.skipped) == 1
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (2, 3, 16, 16)
    assert batch["image"].max() == 1 and batch["image"].min() == -1
    assert dm.num_classes == 0


def test_conditional_folders_give_classes(tmp_path):
    for name in ("cat", "dog"):
        for i in range(3):
            _write(tmp_path / name / f"{i}.png", (16, 16), 100)
    dm = GenerationDataModule(GenerationDataConfig(root=str(tmp_path), image_size=16, conditional=True))
    dm.setup("fit")
    assert dm.class_names == ["cat", "dog"] and dm.num_classes == 2
    assert sorted(dm.train_set.labels) == [0, 0, 0, 1, 1, 1]


def test_empty_folder_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="no images"):
        GenerationDataModule(GenerationDataConfig(root=str(tmp_path))).setup("fit")


def test_repeat_sampler_draws_the_epoch_size_evenly_and_reproducibly():
    s = RepeatSampler(size=10, num_samples=35, seed=1)
    s.set_epoch(3)
    first = list(s)
    assert len(first) == 35 and np.bincount(first, minlength=10).min() >= 3
    s.set_epoch(3)
    assert list(s) == first
    s.set_epoch(4)
    assert list(s) != first


def test_features_gathered_from_two_processes_give_the_one_process_fid_kid(tiny_features):
    """Real and fake features split over two 'ranks' (one padded copy each), merged: the one-process values."""
    real, fake = _images(11, 0), _images(11, 1, shift=0.15)
    single = GenerationMetrics(tiny_features, kid_subset_size=5, kid_subsets=4)
    single.update(real, real=True, indices=torch.arange(11))
    single.update(fake, real=False, indices=torch.arange(11))
    expected = single.compute()
    ranks = [GenerationMetrics(tiny_features, kid_subset_size=5, kid_subsets=4) for _ in range(2)]
    for r, m in enumerate(ranks):
        idx = torch.tensor([i % 11 for i in range(r, 12, 2)])  # DistributedSampler: r, r+2, ...; 11 -> 0 again
        m.update(real[idx], real=True, indices=idx)
        m.update(fake[idx], real=False, indices=idx)
    for name, bank in ranks[0].banks.items():
        gather_like_ddp(bank, ranks[1].banks[name])
    got = ranks[0].compute()
    assert got["num_real"] == got["num_fake"] == 11
    assert got["fid"] == pytest.approx(expected["fid"], rel=1e-9)
    assert got["kid"] == pytest.approx(expected["kid"], rel=1e-9, abs=1e-15)
