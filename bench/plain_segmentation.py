"""Plain reference, segmentation: segmentation_models_pytorch's Unet on the timm encoder ``tu-tf_efficientnet_lite0``
(the offline ImageNet weights loaded into it), trained in a hand-written loop for a wall-clock budget and scored
by cvsuite's SegmentationMetrics (one confusion matrix over the split, mIoU) on whole validation images.

ROOT/{train,val}/{images,masks}/*.png: 0/255 masks, read as classes 0 and 1 (as the recipe reads them), or with
--class-names masks of class ids (palette or gray PNGs; 255 = void, ignored by loss and metrics). Images are decoded
once (the longer side resized to --image-size if given, as the recipe's data.image_size); training takes random
--crop-size crops (padded with void where an image is smaller) with horizontal and vertical flips, batch 8,
cross-entropy + Dice loss, AdamW (decoder and head 1e-3, encoder 1e-4, weight decay 1e-4, none on norms and biases),
warm-up then cosine over the training time. Decoder as wide as the recipe's (128 down to 8 channels). The final
weights are evaluated once, on whole images (padded to a multiple of 32).

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

BINARY = ["background", "foreground"]  # 0/255 masks (membrane: 0 = membrane, 255 = cell), as the recipe reads them
IGNORE = 255


def read_mask(path: Path, binary: bool) -> np.ndarray:
    """Class ids: a palette PNG's indices or a gray PNG's values (255 = void); `binary`: 0/255 -> 0/1."""
    mask = np.asarray(Image.open(path)).astype(np.int64)
    return (mask == 255).astype(np.int64) if binary else mask


def read_split(folder: Path, classes: list[str], size: int | None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Images (3, H, W) normalised for the weights and masks (H, W) int64, one pair per file (sizes may differ);
    `size`: the longer side resized to it (images bilinear, masks nearest)."""
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    images, masks = [], []
    for path in sorted(p for p in (folder / "images").iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")):
        image = Image.open(path).convert("RGB")
        mask = read_mask(folder / "masks" / f"{path.stem}.png", binary=classes == BINARY)
        bad = set(np.unique(mask).tolist()) - set(range(len(classes))) - {IGNORE}
        if bad:
            raise SystemExit(f"{path.stem}: mask values {sorted(bad)} are no class of {classes} and not {IGNORE}")
        if size:
            scale = size / max(image.size)
            wh = (round(image.width * scale), round(image.height * scale))
            image = image.resize(wh, Image.BILINEAR)
            mask = np.asarray(Image.fromarray(mask.astype(np.uint8)).resize(wh, Image.NEAREST)).astype(np.int64)
        x = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255
        images.append((x - mean) / std)
        masks.append(torch.from_numpy(mask))
    return images, masks


def build(num_classes: int) -> smp.Unet:
    model = smp.Unet("tu-tf_efficientnet_lite0", encoder_weights=None, classes=num_classes,
                     decoder_channels=(128, 64, 32, 16, 8))  # fmt: skip
    missing, _ = model.encoder.model.load_state_dict(lite0().state_dict(), strict=False)
    assert not missing, f"encoder weights missing: {missing[:5]}"
    return model


def random_crops(
    images: list[torch.Tensor], masks: list[torch.Tensor], n: int, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` random `size` crops of random images (an image smaller than that is padded, its mask with void)."""
    xs, ys = [], []
    for i in torch.randint(len(images), (n,)).tolist():
        x, y = images[i], masks[i]
        h, w = y.shape
        ph, pw = max(0, size - h), max(0, size - w)
        if ph or pw:
            x, y = F.pad(x, (0, pw, 0, ph)), F.pad(y, (0, pw, 0, ph), value=IGNORE)
            h, w = y.shape
        top, left = int(torch.randint(h - size + 1, ())), int(torch.randint(w - size + 1, ()))
        x, y = x[:, top : top + size, left : left + size], y[top : top + size, left : left + size]
        for dim in (-1, -2):  # h and v flips: neither microscopy nor aerial photos have an up or down
            if torch.rand(()) < 0.5:
                x, y = x.flip(dim), y.flip(dim)
        xs.append(x)
        ys.append(y)
    return torch.stack(xs), torch.stack(ys)


@torch.no_grad()
def evaluate(model: nn.Module, images: list[torch.Tensor], masks: list[torch.Tensor], classes: list[str]) -> dict:
    """Whole images one at a time, padded to a multiple of 32 (the U-Net's stride) and the padding cut off."""
    model.eval()
    metrics = SegmentationMetrics(classes, ignore_index=IGNORE)
    for x, y in zip(images, masks):
        h, w = y.shape
        padded = F.pad(x[None], (0, -w % 32, 0, -h % 32))
        metrics.update(model(padded)[..., :h, :w].argmax(1), y[None])
    return metrics.compute()


def main() -> None:
    p = arguments(__doc__)
    p.add_argument("--crop-size", type=int, default=256)
    p.add_argument("--image-size", type=int, default=None, help="resize the longer side first (default: as is)")
    p.add_argument("--class-names", nargs="+", default=None, help="masks hold these class ids (default: 0/255)")
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args()
    setup(args)
    root = Path(args.root)
    classes = args.class_names or BINARY
    train_x, train_y = read_split(root / "train", classes, args.image_size)
    val_x, val_y = read_split(root / "val", classes, args.image_size)
    model = build(len(classes))

    _, one_image = timed(evaluate, model, val_x[:1], val_y[:1], classes)
    new = nn.ModuleList([model.decoder, model.segmentation_head])
    opt = torch.optim.AdamW(param_groups(new, model.encoder, 1e-3, 1e-4, 1e-4))
    schedule = TimeSchedule(opt, args.started, args.budget_s, eval_s=one_image * len(val_x))
    dice = smp.losses.DiceLoss("multiclass", ignore_index=IGNORE)
    model.train()
    while schedule.step():
        x, y = random_crops(train_x, train_y, args.batch_size, args.crop_size)
        logits = model(x)
        loss = F.cross_entropy(logits, y, ignore_index=IGNORE) + dice(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    metrics, eval_s = timed(evaluate, model, val_x, val_y, classes)
    finish(args, metrics, schedule, images=len(train_x), eval_seconds=round(eval_s, 1))


if __name__ == "__main__":
    main()
