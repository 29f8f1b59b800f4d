"""Plain reference, classification: timm's tf_efficientnet_lite0 (offline ImageNet weights) with a new linear head,
fine-tuned end to end in a hand-written loop for a wall-clock budget, scored by cvsuite's ClassificationMetrics.

ROOT/train/<class>/*.png and ROOT/val/<class>/*.png (as many classes as folders); timm's own transforms (random
resized crop 35-100 % + flip, as in bench/plain_timm_finetune.py; the eval transform resizes and centre-crops by the
weights' crop_pct); batch 32; AdamW (head 1e-3, backbone 1e-4, weight decay 0.01, none on norms and biases); label
smoothing 0.1; warm-up then cosine over the training time. The final weights are evaluated once on the whole
validation split.

With --max-steps N instead of --budget-s it makes exactly N optimiser steps (the same warm-up and cosine over the
steps) and the JSON line also holds ``timings``: seconds from --started to the end of each phase (imports, data,
model, first_step, training, final_evaluation), as bench/overhead.py reads them beside cvsuite's.

    python bench/plain_classification.py --root ROOT --budget-s 180 --out plain.json [--image-size 224]
    python bench/plain_classification.py --root ROOT --max-steps 40 --batch-size 16 --out plain.json
"""

from __future__ import annotations

import time

import timm
import torch
from plain_common import StepSchedule, TimeSchedule, arguments, finish, lite0, param_groups, setup, timed
from torch.utils.data import DataLoader
from torchvision import datasets

from cvsuite.metrics.classification import ClassificationMetrics

IMPORTED = time.time()


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader, class_names: list[str], batches: int | None = None) -> dict:
    model.eval()
    metrics = ClassificationMetrics(class_names)
    for i, (x, y) in enumerate(loader):
        if batches is not None and i >= batches:
            break
        metrics.update(model(x).softmax(1), y)
    return metrics.compute()


def main() -> None:
    p = arguments(__doc__, budget=False)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--max-steps", type=int, help="train exactly this many steps (instead of --budget-s)")
    args = p.parse_args()
    if (args.budget_s is None) == (args.max_steps is None):
        p.error("give one of --budget-s and --max-steps")
    setup(args)
    marks = {"imports": IMPORTED}

    classes, _ = datasets.folder.find_classes(f"{args.root}/train")
    model = lite0(num_classes=len(classes), drop_rate=0.2)
    marks["model"] = time.time()
    cfg = timm.data.resolve_model_data_config(model)
    cfg["input_size"] = (3, args.image_size, args.image_size)
    train_tf = timm.data.create_transform(
        **cfg, is_training=True, hflip=0.5, scale=(0.35, 1.0), color_jitter=0.0, auto_augment=None
    )
    train_set = datasets.ImageFolder(f"{args.root}/train", train_tf)
    val_set = datasets.ImageFolder(f"{args.root}/val", timm.data.create_transform(**cfg))
    loader = {"num_workers": args.workers, "persistent_workers": args.workers > 0}
    train_dl = DataLoader(train_set, args.batch_size, shuffle=True, drop_last=True, **loader)
    val_dl = DataLoader(val_set, args.batch_size, **loader)
    marks["data"] = time.time()  # after the model here: its data config sets the transforms

    head = model.get_classifier()
    body = torch.nn.ModuleList([m for name, m in model.named_children() if m is not head])
    opt = torch.optim.AdamW(param_groups(head, body, 1e-3, 1e-4, 0.01))
    if args.max_steps:
        schedule = StepSchedule(opt, args.max_steps)
    else:
        _, one_batch = timed(evaluate, model, val_dl, train_set.classes, batches=1)
        schedule = TimeSchedule(opt, args.started, args.budget_s, eval_s=one_batch * len(val_dl))
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    epochs = 0
    while schedule.progress() < 1:
        model.train()
        for x, y in train_dl:
            if not schedule.step():
                break
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()
            marks.setdefault("first_step", time.time())
        epochs += 1
    marks["training"] = time.time()
    metrics, eval_s = timed(evaluate, model, val_dl, train_set.classes)
    marks["final_evaluation"] = time.time()
    timings = {name: round(at - args.started, 2) for name, at in marks.items()}
    finish(args, metrics, schedule, epochs=epochs, eval_seconds=round(eval_s, 1), timings=timings)


if __name__ == "__main__":
    main()
