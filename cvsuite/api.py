"""The Python API: ``cvsuite.load(ckpt)`` gives a predictor for any task's checkpoint, ``cvsuite.train(recipe)``
trains one.

    import cvsuite
    model = cvsuite.load("runs/exp/checkpoints/best.ckpt")
    result = model("photo.jpg")           # or a PIL image, an HWC numpy array, or a list of them
    result.labels[0], result.scores[0]    # classification: top-k, best first

Each task has a small adapter (``_Classifier``, ``_Detector``, ...) that turns images into a typed result with
the module's own preprocessing, so the numbers are those of ``tools/predict.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from cvsuite.data.common import check_image_input, read_image

ImageLike = str | Path | Image.Image | np.ndarray
# 16/32-bit single-channel modes, which PIL's convert("RGB") would clip to white instead of scaling.
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I", "F")


# ---- typed results --------------------------------------------------------------------------------------------------
@dataclass
class Classification:
    """Top-k classes of one image, best first; `probs` holds every class's score (softmax, or sigmoid when
    multi-label) in the order of `class_names`."""

    labels: list[str]
    scores: list[float]
    probs: np.ndarray
    class_names: list[str]


@dataclass
class Detections:
    """Detected objects of one image, best score first.

    Attributes:
        boxes: (N, 4) float32, xyxy in pixels of the original image.
        scores: (N,) float32.
        class_ids: (N,) int64, indices into `class_names`.
        labels: class names of the boxes.
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    labels: list[str]
    class_names: list[str]


@dataclass
class Segmentation:
    """mask: (H, W) int64 class ids at the input's own size; probs: (C, H, W) float32 per-class probabilities
    when asked for (``model(img, probs=True)``), else None."""

    mask: np.ndarray
    class_names: list[str]
    probs: np.ndarray | None = None


@dataclass
class Regression:
    """values: one number per target column, by name (``values["age"]``); `array` holds them in order."""

    values: dict[str, float]
    array: np.ndarray = field(repr=False)


# ---- images -------------------------------------------------------------------------------------------------------
def to_rgb(image: ImageLike) -> np.ndarray:
    """HWC uint8 RGB from a path, a PIL image or an array (HW gray, HWC with 1/3/4 channels; uint8, 16-bit
    integers or floats in [0, 1]). Alpha is dropped; 16-bit values are scaled to 8 bits rather than clipped."""
    check_image_input(image)  # empty or NaN arrays, decompression bombs: named errors, not a prediction or a crash
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such image file")
        try:
            with Image.open(path) as img:
                if img.mode in WIDE_MODES:
                    return to_rgb(np.asarray(img))
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
            pass  # read_image raises the error that names the file
        return read_image(path)
    if isinstance(image, Image.Image):
        if image.mode in WIDE_MODES:
            return to_rgb(np.asarray(image))
        return np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a path, a PIL image or a numpy array, got {type(image).__name__}")
    arr = image
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"an image array must be HW or HWC with 1, 3 or 4 channels, got shape {image.shape}")
    arr = arr[:, :, :3] if arr.shape[2] == 4 else np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and (np.nanmin(arr) < 0 or np.nanmax(arr) > 1):
            raise ValueError("a float image array must hold values in [0, 1]")
        return np.ascontiguousarray((arr * 255).round().astype(np.uint8))
    if np.issubdtype(arr.dtype, np.integer):
        # 16-bit (or wider) data: 8 bits by scaling the type's range (uint16 65535 -> 255).
        top = 65535 if arr.max(initial=0) > 255 else 255
        return np.ascontiguousarray((arr.astype(np.float64) * 255 / top).round().clip(0, 255).astype(np.uint8))
    raise ValueError(f"unsupported image dtype {arr.dtype}")


def _as_list(images: ImageLike | Sequence[ImageLike]) -> tuple[list[ImageLike], bool]:
    if isinstance(images, (list, tuple)):
        return list(images), True
    return [images], False


# ---- predictors ---------------------------------------------------------------------------------------------------
class Predictor:
    """A trained checkpoint ready for inference; call it on one image or a list. Built by `load`."""

    def __init__(self, module: torch.nn.Module, cfg: Any, batch_size: int = 16) -> None:
        self.module = module.eval()
        self.cfg = cfg
        self.task: str = cfg.task
        self.batch_size = batch_size

    @property
    def class_names(self) -> list[str]:
        return list(self.module.hparams.get("class_names") or [])

    @property
    def device(self) -> torch.device:
        return self.module.device

    def __call__(self, images: ImageLike | Sequence[ImageLike], **options: Any):
        items, is_list = _as_list(images)
        arrays = [to_rgb(x) for x in items]
        results = self._predict(arrays, **options) if arrays else []
        return results if is_list else results[0]

    def _predict(self, images: list[np.ndarray], **options: Any) -> list[Any]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(task={self.task!r}, classes={self.class_names}, device={self.device})"


class _Classifier(Predictor):
    def _predict(self, images: list[np.ndarray], topk: int = 5) -> list[Classification]:
        names = self.class_names
        scores = self.module.predict_images(images, batch_size=self.batch_size)
        k = min(topk, len(names))
        out = []
        for s in scores:
            values, idx = s.topk(k)
            out.append(
                Classification([names[i] for i in idx.tolist()], values.tolist(), s.numpy().astype(np.float32), names)
            )
        return out


class _Detector(Predictor):
    def _predict(self, images: list[np.ndarray]) -> list[Detections]:
        names = self.class_names
        out = []
        for pred in self.module.predict_images(images, batch_size=self.batch_size):
            order = pred["scores"].argsort(descending=True)
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


class _Segmenter(Predictor):
    @torch.no_grad()
    def _predict(self, images: list[np.ndarray], probs: bool = False) -> list[Segmentation]:
        pipeline = self.module.eval_pipeline()
        tensors = [pipeline(image=im)["image"] for im in images]
        logits: list[torch.Tensor | None] = [None] * len(images)
        # Batch images whose preprocessed tensors share a shape (all of them with a fixed-size pipeline).
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, t in enumerate(tensors):
            by_shape.setdefault(tuple(t.shape), []).append(i)
        for idx in by_shape.values():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start : start + self.batch_size]
                batch = torch.stack([tensors[i] for i in chunk]).to(self.device)
                for i, lg in zip(chunk, self.module.infer(batch)):
                    logits[i] = lg
        out = []
        for image, lg in zip(images, logits):
            lg = lg[None].float()
            if lg.shape[-2:] != image.shape[:2]:
                lg = F.interpolate(lg, size=image.shape[:2], mode="bilinear", align_corners=False)
            mask = lg.argmax(1)[0].cpu().numpy().astype(np.int64)
            p = lg.softmax(1)[0].cpu().numpy().astype(np.float32) if probs else None
            out.append(Segmentation(mask, self.class_names, p))
        return out


class _Regressor(Predictor):
    def _predict(self, images: list[np.ndarray]) -> list[Regression]:
        names = list(self.module.hparams.target_names)
        values = self.module.predict_images(images, batch_size=self.batch_size)
        return [Regression(dict(zip(names, v.tolist())), v.numpy()) for v in values]


class _Generator(Predictor):
    """GAN checkpoints take no images: call `generate`."""

    def __call__(self, images=None, **options: Any):
        raise TypeError("a generation checkpoint makes images rather than reading them: call .generate(n, seed)")

    def generate(self, n: int, seed: int = 0, class_name: str | None = None) -> np.ndarray:
        """(n, S, S, 3) uint8 samples of the EMA generator; the same checkpoint and seed give the same images."""
        from cvsuite.tasks.generation import sample_images

        images = sample_images(self.module, n, seed, self.batch_size, class_name)
        return (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


# The checkpoint's task -> its adapter. A new task adds one line here.
PREDICTORS: dict[str, type[Predictor]] = {
    "classification": _Classifier,
    "detection": _Detector,
    "segmentation": _Segmenter,
    "regression": _Regressor,
    "generation": _Generator,
}


def load(
    ckpt: str | Path,
    device: str | torch.device | None = None,
    overrides: Mapping[str, Any] | None = None,
    batch_size: int = 16,
) -> Predictor:
    """A predictor for any cvsuite checkpoint.

    Args:
        ckpt: a checkpoint written by training (``RUN/checkpoints/best.ckpt``).
        device: ``"cpu"``, ``"cuda"``, ...; default: the GPU when one is available.
        overrides: recipe keys to change, e.g. ``{"model.score_thresh": 0.3}`` for detection.
        batch_size: images per forward pass.
    """
    from cvsuite.run import load_checkpoint

    # Detection's score threshold / NMS come from the (possibly overridden) recipe, as tools/predict.py applies them.
    module, cfg, spec = load_checkpoint(ckpt, None, override_args(overrides))
    if cfg.task not in PREDICTORS:
        raise ValueError(f"{ckpt}: no predictor for task {cfg.task!r}; known: {', '.join(PREDICTORS)}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return PREDICTORS[cfg.task](module.to(device), cfg, batch_size)


def override_args(overrides: Mapping[str, Any] | Sequence[str] | None) -> list[str]:
    """``{"data.root": "x", "trainer.max_epochs": 1}`` -> ``["--data.root", "x", "--trainer.max_epochs", "1"]``
    (values written as YAML, so lists and null survive); a list of ``--key value`` strings passes through."""
    import yaml

    if overrides is None:
        return []
    if not isinstance(overrides, Mapping):
        return list(overrides)
    args = []
    for key, value in overrides.items():
        text = value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip()
        text = text.removesuffix("\n...").strip()
        args += [f"--{key.removeprefix('--')}", text]
    return args


def train(
    config: str | Path, overrides: Mapping[str, Any] | Sequence[str] | None = None, resume: str | Path | None = None
) -> Path:
    """Train a recipe, e.g. ``train("configs/classification/finetune.yaml", {"data.root": "data/x"})``; returns
    the run folder (``checkpoints/best.ckpt``, ``metrics.json``, plots)."""
    from cvsuite import console, run
    from cvsuite.config import load_config

    cfg = load_config(config, override_args(overrides))
    console.setup(cfg.run.verbose)
    run_dir = run.train(cfg, resume=resume)
    console.print_best(run_dir, cfg)
    return run_dir
