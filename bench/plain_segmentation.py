"""Plain reference, segmentation: segmentation_models_pytorch's Unet on the timm encoder ``tu-tf_efficientnet_lite0``
(the offline ImageNet weights loaded into it), trained in a hand-written loop for a wall-clock budget and scored
by cvsuite's SegmentationMetrics (one confusion matrix over the split, mIoU) on whole validation images.

ROOT/{train,val}/{images,masks}/*.png with 0/255 masks, read as classes 0 and 1 (as the recipe reads them). Images
are decoded once; training takes random --crop-size crops with horizontal and vertical flips (microscopy has no
up or down), batch 8, cross-entropy + Dice loss, AdamW (decoder and head 1e-3, encoder 1e-4, weight decay 1e-4, none
on norms and biases), warm-up then cosine over the training time. Decoder as wide as the recipe's (128 down to 8
channels). The final weights are evaluated once.

    python bench/plain_segmentation.py --root ROOT --budget-s 180 --out plain.json
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from PIL import Image
from plain_common import MEAN, STD, TimeSchedule, arguments, finish, lite0, param_groups, setup, timed
from torch import nn

from cvsuite.metrics.segmentation import SegmentationMetrics

CLASSES = ["background", "foreground"]  # 0 = membrane, 255 = cell
IGNORE = 255


def read_split(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, H, W) images normalised for the weights, (N, H, W) int64 masks in {0, 1}."""
    images, masks = [], []
    for path in sorted((folder / "images").glob("*.png")):
        images.append(np.asarray(Image.open(path).convert("RGB")))
        masks.append((np.asarray(Image.open(folder / "masks" / path.name).convert("L")) == 255).astype(np.int64))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std, torch.from_numpy(np.stack(masks))


def build() -> smp.Unet:
    model = smp.Unet("tu-tf_efficientnet_lite0", encoder_weights=None, classes=len(CLASSES),
                     decoder_channels=(128, 64, 32, 16, 8))  # fmt: skip
    missing, _ = model.encoder.model.load_state_dict(lite0().state_dict(), strict=False)
    assert not missing, f"encoder weights missing: {missing[:5]}"
    return model


def random_crops(images: torch.Tensor, masks: torch.Tensor, n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.randint(len(images), (n,))
    h, w = images.shape[-2:]
    xs, ys = [], []
    for i in idx.tolist():
        top, left = int(torch.randint(h - size + 1, ())), int(torch.randint(w - size + 1, ()))
        x, y = images[i, :, top : top + size, left : left + size], masks[i, top : top + size, left : left + size]
        for dim, p in ((-1, 0.5), (-2, 0.5)):
            if torch.rand(()) < p:
                x, y = x.flip(dim), y.flip(dim)
        xs.append(x)
        ys.append(y)
    return torch.stack(xs), torch.stack(ys)


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, masks: torch.Tensor, batch: int = 2) -> dict:
    model.eval()
    metrics = SegmentationMetrics(CLASSES, ignore_index=IGNORE)
    for i in range(0, len(images), batch):
        metrics.update(model(images[i : i + batch]).argmax(1), masks[i : i + batch])
    return metrics.compute()


def main() -> None:
    p = arguments(__doc__)
    p.add_argument("--crop-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args()
    setup(args)
    root = Path(args.root)
    train_x, train_y = read_split(root / "train")
    val_x, val_y = read_split(root / "val")
    model = build()

    _, one_batch = timed(evaluate, model, val_x[:2], val_y[:2])
    new = nn.ModuleList([model.decoder, model.segmentation_head])
    opt = torch.optim.AdamW(param_groups(new, model.encoder, 1e-3, 1e-4, 1e-4))
    schedule = TimeSchedule(opt, args.started, args.budget_s, eval_s=one_batch * len(val_x) / 2)
    dice = smp.losses.DiceLoss("multiclass", ignore_index=IGNORE)
    model.train()
    while schedule.step():
        x, y = random_crops(train_x, train_y, args.batch_size, args.crop_size)
        logits = model(x)
        loss = F.cross_entropy(logits, y, ignore_index=IGNORE) + dice(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    metrics, eval_s = timed(evaluate, model, val_x, val_y)
    finish(args, metrics, schedule, images=len(train_x), eval_seconds=round(eval_s, 1))


if __name__ == "__main__":
    main()
