"""A careful hand-written timm fine-tune in plain PyTorch: the reference our tools/train.py is measured against.

Same model (timm tf_efficientnet_lite0 with the offline ImageNet weights), same data folders, image size, batch
size, epochs, optimiser and schedule as the recipe it is compared with; per epoch: train, validate, save a
checkpoint. Prints one JSON line: {"val_accuracy": ..., "seconds": ...}.

    python bench/plain_timm_finetune.py --root ROOT --epochs 5 --image-size 128 --batch-size 32
    python bench/plain_timm_finetune.py --root ROOT --epochs 3 --image-size 224 --batch-size 16 --onecycle 0.2
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import timm
import torch
from torch.utils.data import DataLoader
from torchvision import datasets

from cvsuite.models.backbone import _offline_wheel_state_dict


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument(
        "--onecycle",
        type=float,
        default=None,
        metavar="SHARE",
        help="torch's OneCycleLR with this warm-up share (issue 21's loop: 0.2) instead of 1 warm-up epoch + cosine",
    )
    p.add_argument("--out", default="/tmp/plain_ckpt.pth")
    args = p.parse_args()
    start = time.perf_counter()
    torch.manual_seed(42)

    root = Path(args.root)
    classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
    model = timm.create_model(
        "tf_efficientnet_lite0",
        pretrained=True,
        num_classes=len(classes),
        drop_rate=0.2,
        pretrained_cfg_overlay={"state_dict": _offline_wheel_state_dict("tf_efficientnet_lite0")},
    )
    cfg = timm.data.resolve_model_data_config(model)
    cfg["input_size"] = (3, args.image_size, args.image_size)
    # The same light augmentation as our "light" preset: random resized crop (35-100% area) and flip, no colour.
    train_tf = timm.data.create_transform(
        **cfg, is_training=True, hflip=0.5, scale=(0.35, 1.0), color_jitter=0.0, auto_augment=None
    )
    val_tf = timm.data.create_transform(**cfg)
    train_set = datasets.ImageFolder(root / "train", train_tf)
    val_set = datasets.ImageFolder(root / "val", val_tf)
    train_dl = DataLoader(
        train_set,
        args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        drop_last=True,
        persistent_workers=args.workers > 0,
    )
    val_dl = DataLoader(val_set, args.batch_size, num_workers=args.workers, persistent_workers=args.workers > 0)

    # Head at lr, backbone at lr/10; no weight decay on norms/biases; warm-up 1 epoch then cosine.
    head = set(map(id, model.get_classifier().parameters()))
    groups = [
        {"params": [p for p in model.parameters() if id(p) in head], "lr": args.lr},
        {"params": [p for p in model.parameters() if id(p) not in head and p.ndim > 1], "lr": args.lr * 0.1},
        {
            "params": [p for p in model.parameters() if id(p) not in head and p.ndim <= 1],
            "lr": args.lr * 0.1,
            "weight_decay": 0.0,
        },
    ]
    opt = torch.optim.AdamW(groups, lr=args.lr, weight_decay=0.01)
    steps = len(train_dl) * args.epochs
    warm = len(train_dl)
    if args.onecycle is not None:
        peaks = [g["lr"] for g in groups]
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, peaks, total_steps=steps, pct_start=args.onecycle)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt,
            lambda s: (
                (s + 1) / warm
                if s < warm
                else 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm)))
            ),
        )
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    best = 0.0
    for _epoch in range(args.epochs):
        model.train()
        for x, y in train_dl:
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()
            sched.step()
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for x, y in val_dl:
                correct += int((model(x).argmax(1) == y).sum())
                total += len(y)
        acc = correct / total
        best = max(best, acc)
        torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, args.out)
    print(json.dumps({"val_accuracy": acc, "best_val_accuracy": best, "seconds": time.perf_counter() - start}))


if __name__ == "__main__":
    main()
