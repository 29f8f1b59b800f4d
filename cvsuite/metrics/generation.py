"""FID and KID in the feature space of a pretrained backbone from our factory, through torchmetrics.

torchmetrics' `FrechetInceptionDistance` and `KernelInceptionDistance` accept any ``nn.Module`` as ``feature``;
`BackboneFeatures` is such a module (pooled features of ``create_backbone(name)``), so no Inception download is
needed. `GenerationMetrics` runs it once per image and hands the features to both metrics, whose states are
float64. The classic Inception FID is added only when torch-fidelity's Inception weights are on disk.

Keys of `GenerationMetrics.compute()`: ``fid`` and ``kid`` (with ``kid_std``) in the configured feature space, the
same values as ``fid_<network>`` / ``kid_<network>``, ``feature_network``, ``num_real``, ``num_fake``, and
``fid_inception`` when the Inception weights were found. Values from different feature networks (or numbers of
images) are not comparable with each other; FID is biased upwards for small sets, KID is not.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance
from torchmetrics.utilities import dim_zero_cat

from cvsuite.metrics.classification import UNKNOWN_INDEX, dedup_order
from cvsuite.models.backbone import create_backbone, data_config

log = logging.getLogger("cvsuite")

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's converted TF Inception weights


class BackboneFeatures(nn.Module):
    """Pooled features of a pretrained factory backbone, as a torchmetrics feature extractor.

    Input (N, 3, H, W) floats in [0, 1] (or uint8 in [0, 255]); images are resized to `input_size` (default: the
    weights' own, 224 for EfficientNet-Lite) and normalised as the weights expect. Output (N, num_features) float64,
    computed in float32 outside autocast. Always in eval mode with no gradients.
    """

    def __init__(
        self,
        name: str = "tf_efficientnet_lite0",
        input_size: int | None = None,
        pretrained: bool = True,
        weights: str | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.net = create_backbone(name, pretrained=pretrained, weights=weights).requires_grad_(False).eval()
        cfg = data_config(name, input_size)
        self.input_size = cfg.input_size
        self.num_features = int(self.net.num_features)
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> BackboneFeatures:
        return super().train(False)  # a metric's feature network never changes its BatchNorm statistics

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(images.device.type, enabled=False):
            x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
            if x.shape[-2:] != (self.input_size, self.input_size):
                x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True)
            x = (x - self.mean) / self.std
            return self.net(x).double()


class _Precomputed(nn.Module):
    """The feature hook handed to torchmetrics: features arrive already computed, once for both metrics."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


class FeatureBank(Metric):
    """The feature vectors of a set of images with their dataset indices; gathered from every process under DDP.
    `compute` gives (N, F) float64 features of the unique images in dataset order (padded duplicates dropped), so
    FID/KID of N processes equal those of one."""

    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("features", default=[], dist_reduce_fx="cat")
        self.add_state("indices", default=[], dist_reduce_fx="cat")

    def update(self, features: torch.Tensor, indices: torch.Tensor | None = None) -> None:
        if indices is None:
            indices = torch.full((features.shape[0],), UNKNOWN_INDEX, dtype=torch.long)
        self.features.append(features.detach().double())
        self.indices.append(torch.as_tensor(indices, dtype=torch.long).to(features.device))

    def compute(self) -> torch.Tensor:
        if isinstance(self.features, list) and not self.features:
            return torch.zeros(0, 0, dtype=torch.float64)
        features, indices = dim_zero_cat(self.features), dim_zero_cat(self.indices)
        return features[dedup_order(indices.cpu()).to(features.device)]


def find_inception_weights(path: str | os.PathLike | None = None) -> Path | None:
    """The Inception weights file: `path` if given (must exist), else torch hub's cache if torch-fidelity left
    it there. Never downloads."""
    if path:
        path = Path(path).expanduser()
        if path.is_dir():
            path = path / INCEPTION_FILE
        if not path.is_file():
            raise FileNotFoundError(f"model.inception_weights: {path} does not exist (expected {INCEPTION_FILE})")
        return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    return cached if cached.is_file() else None


class GenerationMetrics:
    """FID and KID of generated against real images, accumulated batch by batch.

    Real-image features survive `reset()` (pass ``real=True`` to drop them), so a training run extracts them
    once. KID subsets are drawn with a fixed seed, so the result depends on the images only, not on batch sizes or
    on the global random state. Features are kept per image (`FeatureBank`, gathered across processes under DDP,
    duplicates dropped by dataset index) and handed to torchmetrics' FID/KID, which run locally, at `compute`.

    Args:
        feature: the feature network (see `BackboneFeatures`).
        kid_subset_size: images per KID subset; capped at the number of images available.
        kid_subsets: number of KID subsets (mean and std are over subsets).
        inception_weights: Inception weights file for the classic FID; None = use torch hub's cache if present.
    """

    def __init__(
        self,
        feature: BackboneFeatures,
        kid_subset_size: int = 100,
        kid_subsets: int = 100,
        inception_weights: str | os.PathLike | None = None,
    ) -> None:
        self.feature = feature
        self.kid_subset_size = kid_subset_size
        hook = _Precomputed(feature.num_features)
        self.banks = {"real": FeatureBank(), "fake": FeatureBank()}
        # The banks gather; FID/KID then see the whole split on every process and must not sync again.
        self.fid = FrechetInceptionDistance(feature=hook, normalize=True, sync_on_compute=False)
        with warnings.catch_warnings():
            # KID keeps every feature vector: intended here (a few thousand images at most), so no warning.
            warnings.filterwarnings("ignore", message=".*will save all extracted features", category=UserWarning)
            self.kid = KernelInceptionDistance(
                feature=hook,
                subsets=kid_subsets,
                subset_size=kid_subset_size,
                normalize=True,
                sync_on_compute=False,
            )
        self.inception: FrechetInceptionDistance | None = None
        weights = find_inception_weights(inception_weights)
        if weights is None:
            log.info(
                "fid_inception skipped: no Inception weights at %s; set model.inception_weights to a copy of "
                "torch-fidelity's %s for the classic FID",
                Path(torch.hub.get_dir()) / "checkpoints",
                INCEPTION_FILE,
            )
        else:
            self.inception = FrechetInceptionDistance(
                feature=2048, normalize=True, feature_extractor_weights_path=str(weights), sync_on_compute=False
            )
            self.banks.update(inception_real=FeatureBank(), inception_fake=FeatureBank())

    def to(self, device: torch.device | str) -> GenerationMetrics:
        for m in self._parts():
            m.to(device)
        return self

    def _parts(self) -> list[nn.Module]:
        parts = [self.feature, self.fid, self.kid, *self.banks.values()]
        return parts + ([self.inception] if self.inception is not None else [])

    @property
    def num_real(self) -> int:
        """Images in this process's real bank (before de-duplication)."""
        return sum(len(f) for f in self.banks["real"].features)

    @property
    def num_fake(self) -> int:
        return sum(len(f) for f in self.banks["fake"].features)

    def update(self, images: torch.Tensor, real: bool, indices: torch.Tensor | None = None) -> None:
        """images: (N, 3, H, W) floats in [0, 1]; indices: (N,) dataset positions (duplicates are dropped)."""
        images = images.detach().float().clamp(0, 1)
        kind = "real" if real else "fake"
        self.banks[kind].update(self.feature(images), indices)
        if self.inception is not None:
            with torch.no_grad():
                features = self.inception.inception((images * 255).byte())
            self.banks[f"inception_{kind}"].update(features, indices)

    def reset(self, real: bool = False) -> None:
        """Drop the generated images' features; with `real`, drop the real ones too."""
        for name, bank in self.banks.items():
            if real or "fake" in name:
                bank.reset()

    @staticmethod
    def _score(metric, real: torch.Tensor, fake: torch.Tensor) -> None:
        metric.reset_real_features = True
        metric.reset()
        metric.update(real, real=True)
        metric.update(fake, real=False)

    def compute(self) -> dict[str, Any]:
        real, fake = self.banks["real"].compute(), self.banks["fake"].compute()
        num_real, num_fake = len(real), len(fake)
        if num_real < 2 or num_fake < 2:
            raise RuntimeError(f"FID/KID need >= 2 real and fake images, got {num_real} and {num_fake}")
        self._score(self.fid, real, fake)
        self._score(self.kid, real, fake)
        fid = float(self.fid.compute())
        self.kid.subset_size = min(self.kid_subset_size, num_real, num_fake)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            kid_mean, kid_std = (float(v) for v in self.kid.compute())
        name = self.feature.name
        out: dict[str, Any] = {
            "fid": fid,
            "kid": kid_mean,
            "kid_std": kid_std,
            f"fid_{name}": fid,
            f"kid_{name}": kid_mean,
            "feature_network": name,
            "feature_input_size": self.feature.input_size,
            "num_real": num_real,
            "num_fake": num_fake,
        }
        if self.inception is not None:
            hook = FrechetInceptionDistance(feature=_Precomputed(2048), normalize=True, sync_on_compute=False)
            self._score(
                hook.to(real.device), self.banks["inception_real"].compute(), self.banks["inception_fake"].compute()
            )
            out["fid_inception"] = float(hook.compute())
        return out
