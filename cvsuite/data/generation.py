"""GAN data: a folder of images at any depth (``ROOT/**/*.png``), or ``ROOT/<class>/**`` for the class-conditional
GAN. Every image is resized (shorter side) and centre-cropped to ``data.image_size`` and scaled to [-1, 1].

Training batches add horizontal flips; validation yields every real image once, unflipped: it is the reference
set of FID/KID. A few-shot set is far smaller than a useful epoch, so an "epoch" is ``images_per_epoch`` images
drawn by reshuffling the set as often as needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cvsuite import augment
from cvsuite.data.base import ContractDataModule, file_fingerprint
from cvsuite.data.classification import read_folders
from cvsuite.data.common import DatasetError, drop_unreadable, list_images, read_image

# Pixels in [-1, 1]: the generator's tanh range. The discriminator converts to its backbone's own normalisation.
GAN_MEAN = GAN_STD = (0.5, 0.5, 0.5)
MIN_REAL_IMAGES = 2  # FID's covariance and KID's subsets need at least two real images


@dataclass
class GenerationDataConfig:
    root: str | None = None  # folder of images (searched recursively); ROOT/<class>/ when conditional
    image_size: int = 64  # square side of generated images: a power of two, 64 | 128 | 256
    batch_size: int = 32
    num_workers: int = 0  # images are cached after the first read, so worker processes only add overhead
    conditional: bool = False  # class-conditional GAN: sub-folders of root are the classes
    class_names: list[str] | None = None  # fix the class order (default: sorted folder names)
    hflip: bool = True  # random horizontal flips of real images (turn off for text, digits, asymmetric objects)
    images_per_epoch: int | None = 3200  # images per training epoch, reshuffling the set; null = one pass
    max_real_images: int | None = None  # cap on the real images used as the FID/KID reference (seeded subset)
    cache: bool = True  # decode and resize every image once and keep it in memory (size^2 * 3 bytes each)
    check_images: bool = True  # decode every image once before training; unreadable ones are skipped, named
    val_root: str | None = None  # evaluate: a folder of real images used as the FID/KID reference instead
    rederive_split: bool = False  # evaluate: choose the reference images anew instead of the checkpoint's list


class ImageFolderGAN(Dataset):
    """Dict samples: ``image`` (3, S, S) float in [-1, 1], ``label`` int (0 when unconditional), ``path`` str,
    ``index`` int (position in this dataset)."""

    def __init__(self, paths: list[Path], labels: list[int], size: int, hflip: bool, cache: bool) -> None:
        self.paths, self.labels = paths, labels
        self.resize = augment.generation_resize(size)
        self.finish = augment.generation_train(hflip, GAN_MEAN, GAN_STD)  # seeded per worker by make_loader
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int) -> np.ndarray:
        """HWC uint8 RGB at the training size."""
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        image = self.resize(image=read_image(self.paths[i]))["image"]
        if self._cache is not None:
            self._cache[i] = image
        return image

    def __getitem__(self, i: int) -> dict[str, Any]:
        image = self.finish(image=self.load(i))["image"]
        return {"image": image, "label": self.labels[i], "path": str(self.paths[i]), "index": i}


class RepeatSampler(Sampler[int]):
    """`num_samples` indices: whole reshuffled passes over the set, the last one cut short. Unlike sampling with
    replacement, every image is seen equally often. Lightning calls `set_epoch`, so the order of epoch k is the
    same in a resumed run as in an uninterrupted one."""

    def __init__(self, size: int, num_samples: int, seed: int) -> None:
        self.size, self.num_samples, self.seed, self.epoch = size, num_samples, seed, 0

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        passes = math.ceil(self.num_samples / self.size)
        order = torch.cat([torch.randperm(self.size, generator=g) for _ in range(passes)])[: self.num_samples]
        return iter(order.tolist())


class GenerationDataModule(ContractDataModule):
    """Image folder -> training set and FID/KID reference set. Contract: class names (conditional), the
    reference images."""

    def __init__(
        self, cfg: GenerationDataConfig, seed: int = 42, stored: dict[str, Any] | None = None, split: str = "val"
    ) -> None:
        super().__init__(cfg, seed, stored, split)
        self.class_names = self.fact("class_names") or cfg.class_names
        self.train_set: ImageFolderGAN | None = None
        self.val_set: ImageFolderGAN | None = None
        self.skipped: list[tuple[Path, str]] = []

    def contract(self) -> dict[str, Any]:
        # Real images are only resized: there is no eval pipeline to store.
        return {"class_names": list(self.class_names or []) if self.cfg.conditional else []}

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.cfg.conditional and self.class_names else 0

    def _read(self, folder: Path | None = None) -> tuple[list[Path], list[int]]:
        cfg = self.cfg
        if folder is None:
            if not cfg.root:
                raise DatasetError("data.root is not set: give --data.root FOLDER holding the training images")
            folder = Path(cfg.root).expanduser()
        if not folder.is_dir():
            raise DatasetError(f"data.root: {folder} is not a folder")
        if cfg.conditional:
            samples = read_folders(folder, self.class_names or None)
            self.class_names = samples.class_names
            return samples.paths, [lab[0] for lab in samples.labels]
        paths = list_images(folder)
        if not paths:
            raise DatasetError(f"{folder}: no images found (searched sub-folders too for .jpg/.png/...)")
        return paths, [0] * len(paths)

    def setup(self, stage: str | None = None) -> None:
        if self.val_set is not None:
            return
        cfg = self.cfg
        folder = self.eval_folder()
        paths, labels = self._read(folder)
        if cfg.check_images:
            good, self.skipped = drop_unreadable(paths)
            keep = set(good)
            labels = [lab for p, lab in zip(paths, labels) if p in keep]
            paths = good
        if len(paths) < MIN_REAL_IMAGES:
            raise DatasetError(
                f"{folder or cfg.root}: {len(paths)} readable image(s); a GAN needs at least {MIN_REAL_IMAGES} (FID "
                "and KID compare sets of images; a few dozen make a usable few-shot set). Add images."
            )
        self.train_set = ImageFolderGAN(paths, labels, cfg.image_size, cfg.hflip, cfg.cache)
        derived = range(len(paths))
        if cfg.max_real_images and cfg.max_real_images < len(paths):
            derived = sorted(np.random.default_rng(self.seed).choice(len(paths), cfg.max_real_images, replace=False))
        if folder is None:
            # The reference set is a subset of the training images: only its choice is stored.
            _, ref = self.choose_val(paths, derived, key=lambda p: p, fingerprint=file_fingerprint)
        else:
            ref = list(derived)
        self.val_set = ImageFolderGAN([paths[i] for i in ref], [labels[i] for i in ref], cfg.image_size, False, False)
        if cfg.cache and len(ref) == len(paths):
            self.val_set._cache = self.train_set._cache  # same images, same resize: decode them once

    def train_dataloader(self) -> DataLoader:
        n = len(self.train_set)
        sampler = RepeatSampler(n, self.cfg.images_per_epoch or n, self.seed)
        return self.loader(self.train_set, train=True, sampler=sampler)
