"""What every task's data needs: reading images with errors that name the file, checking a dataset before
training starts, seeded splits and worker counts."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

log = logging.getLogger("cvsuite")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")


class DatasetError(ValueError):
    """The data on disk cannot be used as it is; the message names the file and what to do."""


def list_images(folder: Path, recursive: bool = True) -> list[Path]:
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in Path(folder).glob(pattern) if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def read_image(path: str | Path, mode: str = "RGB") -> np.ndarray:
    """HWC uint8 array; raises DatasetError naming the file when it cannot be decoded."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert(mode))
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise DatasetError(f"{path}: cannot read image ({err}). Replace or delete the file.") from err


def check_image(path: Path) -> str | None:
    """Why `path` is not a readable image, or None when it is. Decodes fully, so truncated files are caught."""
    try:
        with Image.open(path) as img:
            img.load()
        return None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        return str(err) or type(err).__name__


def drop_unreadable(paths: Iterable[Path], what: str = "image") -> tuple[list[Path], list[tuple[Path, str]]]:
    """Split `paths` into readable ones and (path, reason) for the others, warning once per bad file."""
    good, bad = [], []
    for p in paths:
        reason = check_image(p)
        if reason is None:
            good.append(p)
        else:
            bad.append((p, reason))
            warnings.warn(f"Skipping unreadable {what} {p}: {reason}", stacklevel=2)
    return good, bad


def seeded_split(n: int, val_fraction: float, seed: int, groups: Sequence[int] | None = None) -> tuple[list, list]:
    """Indices (train, val) of a seeded split; stratified by `groups` (e.g. class ids) when given."""
    if not 0 < val_fraction < 1:
        raise DatasetError(f"data.val_fraction must be between 0 and 1, got {val_fraction}")
    rng = np.random.default_rng(seed)
    if groups is None:
        groups = [0] * n
    train, val = [], []
    groups_arr = np.asarray(groups)
    for g in sorted(set(groups_arr.tolist())):
        idx = np.flatnonzero(groups_arr == g)
        rng.shuffle(idx)
        k = int(round(len(idx) * val_fraction))
        if len(idx) > 1:
            k = min(max(k, 1), len(idx) - 1)
        val += idx[:k].tolist()
        train += idx[k:].tolist()
    return sorted(train), sorted(val)


def default_workers(requested: int | None) -> int:
    """-1/None = as many as there are cores to spare (at most 8); the model should never wait on data."""
    if requested is not None and requested >= 0:
        return requested
    return max(0, min(8, (os.cpu_count() or 1) - 1)) or 0


def seed_augmentation_worker(worker_id: int) -> None:
    """albumentations 2 draws from its own generator, which seed_everything does not reach: each DataLoader worker
    reseeds its copy of the pipeline from its torch seed (the run's seed + worker id), so workers augment
    differently from each other and a seeded run augments the same way twice."""
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None)
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(info.seed % 2**32)


def make_loader(
    dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int | None, collate_fn: Callable | None = None
) -> DataLoader:
    """The DataLoader every task uses: default workers, persistent between epochs, pinned memory on GPUs, the
    last incomplete batch dropped when training (BatchNorm dislikes a batch of one)."""
    workers = default_workers(num_workers)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
        drop_last=shuffle and len(dataset) > batch_size,
        collate_fn=collate_fn,
        worker_init_fn=seed_augmentation_worker,
    )
