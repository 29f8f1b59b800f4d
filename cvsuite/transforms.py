"""Albumentations pipelines: named presets that end with the backbone's normalisation, or a custom pipeline
written in the recipe with albumentations' own serialisation (``A.to_dict`` / ``A.from_dict``).

Each task passes its own extra arguments to ``A.Compose`` (``bbox_params`` for boxes; masks follow the image
by default), so one preset serves every task.
"""

from __future__ import annotations

from typing import Any

import albumentations as A
from albumentations.pytorch import ToTensorV2

from cvsuite.config import ConfigError

PRESETS = ("none", "light", "strong")


def normalize(mean, std) -> list[A.BasicTransform]:
    return [A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0), ToTensorV2()]


def train_transforms(
    preset: str, size: int, mean, std, crop_scale: tuple[float, float] | None = None, **compose: Any
) -> A.Compose:
    """Training pipeline by name.

    Args:
        preset: none (resize only) | light (random resized crop + flip) | strong (light + colour, blur, rotation).
        size: output side in pixels (square).
        crop_scale: area range of the random crop; tasks with small objects pass a gentler one.
        compose: extra ``A.Compose`` arguments, e.g. ``bbox_params``.
    """
    if preset not in PRESETS:
        raise ConfigError(f"data.augment: unknown preset '{preset}'. Choose one of {', '.join(PRESETS)}")
    if preset == "none":
        ops: list[A.BasicTransform] = [A.Resize(size, size)]
    else:
        lo = 0.35 if preset == "light" else 0.2
        ops = [A.RandomResizedCrop(size=(size, size), scale=crop_scale or (lo, 1.0)), A.HorizontalFlip()]
        if preset == "strong":
            ops += [
                A.ColorJitter(0.3, 0.3, 0.3, 0.05, p=0.8),
                A.Affine(rotate=(-15, 15), p=0.3),
                A.GaussianBlur(blur_limit=(3, 5), p=0.2),
                A.ToGray(p=0.1),
            ]
    return A.Compose(ops + normalize(mean, std), **compose)


def eval_transforms(size: int, mean, std, crop_pct: float | None = None, **compose: Any) -> A.Compose:
    """Deterministic pipeline for validation and prediction: resize (then centre-crop when `crop_pct` is set)."""
    if crop_pct:
        resize = int(round(size / crop_pct))
        ops = [A.SmallestMaxSize(max_size=resize), A.CenterCrop(size, size)]
    else:
        ops = [A.Resize(size, size)]
    return A.Compose(ops + normalize(mean, std), **compose)


def from_config(spec: dict[str, Any] | None, key: str) -> A.Compose | None:
    """A custom pipeline from the recipe (albumentations' serialised dict), or None when not given."""
    if not spec:
        return None
    try:
        return A.from_dict(spec)
    except Exception as err:
        raise ConfigError(
            f"{key}: not a valid albumentations pipeline ({err}). Write it as albumentations serialises it: "
            "A.to_dict(A.Compose([...])), i.e. {'transform': {'__class_fullname__': 'Compose', 'transforms': [...]}}"
        ) from err


def to_dict(pipeline: A.Compose) -> dict[str, Any]:
    """Serialised pipeline for the checkpoint (eval/predict rebuild it without the recipe)."""
    return A.to_dict(pipeline)
