"""Are the GAN metric's feature networks real? A linear probe on weather4 (4 classes, 384 train / 96 val photos at
128 px) over each network's features, and FID between halves of sunrise_gan (64 px) against FID to blurred
copies. A network with trained weights should probe well and put blurred photos far from sharp ones; the same
Inception with its convolution weights shuffled (random features of the same statistics) is the control.

    python bench/gan_feature_check.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from sklearn.linear_model import LogisticRegression
from train_tool import REPO

from cvsuite.metrics.generation import INCEPTION, feature_network, frechet_distance


def shuffled(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """The same network with each convolution's weights permuted: its features carry no training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() == 4:
                p.copy_(p.flatten()[torch.randperm(p.numel(), generator=g)].view_as(p))
    return net


def load(paths: list[Path], size: int) -> torch.Tensor:
    pixels = [np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BICUBIC)) for p in paths]
    return torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 255


def features(net, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([net(x[i : i + 32]) for i in range(0, len(x), 32)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    data = Path(p.parse_args().data)
    nets = {
        INCEPTION: feature_network(INCEPTION),
        f"{INCEPTION} shuffled": shuffled(feature_network(INCEPTION)),
        "tf_efficientnet_lite0": feature_network("tf_efficientnet_lite0"),
    }
    classes = sorted(d.name for d in (data / "weather4" / "train").iterdir())
    split = {}
    for s in ("train", "val"):
        paths = [(f, i) for i, c in enumerate(classes) for f in sorted((data / "weather4" / s / c).glob("*.jpg"))]
        split[s] = (load([f for f, _ in paths], 128), np.array([i for _, i in paths]))
    sun = load(sorted((data / "sunrise_gan" / "images").glob("*.jpg")), 64)
    blurred = TF.gaussian_blur(sun, kernel_size=9, sigma=2.0)
    print("| network | weather4 linear probe, val accuracy | FID half vs half | FID half vs blurred half | s |")
    print("|---|---:|---:|---:|---:|")
    for name, net in nets.items():
        start = time.perf_counter()
        (xt, yt), (xv, yv) = split["train"], split["val"]
        ft, fv = features(net, xt).numpy(), features(net, xv).numpy()
        mu, sd = ft.mean(0), ft.std(0) + 1e-6
        probe = LogisticRegression(max_iter=2000, C=0.1).fit((ft - mu) / sd, yt)
        acc = probe.score((fv - mu) / sd, yv)
        fs, fb = features(net, sun), features(net, blurred)
        other, blur = frechet_distance(fs[::2], fs[1::2]), frechet_distance(fs[::2], fb[1::2])
        print(f"| {name} | {acc:.3f} | {other:.1f} | {blur:.1f} | {time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
