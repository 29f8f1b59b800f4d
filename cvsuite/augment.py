"""Albumentations pipelines for every task, from shared pieces, and the one place that chooses a pipeline.

Presets ``none`` / ``light`` / ``strong`` per task:

- classification: random resized crop + flip (+ colour, rotation, blur, grey when strong);
- detection: letterbox (longest side, padded with the mean colour) + scale jitter and random placement + flip +
  colour; boxes move with the image (``bbox_params``);
- segmentation: scale-preserving random crops + flip (+ rotation, colour, blur); masks follow with nearest
  neighbour and borders filled with ``ignore_index``;
- generation: flips only (``data.hflip``);
- regression: resize + flip (+ colour when strong), never a crop.

A custom pipeline in the recipe is albumentations' own serialisation (``A.to_dict`` / ``A.from_dict``).
`choose` picks "checkpoint -> custom -> preset" for all tasks, and `seed_pipelines` is the one seeding
mechanism (per DataLoader worker and per distributed rank), called by `cvsuite.data.common.make_loader`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.pytorch import ToTensorV2

from cvsuite.config import ConfigError

PRESETS = ("none", "light", "strong")


# ---- shared pieces -----------------------------------------------------------------------------------------------
def normalize(mean, std) -> list[A.BasicTransform]:
    return [A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0), ToTensorV2()]


def colour(strong: bool, p_light: float = 0.5) -> list[A.BasicTransform]:
    """Photometric jitter: mild for light, stronger (plus grey and blur) for strong."""
    if not strong:
        return [A.ColorJitter(0.2, 0.2, 0.2, 0.02, p=p_light)]
    return [A.ColorJitter(0.3, 0.3, 0.3, 0.05, p=0.8), A.ToGray(p=0.05), A.GaussianBlur(blur_limit=(3, 5), p=0.2)]


def bbox_params(min_visibility: float = 0.3, min_size: float = 1.0) -> A.BboxParams:
    # clip=True absorbs float round-off at the border; min_visibility drops boxes a crop has mostly cut away.
    return A.BboxParams(
        format="pascal_voc",
        label_fields=["labels"],
        min_visibility=min_visibility,
        min_width=min_size,
        min_height=min_size,
        clip=True,
    )


# ---- classification ------------------------------------------------------------------------------------------------
def classification_train(preset: str, size: int, mean, std) -> A.Compose:
    if preset == "none":
        ops: list[A.BasicTransform] = [A.Resize(size, size)]
    else:
        lo = 0.35 if preset == "light" else 0.2
        ops = [A.RandomResizedCrop(size=(size, size), scale=(lo, 1.0)), A.HorizontalFlip()]
        if preset == "strong":
            ops += [A.Affine(rotate=(-15, 15), p=0.3), *colour(strong=True)]
    return A.Compose(ops + normalize(mean, std))


def classification_eval(size: int, mean, std, crop_pct: float | None = None) -> A.Compose:
    """Resize (then centre-crop when `crop_pct` is set, as the backbone's weights were evaluated)."""
    if crop_pct:
        ops = [A.SmallestMaxSize(max_size=int(round(size / crop_pct))), A.CenterCrop(size, size)]
    else:
        ops = [A.Resize(size, size)]
    return A.Compose(ops + normalize(mean, std))


# ---- detection ----------------------------------------------------------------------------------------------------
def detection_train(preset: str, size: int, mean, std, min_visibility: float = 0.3, min_size: float = 1.0) -> A.Compose:
    """Every preset letterboxes to size x size (aspect kept, padded with the mean colour, which normalisation
    turns into 0, as torchvision pads its batches). light: scale jitter 0.75-1.25 with random placement/crop,
    flip, mild colour; strong: jitter 0.5-1.5, stronger colour, grey and blur."""
    fill = tuple(int(round(m * 255)) for m in mean)
    ops: list[A.BasicTransform] = [A.LongestMaxSize(max_size=size, area_for_downscale="image")]
    if preset == "none":
        ops.append(A.PadIfNeeded(size, size, position="top_left", border_mode=0, fill=fill))
    else:
        jitter = 0.25 if preset == "light" else 0.5
        ops += [
            A.RandomScale(scale_limit=(-jitter, jitter), p=1.0),
            A.PadIfNeeded(size, size, position="random", border_mode=0, fill=fill),
            A.RandomCrop(size, size),
            A.HorizontalFlip(),
            *colour(strong=preset == "strong"),
        ]
    return A.Compose(ops + normalize(mean, std), bbox_params=bbox_params(min_visibility, min_size))


def detection_eval(size: int, mean, std) -> A.Compose:
    """Longest side to `size`; no crop, no pad: predictions map back to the original by scale."""
    ops = [A.LongestMaxSize(max_size=size, area_for_downscale="image")]
    return A.Compose(ops + normalize(mean, std), bbox_params=bbox_params(0.0, 0.0))


def with_boxes(custom: A.Compose, params: A.BboxParams) -> A.Compose:
    """A custom pipeline made box-aware (the recipe's serialised pipeline rarely carries bbox_params)."""
    return A.Compose(list(custom.transforms), bbox_params=params)


# ---- segmentation -------------------------------------------------------------------------------------------------
class ClassCentredCrop(A.RandomCrop):
    """A random crop that, for a `share` of the samples, lies over a pixel of one class of the mask (nnU-Net's
    foreground oversampling with every class counted): a class of a few thin or small regions gets crops of its own
    instead of its share of the area, which random crops give it (a pole in 1 % of the pixels is in many crops, but
    at their border and cut). The class is picked among those in the mask with probability in proportion to
    `class_preference` (one value per class id; uniformly when None), so that a class found in few images, next to
    many common ones, still gets most of the crops of those images. Expects the image padded to the crop size
    first."""

    def __init__(
        self,
        height: int,
        width: int,
        share: float,
        ignore_index: int,
        class_preference: Sequence[float] | None = None,
        p: float = 1.0,
    ) -> None:
        super().__init__(height, width, p=p)
        self.share = share
        self.ignore_index = ignore_index
        self.class_preference = None if class_preference is None else [float(w) for w in class_preference]

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        out = super().get_params_dependent_on_data(params, data)
        mask = data.get("mask")
        if mask is None or self.share <= 0 or self.py_random.random() >= self.share:
            return out
        classes = [c for c in np.unique(mask).tolist() if c != self.ignore_index]
        if not classes:
            return out
        if self.class_preference is None:
            chosen = classes[self.py_random.randrange(len(classes))]
        else:
            prefs = [self.class_preference[c] if 0 <= c < len(self.class_preference) else 0.0 for c in classes]
            chosen = self.py_random.choices(classes, weights=prefs)[0] if sum(prefs) > 0 else classes[0]
        ys, xs = np.nonzero(mask == chosen)
        i = self.py_random.randrange(len(ys))
        height, width = mask.shape[:2]
        # The chosen pixel anywhere in the window (not always its centre), the window inside the image.
        y0 = min(max(int(ys[i]) - self.py_random.randrange(self.height), 0), max(height - self.height, 0))
        x0 = min(max(int(xs[i]) - self.py_random.randrange(self.width), 0), max(width - self.width, 0))
        out["crop_coords"] = (x0, y0, x0 + min(self.width, width), y0 + min(self.height, height))
        return out


def segmentation_train(
    preset: str,
    crop_size: int,
    image_size: int | None,
    mean,
    std,
    ignore_index: int,
    class_crops: float = 0.0,
    class_preference: Sequence[float] | None = None,
) -> A.Compose:
    """Scale-preserving crops, so training sees objects at the size validation (full image) sees them; padding
    and rotation borders are `ignore_index` in the mask, so they count for nothing. `class_crops`: the share of
    crops placed over a class of the image, picked in proportion to `class_preference` (`ClassCentredCrop`)."""
    ops: list[A.BasicTransform] = [A.LongestMaxSize(max_size=image_size)] if image_size else []
    if preset != "none":
        ops.append(A.RandomScale(scale_limit=(-0.25, 0.25), p=1.0))
    ops += [
        A.PadIfNeeded(crop_size, crop_size, border_mode=0, fill=0, fill_mask=ignore_index),
        ClassCentredCrop(crop_size, crop_size, class_crops, ignore_index, class_preference)
        if class_crops
        else A.RandomCrop(crop_size, crop_size),
    ]
    if preset != "none":
        ops.append(A.HorizontalFlip())
    if preset == "strong":
        ops += [A.Affine(rotate=(-15, 15), border_mode=0, fill=0, fill_mask=ignore_index, p=0.3), *colour(True)]
    return A.Compose(ops + normalize(mean, std))


def segmentation_eval(image_size: int | None, mean, std) -> A.Compose:
    """Image-only: optional resize of the longer side; the mask keeps its own size (predictions are resized)."""
    ops: list[A.BasicTransform] = [A.LongestMaxSize(max_size=image_size)] if image_size else []
    return A.Compose(ops + normalize(mean, std))


# ---- generation ---------------------------------------------------------------------------------------------------
def generation_resize(size: int) -> A.Compose:
    """Shorter side to `size` (area interpolation when shrinking), then the centre square."""
    return A.Compose(
        [
            A.SmallestMaxSize(max_size=size, interpolation=cv2.INTER_CUBIC, area_for_downscale="image"),
            A.CenterCrop(size, size),
        ]
    )


def generation_train(hflip: bool, mean, std) -> A.Compose:
    return A.Compose(([A.HorizontalFlip(p=0.5)] if hflip else []) + normalize(mean, std))


# ---- regression ----------------------------------------------------------------------------------------------------
def regression_train(preset: str, size: int, mean, std) -> A.Compose:
    """Whole-image resize plus flips (+ colour when strong): no random crop, which would change targets measured on
    the whole image (counts, areas, zoom)."""
    ops: list[A.BasicTransform] = [A.Resize(size, size)]
    if preset != "none":
        ops.append(A.HorizontalFlip())
    if preset == "strong":
        ops.append(A.ColorJitter(0.2, 0.2, 0.2, 0.02, p=0.5))
    return A.Compose(ops + normalize(mean, std))


# ---- choosing and seeding -----------------------------------------------------------------------------------------
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


def choose(
    stored: dict[str, Any] | None,
    custom: dict[str, Any] | None,
    key: str,
    preset: Callable[[], A.Compose],
    adapt: Callable[[A.Compose], A.Compose] | None = None,
) -> A.Compose:
    """The pipeline to use: the checkpoint's (a trained model is evaluated as it was), else the recipe's custom
    one (made box-aware by `adapt`), else the preset."""
    if stored:
        return A.from_dict(stored)
    pipeline = from_config(custom, key)
    if pipeline is not None:
        return adapt(pipeline) if adapt else pipeline
    return preset()


def to_dict(pipeline: A.Compose) -> dict[str, Any]:
    """Serialised pipeline for the checkpoint (eval/predict rebuild it without the recipe)."""
    return A.to_dict(pipeline)


def seed_pipelines(dataset: Any, seed: int) -> None:
    """albumentations 2 draws from its own generator, which ``seed_everything`` does not reach: seed every
    pipeline a dataset holds (attributes with ``set_random_seed``)."""
    for value in getattr(dataset, "__dict__", {}).values():  # plain sequences hold no pipelines
        if hasattr(value, "set_random_seed"):
            value.set_random_seed(seed % 2**32)
