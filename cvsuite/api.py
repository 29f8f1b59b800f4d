"""The Python API: ``cvsuite.load(ckpt)`` gives a predictor for any task's checkpoint, ``cvsuite.train(recipe)``
trains one.

    import cvsuite
    model = cvsuite.load("runs/exp/checkpoints/best.ckpt")
    result = model("photo.jpg")           # or a PIL image, an HWC numpy array, or a list of them
    result.labels[0], result.scores[0]    # classification: top-k, best first

Each task's ``TaskSpec.predictor`` turns images into a typed result through the module's own preprocessing and
forward (those of ``cvsuite predict`` and ``cvsuite eval``), so the numbers are theirs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cvsuite.data.common import array_to_rgb, check_image_input, image_to_rgb, read_image

ImageLike = str | Path | Image.Image | np.ndarray


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
    """HWC uint8 RGB from a path, a PIL image or an array, converted exactly as training reads files
    (`cvsuite.data.common.image_to_rgb` / `array_to_rgb`): 16-bit values / 257, alpha dropped, grey repeated; float
    arrays in [0, 1]."""
    check_image_input(image)  # empty or NaN arrays, decompression bombs: named errors, not a prediction or a crash
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such image file")
        return read_image(path)
    if isinstance(image, Image.Image):
        if image.mode == "F":  # a float image built in memory: the array rule (values in [0, 1])
            return array_to_rgb(np.asarray(image))
        return image_to_rgb(image)
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a path, a PIL image or a numpy array, got {type(image).__name__}")
    return array_to_rgb(image)


def _as_list(images: ImageLike | Sequence[ImageLike]) -> tuple[list[ImageLike], bool]:
    if isinstance(images, (list, tuple)):
        return list(images), True
    return [images], False


# ---- the predictor -------------------------------------------------------------------------------------------------
class Predictor:
    """A trained checkpoint ready for inference; call it on one image or a list. Built by `load`.

    The task's own predictor (`cvsuite.tasks.TaskSpec.predictor`) turns images into typed results through the
    module's inference methods, the ones ``cvsuite predict`` and ``cvsuite eval`` use, so the numbers are theirs."""

    def __init__(self, module: torch.nn.Module, cfg: Any, spec: Any = None, batch_size: int = 16) -> None:
        from cvsuite.tasks import get_spec

        self.module = module.eval()
        self.cfg = cfg
        self.task: str = cfg.task
        self.spec = spec or get_spec(cfg.task)
        self.batch_size = batch_size

    @property
    def class_names(self) -> list[str]:
        return list(self.module.hparams.get("class_names") or [])

    @property
    def device(self) -> torch.device:
        return self.module.device

    def __call__(self, images: ImageLike | Sequence[ImageLike], **options: Any):
        if self.spec.predictor is None:
            raise TypeError(f"a {self.task} checkpoint takes no images: call .generate(n, seed)")
        items, is_list = _as_list(images)
        arrays = [to_rgb(x) for x in items]
        results = self.spec.predictor(self.module, arrays, batch_size=self.batch_size, **options) if arrays else []
        return results if is_list else results[0]

    def generate(self, n: int, seed: int = 0, class_name: str | None = None) -> np.ndarray:
        """Generation checkpoints: (n, S, S, 3) uint8 samples of the EMA generator; the same checkpoint and seed
        give the same images."""
        if self.task != "generation":
            raise TypeError(f"a {self.task} checkpoint reads images: call it on an image or a list of images")
        from cvsuite.tasks.generation import sample_images

        images = sample_images(self.module, n, seed, self.batch_size, class_name)
        return (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(task={self.task!r}, classes={self.class_names}, device={self.device})"


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
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return Predictor(module.to(device), cfg, spec, batch_size)


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
