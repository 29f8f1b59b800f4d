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
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

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

    Real-image statistics survive `reset()` (pass ``real=True`` to drop them), so a training run extracts them
    once. KID subsets are drawn with a fixed seed, so the result depends on the images only, not on batch sizes or
    on the global random state.

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
        self.fid = FrechetInceptionDistance(feature=hook, reset_real_features=False, normalize=True)
        with warnings.catch_warnings():
            # KID keeps every feature vector: intended here (a few thousand images at most), so no warning.
            warnings.filterwarnings("ignore", message=".*will save all extracted features", category=UserWarning)
            self.kid = KernelInceptionDistance(
                feature=hook,
                subsets=kid_subsets,
                subset_size=kid_subset_size,
                reset_real_features=False,
                normalize=True,
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
                feature=2048, reset_real_features=False, normalize=True, feature_extractor_weights_path=str(weights)
            )

    def to(self, device: torch.device | str) -> GenerationMetrics:
        for m in self._parts():
            m.to(device)
        return self

    def _parts(self) -> list[nn.Module]:
        return [self.feature, self.fid, self.kid] + ([self.inception] if self.inception is not None else [])

    @property
    def num_real(self) -> int:
        return int(self.fid.real_features_num_samples)

    @property
    def num_fake(self) -> int:
        return int(self.fid.fake_features_num_samples)

    def update(self, images: torch.Tensor, real: bool) -> None:
        """images: (N, 3, H, W) floats in [0, 1]."""
        images = images.detach().float().clamp(0, 1)
        features = self.feature(images)
        self.fid.update(features, real=real)
        self.kid.update(features, real=real)
        if self.inception is not None:
            self.inception.update(images, real=real)

    def reset(self, real: bool = False) -> None:
        """Drop the generated images' statistics; with `real`, drop the real ones too."""
        for m in self._parts()[1:]:
            m.reset_real_features = real
            m.reset()
            m.reset_real_features = False

    def compute(self) -> dict[str, Any]:
        if self.num_real < 2 or self.num_fake < 2:
            raise RuntimeError(f"FID/KID need >= 2 real and fake images, got {self.num_real} and {self.num_fake}")
        fid = float(self.fid.compute())
        self.kid.subset_size = min(self.kid_subset_size, self.num_real, self.num_fake)
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
            "num_real": self.num_real,
            "num_fake": self.num_fake,
        }
        if self.inception is not None:
            out["fid_inception"] = float(self.inception.compute())
        return out
