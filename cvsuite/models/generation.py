"""GAN parts in plain PyTorch: generators (decoders from noise to images), discriminators, DiffAugment, losses.

Images are (N, 3, H, W) floats in [-1, 1] everywhere in this file. Every discriminator returns a list of logit maps
(one per scale) so that the losses treat the projected and the from-scratch discriminator alike.

The pretrained backbone serves the discriminator (`ProjectedDiscriminator`, after Sauer et al., "Projected GANs
Converge Faster", 2021) and the metrics; the generators cannot reuse it and are trained from scratch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from cvsuite.config import ChoiceError, ConfigError
from cvsuite.models.backbone import feature_channels


def _check_size(image_size: int) -> int:
    levels = int(math.log2(image_size)) if image_size > 0 else 0
    if image_size < 16 or 2**levels != image_size:
        raise ConfigError(f"data.image_size must be a power of two >= 16 for the GAN, got {image_size}")
    return levels


UPSAMPLING = ("nearest", "bilinear")


# ---- generators ----------------------------------------------------------------------------------------------
class _SkipExcitation(nn.Module):
    """FastGAN's skip-layer excitation: a low-resolution map gates the channels of a high-resolution one."""

    def __init__(self, low_channels: int, high_channels: int) -> None:
        super().__init__()
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(4),
            nn.Conv2d(low_channels, high_channels, 4, bias=False),
            nn.SiLU(),
            nn.Conv2d(high_channels, high_channels, 1, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        return high * self.gate(low)


class FastGANGenerator(nn.Module):
    """A light FastGAN-style decoder (Liu et al., 2021): upsampling, conv, BatchNorm and GLU per doubling, plus
    skip-layer excitation from the map 8x smaller into every map of 32 px and up.

    It maps noise to pixels, the opposite direction of an ImageNet encoder, so it cannot reuse the pretrained
    backbone and is trained from scratch: the backbone serves the discriminator and the metrics, not the generator.

    Args:
        image_size: output side (power of two >= 16).
        latent_dim: length of the noise vector.
        channels: width at the output resolution; doubled per halving of the resolution, capped at `max_channels`.
        num_classes: > 0 makes it class-conditional (a class embedding is concatenated to the noise).
        upsample: "nearest" (FastGAN's) copies each pixel into a 2x2 block, which a light generator early in
            training leaves visible as a grid over the whole image; "bilinear" interpolates instead (same weights,
            same cost).
    """

    def __init__(
        self,
        image_size: int = 64,
        latent_dim: int = 128,
        channels: int = 32,
        max_channels: int = 256,
        num_classes: int = 0,
        upsample: str = "nearest",
    ) -> None:
        super().__init__()
        if upsample not in UPSAMPLING:
            raise ChoiceError(f"model.g_upsample: unknown '{upsample}'. Choose one of {', '.join(UPSAMPLING)}")
        levels = _check_size(image_size)
        self.image_size, self.latent_dim, self.num_classes = image_size, latent_dim, num_classes
        width = {2**i: min(max_channels, channels * image_size // 2**i) for i in range(2, levels + 1)}
        self.embed = nn.Embedding(num_classes, latent_dim) if num_classes > 0 else None
        in_dim = latent_dim * (2 if num_classes > 0 else 1)
        self.init = nn.Sequential(
            nn.ConvTranspose2d(in_dim, width[4] * 2, 4, bias=False), nn.BatchNorm2d(width[4] * 2), nn.GLU(dim=1)
        )
        self.ups = nn.ModuleDict()
        self.skips = nn.ModuleDict()
        for i in range(3, levels + 1):
            r = 2**i
            self.ups[str(r)] = nn.Sequential(
                nn.Upsample(scale_factor=2, mode=upsample),
                nn.Conv2d(width[r // 2], width[r] * 2, 3, padding=1, bias=False),
                nn.BatchNorm2d(width[r] * 2),
                nn.GLU(dim=1),
            )
            if r >= 32:
                self.skips[str(r)] = _SkipExcitation(width[r // 8], width[r])
        self.to_rgb = nn.Conv2d(width[image_size], 3, 3, padding=1)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """z: (N, latent_dim); labels: (N,) class ids when conditional. Returns (N, 3, S, S) in [-1, 1]."""
        if self.embed is not None:
            z = torch.cat([z, self.embed(labels)], dim=1)
        x = self.init(z[:, :, None, None])
        feats = {4: x}
        for key, up in self.ups.items():
            r = int(key)
            x = up(x)
            if key in self.skips:
                x = self.skips[key](feats[r // 8], x)
            feats[r] = x
        return torch.tanh(self.to_rgb(x))


class DCGANGenerator(nn.Module):
    """The DCGAN decoder (Radford et al., 2016): transposed 4x4 convolutions, BatchNorm and ReLU per doubling.

    Trained from scratch (a decoder cannot reuse the pretrained encoder backbone). Arguments as `FastGANGenerator`;
    `channels` is the width of the last hidden layer (DCGAN's ngf).
    """

    def __init__(
        self,
        image_size: int = 64,
        latent_dim: int = 128,
        channels: int = 64,
        max_channels: int = 512,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        levels = _check_size(image_size)
        self.image_size, self.latent_dim, self.num_classes = image_size, latent_dim, num_classes
        width = {2**i: min(max_channels, channels * image_size // 2 ** (i + 1)) for i in range(2, levels)}
        self.embed = nn.Embedding(num_classes, latent_dim) if num_classes > 0 else None
        in_dim = latent_dim * (2 if num_classes > 0 else 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(in_dim, width[4], 4, bias=False),
            nn.BatchNorm2d(width[4]),
            nn.ReLU(),
        ]
        for i in range(3, levels):
            r = 2**i
            layers += [
                nn.ConvTranspose2d(width[r // 2], width[r], 4, 2, 1, bias=False),
                nn.BatchNorm2d(width[r]),
                nn.ReLU(),
            ]
        layers += [nn.ConvTranspose2d(width[image_size // 2], 3, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """z: (N, latent_dim); labels: (N,) class ids when conditional. Returns (N, 3, S, S) in [-1, 1]."""
        if self.embed is not None:
            z = torch.cat([z, self.embed(labels)], dim=1)
        return self.net(z[:, :, None, None])


@torch.no_grad()
def standing_stats(
    generator: nn.Module, latent_dim: int, num_classes: int = 0, batches: int = 8, batch_size: int = 64, seed: int = 0
) -> None:
    """Re-estimate the BatchNorm running statistics of `generator` for its current weights ("standing statistics",
    BigGAN, Brock et al. 2019), then leave it in eval mode.

    An EMA generator's averaged weights never produced the running statistics that BatchNorm tracked during
    training, and in the first epochs those statistics lag the weights: in eval mode the samples then collapse to
    near-identical images. Averaging the batch statistics of `batches` noise batches through the current weights gives
    eval-mode samples as varied as training-mode ones, independent of batch composition. The noise comes from its own
    seeded generator, so the global RNG (and an exact resume) is untouched.
    """
    norms = [m for m in generator.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        generator.eval()
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    generator.train()
    device = next(generator.parameters()).device
    rng = torch.Generator().manual_seed(seed)
    for i in range(batches):
        z = torch.randn(batch_size, latent_dim, generator=rng).to(device)
        labels = ((torch.arange(batch_size) + i * batch_size) % num_classes).to(device) if num_classes else None
        generator(z, labels)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    generator.eval()


GENERATORS = {"fastgan": FastGANGenerator, "dcgan": DCGANGenerator}


def create_generator(name: str, **kwargs) -> nn.Module:
    if name not in GENERATORS:
        raise ChoiceError(f"model.generator: unknown '{name}'. Choose one of {', '.join(GENERATORS)}")
    return GENERATORS[name](**kwargs)


# ---- discriminators ------------------------------------------------------------------------------------------
def _down(cin: int, cout: int, norm: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [spectral_norm(nn.Conv2d(cin, cout, 4, 2, 1, bias=not norm))]
    if norm:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.LeakyReLU(0.2))
    return nn.Sequential(*layers)


class _PatchHead(nn.Module):
    """Strided convs down to 4x4, then one logit per patch; with classes, a projection term (Miyato & Koyama,
    2018) adds <embedding(label), features> to each patch."""

    def __init__(self, channels: int, resolution: int, num_classes: int = 0) -> None:
        super().__init__()
        blocks, r = [], resolution
        while r > 4:
            blocks.append(_down(channels, channels))
            r //= 2
        self.body = nn.Sequential(*blocks)
        self.out = spectral_norm(nn.Conv2d(channels, 1, 3, padding=1))
        self.embed = spectral_norm(nn.Embedding(num_classes, channels)) if num_classes > 0 else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.body(x)
        logits = self.out(h)
        if self.embed is not None:
            logits = logits + (self.embed(labels)[:, :, None, None] * h).sum(dim=1, keepdim=True)
        return logits


class ProjectedDiscriminator(nn.Module):
    """Discriminator on the features of a frozen pretrained backbone (Projected GAN, Sauer et al., 2021).

    The image goes through the backbone (frozen: the run never gives its parameters to an optimiser); 1x1
    projections mix the channels of each scale (CCM), a top-down path mixes the scales (CSM), and a small patch
    head per scale gives logits. Pretrained features are what let it tell real from fake after a few hundred
    images instead of learning vision from scratch.

    Args:
        backbone: ``create_backbone(name, features_only=True)``; its `feature_info` gives the channels.
        mean / std: the normalisation its weights expect (images arrive in [-1, 1]).
        image_size: side of the images it will see.
        channels: width of the first projection; doubled per scale, capped at 8x.
        input_size: resize images to this side before the backbone (ImageNet features are richer above 64 px).
        projection: "fixed" keeps the projections at their random init, as in the paper: the discriminator cannot
            focus on a few features and dominates less early on (lower FID at the same time on our faces benchmark);
            "learned" trains them with the heads.
    """

    def __init__(
        self,
        backbone: nn.Module,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        image_size: int = 64,
        channels: int = 64,
        input_size: int | None = None,
        projection: str = "fixed",
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        if projection not in ("learned", "fixed"):
            raise ConfigError(f"model.projection: unknown '{projection}'. Choose learned or fixed")
        self.backbone = backbone.requires_grad_(False).eval()
        self.input_size = input_size or image_size
        # Pixel values in [-1, 1] -> [0, 1] -> the backbone's normalisation, folded into one affine map.
        mean_t, std_t = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
        self.register_buffer("scale", 0.5 / std_t, persistent=False)
        self.register_buffer("shift", (0.5 - mean_t) / std_t, persistent=False)
        # Stride-2 maps are skipped: low-level edges at high resolution, costly heads, little signal (as in the paper).
        self.levels = [i for i, r in enumerate(backbone.feature_info.reduction()) if r >= 4]
        in_ch = [feature_channels(backbone)[i] for i in self.levels]
        width = [min(channels * 2**i, channels * 8) for i in range(len(in_ch))]
        self.project = nn.ModuleList(nn.Conv2d(c, w, 1) for c, w in zip(in_ch, width))
        self.lateral = nn.ModuleList(nn.Conv2d(width[i + 1], width[i], 1) for i in range(len(in_ch) - 1))
        if projection == "fixed":
            self.project.requires_grad_(False)
            self.lateral.requires_grad_(False)
        sizes = [max(1, self.input_size // backbone.feature_info.reduction()[i]) for i in self.levels]
        self.heads = nn.ModuleList(_PatchHead(w, s, num_classes) for w, s in zip(width, sizes))

    def train(self, mode: bool = True) -> ProjectedDiscriminator:
        super().train(mode)
        self.backbone.eval()  # frozen features: BatchNorm must use its ImageNet statistics
        return self

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> list[torch.Tensor]:
        """images: (N, 3, S, S) in [-1, 1]. Returns one (N, 1, h, w) logit map per backbone scale of stride >= 4."""
        x = images * self.scale + self.shift
        if x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        maps = self.backbone(x)
        feats = [p(maps[i]) for p, i in zip(self.project, self.levels)]
        mixed = [feats[-1]]
        for i in range(len(feats) - 2, -1, -1):
            up = F.interpolate(self.lateral[i](mixed[0]), size=feats[i].shape[-2:], mode="nearest")
            mixed.insert(0, feats[i] + up)
        return [head(f, labels) for head, f in zip(self.heads, mixed)]


class DCGANDiscriminator(nn.Module):
    """The baseline: a DCGAN discriminator trained from scratch (strided 4x4 convs, BatchNorm, LeakyReLU), with
    spectral norm for stability. No pretrained features; `channels` is the first layer's width (DCGAN's ndf)."""

    def __init__(self, image_size: int = 64, channels: int = 64, max_channels: int = 512, num_classes: int = 0) -> None:
        super().__init__()
        levels = _check_size(image_size)
        blocks, cin = [], 3
        for i in range(levels - 1, 1, -1):  # resolution 2**i after each block, down to 4
            cout = min(max_channels, channels * image_size // 2 ** (i + 1))
            blocks.append(_down(cin, cout, norm=cin != 3))
            cin = cout
        self.body = nn.Sequential(*blocks)
        self.head = _PatchHead(cin, 4, num_classes)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> list[torch.Tensor]:
        """images: (N, 3, S, S) in [-1, 1]. Returns [(N, 1, 4, 4) logits]."""
        return [self.head(self.body(images), labels)]


# ---- DiffAugment ---------------------------------------------------------------------------------------------
def _brightness(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.rand(x.size(0), 1, 1, 1, dtype=x.dtype, device=x.device) - 0.5)


def _saturation(x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (torch.rand(x.size(0), 1, 1, 1, dtype=x.dtype, device=x.device) * 2) + mean


def _contrast(x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean) * (torch.rand(x.size(0), 1, 1, 1, dtype=x.dtype, device=x.device) + 0.5) + mean


def _translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to `ratio` of its side, filling with zeros (mid-grey in [-1, 1])."""
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = torch.randint(-sh, sh + 1, (n, 1, 1), device=x.device)
    tx = torch.randint(-sw, sw + 1, (n, 1, 1), device=x.device)
    gb, gy, gx = torch.meshgrid(
        torch.arange(n, device=x.device),
        torch.arange(h, device=x.device),
        torch.arange(w, device=x.device),
        indexing="ij",
    )
    # Index into a copy padded by one zero pixel; clamping sends out-of-image reads to that padding.
    gy = torch.clamp(gy + ty + 1, 0, h + 1)
    gx = torch.clamp(gx + tx + 1, 0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)
    return padded[gb, gy, gx].permute(0, 3, 1, 2).contiguous()


def _cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """Zero one square of `ratio` x side at a random place in each image."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    oy = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), device=x.device)
    ox = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), device=x.device)
    gb, gy, gx = torch.meshgrid(
        torch.arange(n, device=x.device),
        torch.arange(ch, device=x.device),
        torch.arange(cw, device=x.device),
        indexing="ij",
    )
    gy = torch.clamp(gy + oy - ch // 2, 0, h - 1)
    gx = torch.clamp(gx + ox - cw // 2, 0, w - 1)
    mask = torch.ones(n, h, w, dtype=x.dtype, device=x.device)
    mask[gb, gy, gx] = 0
    return x * mask.unsqueeze(1)


AUGMENTS = {"color": (_brightness, _saturation, _contrast), "translation": (_translation,), "cutout": (_cutout,)}


class DiffAugment(nn.Module):
    """Differentiable augmentation (Zhao et al., 2020), applied to real and fake images alike before the
    discriminator, so it cannot memorise a few-shot training set while the generator still gets gradients.

    Args:
        policy: comma-separated subset of color, translation, cutout; "" = off.
    """

    def __init__(self, policy: str = "color,translation,cutout") -> None:
        super().__init__()
        self.policy = [p.strip() for p in policy.split(",") if p.strip()]
        unknown = [p for p in self.policy if p not in AUGMENTS]
        if unknown:
            raise ConfigError(
                f"model.diffaugment: unknown {unknown}. Use a comma-separated subset of {', '.join(AUGMENTS)}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.policy:
            for fn in AUGMENTS[name]:
                x = fn(x)
        return x


class AdaptiveDiffAugment(DiffAugment):
    """DiffAugment whose strength follows the discriminator's overfitting, as ADA does (Karras et al., "Training
    Generative Adversarial Networks with Limited Data", 2020).

    Each transform of the policy (brightness, saturation, contrast, translation, cutout) is applied to each image
    with probability `p`, independently, to reals and fakes alike and differentiably for the generator step; p = 1
    is exactly `DiffAugment` (the same random draws) and p = 0 the identity. The overfitting heuristic r_t is the
    mean sign of the discriminator's logits on the (augmented) reals, every patch and scale counted: 0 when it
    cannot tell, 1 when it is sure of every real. Every `interval` steps p moves by
    sign(r_t - target) * images / `ramp_images` (images: reals seen in the interval on all processes), so p can
    cross 0 -> 1 in `ramp_images` images, and is clamped to [0, 1].

    p and the running sums are buffers: they are saved in checkpoints, so a resumed run goes on with the same
    strength at the same point of its interval. The sums are integers, exact under any precision. Under DDP each
    step's counts are summed over the processes as they come in (three integers), so every rank holds the same sums
    and the same p at all times: DDP's broadcast of rank 0's buffers before each forward changes nothing, and the
    checkpoint that rank 0 writes holds the global counts.

    Args:
        policy: as `DiffAugment`.
        target: the r_t that p steers to, in (0, 1); ADA uses 0.6.
        interval: optimiser steps between adjustments (ADA: 4).
        ramp_images: real images over which p can move by 1 (ADA: 500k, sized for runs of 25M images).
        p: the starting probability (ADA: 0).
    """

    def __init__(
        self,
        policy: str = "color,translation,cutout",
        target: float = 0.6,
        interval: int = 4,
        ramp_images: int = 2000,
        p: float = 0.0,
    ) -> None:
        super().__init__(policy)
        check_ada(target, interval, ramp_images)
        self.target, self.interval, self.ramp_images = target, interval, ramp_images
        self.register_buffer("p", torch.tensor(float(p)))
        # Since the last adjustment: sum of the signs of the real logits, number of logits, real images, steps.
        self.register_buffer("stats", torch.zeros(4, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = float(self.p)
        if p >= 1:
            return super().forward(x)
        if p <= 0:
            return x
        for name in self.policy:
            for fn in AUGMENTS[name]:
                apply = torch.rand(x.size(0), 1, 1, 1, device=x.device) < p
                x = torch.where(apply, fn(x), x)
        return x

    @torch.no_grad()
    def accumulate(self, real_logits: list[torch.Tensor]) -> None:
        """Count the signs of one step's logit maps on augmented reals, (N, 1, h, w) each, on every process."""
        device = self.stats.device
        signs = sum((x > 0).sum() - (x < 0).sum() for x in real_logits)  # integers: exact under bf16 logits too
        logits, images = sum(x.numel() for x in real_logits), real_logits[0].shape[0]
        counts = torch.stack(
            [signs.to(device), torch.tensor(logits, device=device), torch.tensor(images, device=device)]
        )
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)  # the sums of all processes, identical on every rank
        self.stats[:3] += counts
        self.stats[3] += 1

    @torch.no_grad()
    def update(self) -> float | None:
        """After `accumulate`: every `interval` steps, move p by the counts since the last adjustment and reset
        them. Returns the r_t it adjusted by, or None between adjustments."""
        if int(self.stats[3]) < self.interval:
            return None
        signs, logits, images = (int(v) for v in self.stats[:3])
        r_t = signs / max(1, logits)
        step = math.copysign(images / self.ramp_images, r_t - self.target) if r_t != self.target else 0.0
        self.p.copy_(torch.clamp(self.p + step, 0.0, 1.0))
        self.stats.zero_()
        return r_t


def check_ada(target: float, interval: int, ramp_images: int) -> None:
    """Named errors for ADA settings that cannot work."""
    if not 0.0 < target < 1.0:
        raise ConfigError(f"model.ada_target must lie between 0 and 1 (ADA uses 0.6), or be null (off); got {target}")
    if interval < 1:
        raise ConfigError(f"model.ada_interval must be >= 1 step, got {interval}")
    if ramp_images < 1:
        raise ConfigError(f"model.ada_ramp_images must be >= 1 image, got {ramp_images}")


# ---- losses --------------------------------------------------------------------------------------------------
LOSSES = ("hinge", "nonsaturating")


def discriminator_loss(real: list[torch.Tensor], fake: list[torch.Tensor], kind: str = "hinge") -> torch.Tensor:
    """Sum over scales of the mean patch loss; real/fake are the discriminator's logit maps."""
    if kind == "hinge":
        return sum(F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(real, fake))
    if kind == "nonsaturating":
        return sum(F.softplus(-r).mean() + F.softplus(f).mean() for r, f in zip(real, fake))
    raise ConfigError(f"model.loss: unknown '{kind}'. Choose one of {', '.join(LOSSES)}")


def generator_loss(fake: list[torch.Tensor], kind: str = "hinge") -> torch.Tensor:
    if kind == "hinge":
        return sum(-f.mean() for f in fake)
    if kind == "nonsaturating":
        return sum(F.softplus(-f).mean() for f in fake)
    raise ConfigError(f"model.loss: unknown '{kind}'. Choose one of {', '.join(LOSSES)}")
