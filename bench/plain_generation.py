"""Plain reference, generation: a DCGAN at 64 px (transposed-convolution generator with BatchNorm, spectrally
normalised convolutional discriminator; 32 channels at 32 px, doubling per halving: half the usual 64, whose steps
take seconds on 2 CPU cores), hinge loss, Adam, with DiffAugment (colour, translation, cutout on real and fake images
before the discriminator, the standard few-shot fix), trained in a hand-written loop for a wall-clock budget. Scored
by cvsuite's GenerationMetrics as the recipe is: FID and KID in FID's Inception-v3 features (``inception_2015``), with
tf_efficientnet_lite0's space as the extra column, as many generated images as real ones, against every real image
(the recipe's reference set).

ROOT: a folder of images (decoded once, resized to 64 x 64, scaled to [-1, 1], random horizontal flips); batch 32;
one discriminator then one generator step per batch; Adam 2e-4, betas (0.5, 0.999), no schedule (nor has the recipe);
no EMA; samples drawn with the generator in training mode (batch statistics, as PyTorch's DCGAN example does).

    python bench/plain_generation.py --root ROOT --budget-s 180 --out plain.json
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from plain_common import TimeSchedule, arguments, finish, setup, timed
from torch import nn
from torch.nn.utils import spectral_norm

from cvsuite.metrics.generation import INCEPTION, GenerationMetrics, feature_network
from cvsuite.models.backbone import DEFAULT_BACKBONE

Z = 128


def generator(ch: int = 32) -> nn.Sequential:
    def up(cin: int, cout: int) -> list[nn.Module]:
        return [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]

    return nn.Sequential(
        nn.ConvTranspose2d(Z, ch * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(ch * 8), nn.ReLU(True),  # 4x4
        *up(ch * 8, ch * 4), *up(ch * 4, ch * 2), *up(ch * 2, ch),  # 8, 16, 32
        nn.ConvTranspose2d(ch, 3, 4, 2, 1), nn.Tanh(),  # 64
    )  # fmt: skip


def discriminator(ch: int = 32) -> nn.Sequential:
    layers, cin = [], 3
    for cout in (ch, ch * 2, ch * 4, ch * 8):  # 32, 16, 8, 4
        layers += [spectral_norm(nn.Conv2d(cin, cout, 4, 2, 1)), nn.LeakyReLU(0.2, True)]
        cin = cout
    return nn.Sequential(*layers, spectral_norm(nn.Conv2d(cin, 1, 4, 1, 0)), nn.Flatten())


def diff_augment(x: torch.Tensor) -> torch.Tensor:
    """DiffAugment (Zhao et al. 2020): brightness, saturation, contrast, translation by 1/8, cutout of 1/2."""
    n, _, h, w = x.shape
    r = lambda: torch.rand(n, 1, 1, 1)  # noqa: E731
    x = x + (r() - 0.5)
    x = (x - x.mean(1, keepdim=True)) * (r() * 2) + x.mean(1, keepdim=True)
    x = (x - x.mean((1, 2, 3), keepdim=True)) * (r() + 0.5) + x.mean((1, 2, 3), keepdim=True)
    s, c = h // 8, h // 2
    padded = F.pad(x, [s, s, s, s])
    shift = torch.randint(0, 2 * s + 1, (n, 2)).tolist()
    x = torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(shift)])
    mask = torch.ones(n, 1, h, w)
    for i, (cy, cx) in enumerate(torch.randint(0, h, (n, 2)).tolist()):
        mask[i, :, max(0, cy - c // 2) : cy + c // 2, max(0, cx - c // 2) : cx + c // 2] = 0
    return x * mask


def read_images(root: Path, size: int) -> torch.Tensor:
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    pixels = [np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BICUBIC)) for p in paths]
    return torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 127.5 - 1


@torch.no_grad()
def evaluate(g: nn.Module, real: torch.Tensor, metrics: GenerationMetrics, batch: int = 50) -> dict:
    metrics.reset(real=True)
    gen = torch.Generator().manual_seed(0)
    for i in range(0, len(real), batch):
        chunk = real[i : i + batch]
        metrics.update((chunk + 1) / 2, real=True)
        fake = g(torch.randn(len(chunk), Z, 1, 1, generator=gen))
        metrics.update((fake + 1) / 2, real=False)
    return metrics.compute()


def main() -> None:
    p = arguments(__doc__)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args()
    setup(args)
    real = read_images(Path(args.root), args.image_size)
    g, d = generator(), discriminator()
    metrics = GenerationMetrics(feature_network(INCEPTION), extra=[feature_network(DEFAULT_BACKBONE)])
    _, probe = timed(evaluate, g, real[:50], metrics)
    schedule = TimeSchedule(None, args.started, args.budget_s, eval_s=probe * len(real) / len(real[:50]))
    opt_g = torch.optim.Adam(g.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), 2e-4, betas=(0.5, 0.999))
    g.train()
    while schedule.step():
        x = real[torch.randint(len(real), (args.batch_size,))]
        x = torch.where(torch.rand(len(x), 1, 1, 1) < 0.5, x.flip(-1), x)
        fake = g(torch.randn(len(x), Z, 1, 1))
        loss_d = F.relu(1 - d(diff_augment(x))).mean() + F.relu(1 + d(diff_augment(fake.detach()))).mean()
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        loss_g = -d(diff_augment(fake)).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
    out, eval_s = timed(evaluate, g, real, metrics)
    finish(args, out, schedule, images=len(real), eval_seconds=round(eval_s, 1), eval_estimate=round(probe, 1))


if __name__ == "__main__":
    main()
