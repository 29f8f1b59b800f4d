"""Plain reference, detection: torchvision's FCOS on timm tf_efficientnet_lite0 features (offline ImageNet weights,
``features_only``, strides 8/16/32) + torchvision's FPN with P6/P7, trained in a hand-written loop for a wall-clock
budget and scored by cvsuite's DetectionEvaluator (pycocotools) in the original images' pixels.

ROOT/{train,val}/{images,annotations/*.xml} (VOC), or ROOT/{train,val}/{images,labels/*.txt} + ROOT/data.yaml (YOLO;
classes in its order; VOC's are the sorted names). Every photo is decoded once and its longest side resized to
--image-size (as the recipe's 256); training flips horizontally (torchvision's detection reference preset); batch 8;
AdamW (FPN and head 1e-3, backbone 1e-4, weight decay 1e-4, none on norms and biases), gradients clipped at 10, warm-up
then cosine over the training time. Neck and head as light as the recipe's (64 channels, 2 convolutions per tower).
Post-processing as the recipe's: score > 0.05, NMS 0.6, 100 boxes per image. The final weights are evaluated once.

    python bench/plain_detection.py --root ROOT --budget-s 180 --out plain.json
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from plain_common import MEAN, STD, TimeSchedule, arguments, finish, lite0, param_groups, setup, timed
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from cvsuite.metrics.detection import DetectionEvaluator


def parse_voc(split: Path) -> list[tuple[Path, list[tuple[str, list[float]]]]]:
    """(image path, [(class name, xyxy in pixels)]) per ``annotations/*.xml``; ``difficult`` objects left out, as
    cvsuite leaves them out by default."""
    parsed = []
    for xml in sorted((split / "annotations").glob("*.xml")):
        root = ET.parse(xml).getroot()
        objects = [(o.findtext("name"), [float(o.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")])
                   for o in root.iter("object") if o.findtext("difficult", "0").strip() != "1"]  # fmt: skip
        parsed.append((split / "images" / root.findtext("filename"), objects))
    return parsed


def parse_yolo(split: Path, names: list[str]) -> list[tuple[Path, list[tuple[str, list[float]]]]]:
    """The same from ``images/*`` + ``labels/<stem>.txt`` (``class cx cy w h``, normalised; no file: no objects)."""
    parsed = []
    for path in sorted(p for p in (split / "images").iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")):
        label = split / "labels" / f"{path.stem}.txt"
        rows = [line.split() for line in label.read_text().splitlines() if line.strip()] if label.is_file() else []
        w, h = Image.open(path).size
        objects = []
        for k, cx, cy, bw, bh in ((int(r[0]), *map(float, r[1:5])) for r in rows):
            objects.append((names[k], [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]))
        parsed.append((path, objects))
    return parsed


def yolo_names(root: Path) -> list[str]:
    """The class names of ROOT/data.yaml (``names:`` list or {id: name}) or ROOT/classes.txt."""
    if (root / "data.yaml").is_file():
        names = yaml.safe_load((root / "data.yaml").read_text())["names"]
        return [names[k] for k in sorted(names)] if isinstance(names, dict) else list(names)
    return (root / "classes.txt").read_text().split()


def read_split(split: Path, size: int, names: list[str] | None = None) -> tuple[list[dict], list[str]]:
    """A VOC (``annotations/*.xml``) or YOLO (``labels/*.txt``, names from the parent's data.yaml) split. Per image:
    ``image`` (3, h, w) uint8 with the longest side `size`, ``boxes`` (N, 4) xyxy in those pixels, ``labels``
    (N,), ``orig_boxes`` in the original pixels, ``orig_size`` (H, W), ``scale``. VOC classes are the sorted names
    of the first split read (pass its `names` to the next)."""
    if (split / "labels").is_dir():
        names = names or yolo_names(split.parent)
        parsed = parse_yolo(split, names)
    else:
        parsed = parse_voc(split)
        names = names or sorted({n for _, objects in parsed for n, _ in objects})
    samples = []
    for path, objects in parsed:
        image = Image.open(path).convert("RGB")
        w, h = image.size
        boxes = np.array([b for _, b in objects], np.float32).reshape(-1, 4).clip(0, [w, h, w, h]).astype(np.float32)
        keep = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
        labels = np.array([names.index(n) for n, _ in objects], np.int64).reshape(-1)[keep]
        scale = size / max(w, h)
        small = image.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
        samples.append({
            "image": torch.from_numpy(np.asarray(small).copy()).permute(2, 0, 1),
            "boxes": torch.from_numpy(boxes[keep] * scale), "labels": torch.from_numpy(labels),
            "orig_boxes": torch.from_numpy(boxes[keep]), "orig_size": (h, w), "scale": scale,
        })  # fmt: skip
    return samples, names


class TimmFPN(nn.Module):
    """timm features (strides 8, 16, 32) -> FPN + P6/P7; ``out_channels`` is torchvision's backbone contract."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = lite0(features_only=True, out_indices=(2, 3, 4))
        self.fpn = FeaturePyramidNetwork(self.body.feature_info.channels(), width, LastLevelP6P7(width, width))
        self.out_channels = width

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


def build(num_classes: int, size: int, width: int = 64) -> FCOS:
    anchors = AnchorGenerator(((8,), (16,), (32,), (64,), (128,)), ((1.0,),) * 5)  # one point per location
    return FCOS(TimmFPN(width), num_classes, min_size=size, max_size=size, image_mean=list(MEAN), image_std=list(STD),
                anchor_generator=anchors, head=FCOSHead(width, 1, num_classes, num_convs=2),
                score_thresh=0.05, nms_thresh=0.6, detections_per_img=100)  # fmt: skip


@torch.no_grad()
def evaluate(model: FCOS, samples: list[dict], names: list[str], batch: int = 8) -> dict:
    model.eval()
    metrics = DetectionEvaluator(names)
    for i in range(0, len(samples), batch):
        chunk = samples[i : i + batch]
        out = model([s["image"].float() / 255 for s in chunk])
        preds = [{**o, "boxes": o["boxes"] / s["scale"]} for o, s in zip(out, chunk)]
        targets = [{"boxes": s["orig_boxes"], "labels": s["labels"]} for s in chunk]
        metrics.update(preds, targets, sizes=[s["orig_size"] for s in chunk])
    return metrics.compute()


def flipped(s: dict) -> tuple[torch.Tensor, torch.Tensor]:
    image, boxes = s["image"], s["boxes"]
    if torch.rand(()) < 0.5:
        image, boxes = (
            image.flip(-1),
            boxes[:, [2, 1, 0, 3]] * torch.tensor([-1, 1, -1, 1])
            + torch.tensor([image.shape[-1], 0, image.shape[-1], 0]),
        )
    return image.float() / 255, boxes


def main() -> None:
    p = arguments(__doc__)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args()
    setup(args)
    root = Path(args.root)
    train, names = read_split(root / "train", args.image_size)
    val, _ = read_split(root / "val", args.image_size, names)
    model = build(len(names), args.image_size)

    _, one_batch = timed(evaluate, model, val[: args.batch_size], names, args.batch_size)
    body = model.backbone.body
    new = nn.ModuleList([model.backbone.fpn, model.head])
    opt = torch.optim.AdamW(param_groups(new, body, 1e-3, 1e-4, 1e-4))
    schedule = TimeSchedule(opt, args.started, args.budget_s, eval_s=one_batch * len(val) / args.batch_size)
    epochs = 0
    while schedule.progress() < 1:
        model.train()
        order = torch.randperm(len(train)).tolist()
        for i in range(0, len(order) - args.batch_size + 1, args.batch_size):
            if not schedule.step():
                break
            images, targets = [], []
            for j in order[i : i + args.batch_size]:
                image, boxes = flipped(train[j])
                images.append(image)
                targets.append({"boxes": boxes, "labels": train[j]["labels"]})
            losses = model(images, targets)
            opt.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
        epochs += 1
    metrics, eval_s = timed(evaluate, model, val, names, args.batch_size)
    finish(args, metrics, schedule, epochs=epochs, images=len(train), eval_seconds=round(eval_s, 1))


if __name__ == "__main__":
    main()
