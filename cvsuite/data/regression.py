"""Image regression data: CSV files of ``path,value`` (or ``path,a,b,...``: one column per numeric target) with a
header row; paths are relative to the CSV's folder. A seeded validation split when there is no ``val_csv``.

The "light" preset for regression flips only: a random crop would change targets measured on the whole image
(counts, areas, brightness); use a custom pipeline when your target survives crops.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations as A
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cvsuite import transforms as T
from cvsuite.data.common import DatasetError, drop_unreadable, make_loader, read_image, seeded_split
from cvsuite.models.backbone import data_config


@dataclass
class RegressionDataConfig:
    root: str | None = None  # folder holding the CSVs (paths in a CSV are relative to its folder)
    train_csv: str = "train.csv"  # header path,<target>[,<target>...]
    val_csv: str | None = None  # default: a seeded split of train_csv
    targets: list[str] | None = None  # which value columns to learn (default: all but path)
    val_fraction: float = 0.2
    image_size: int = 224
    batch_size: int = 32
    num_workers: int = -1  # -1 = cores - 1
    augment: str = "light"  # none (resize) | light (resize + horizontal flip) | strong (light + colour jitter)
    train_transforms: dict[str, Any] | None = None  # custom albumentations pipeline (A.to_dict format)
    val_transforms: dict[str, Any] | None = None
    check_images: bool = True  # decode every image once before training; unreadable ones are skipped, named


@dataclass
class Targets:
    paths: list[Path]
    values: np.ndarray  # (N, T) float32
    names: list[str]


def read_targets(path: Path, names: list[str] | None = None) -> Targets:
    """A ``path,value[,value...]`` CSV with a header; every value must be a finite number."""
    if not path.is_file():
        raise DatasetError(f"{path}: CSV not found (data.train_csv / data.val_csv are relative to data.root)")
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows or len(rows[0]) < 2 or rows[0][0].strip().lower() not in ("path", "image", "file", "filename"):
        raise DatasetError(f"{path}: the first row must be a header like 'path,value' (path column first)")
    header = [h.strip() for h in rows[0]]
    names = names or header[1:]
    missing = [n for n in names if n not in header[1:]]
    if missing:
        raise DatasetError(f"{path}: no column(s) {', '.join(missing)}; columns are {', '.join(header[1:])}")
    cols = [header.index(n) for n in names]
    base = path.parent
    paths, values = [], []
    for line, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) != len(header):
            raise DatasetError(f"{path}:{line}: {len(row)} cells for {len(header)} columns")
        try:
            v = [float(row[c]) for c in cols]
        except ValueError as err:
            raise DatasetError(f"{path}:{line}: not a number ({err})") from err
        if not all(math.isfinite(x) for x in v):
            raise DatasetError(f"{path}:{line}: values must be finite, got {v}")
        image = base / row[0].strip()
        if not image.is_file():
            raise DatasetError(f"{path}:{line}: image {image} not found")
        paths.append(image)
        values.append(v)
    if not paths:
        raise DatasetError(f"{path}: no rows")
    return Targets(paths, np.asarray(values, dtype=np.float32), names)


class RegressionDataset(Dataset):
    """Dict samples: ``image`` (3, H, W) float tensor, ``target`` (T,) float tensor, ``path`` str."""

    def __init__(self, targets: Targets, transform: A.Compose) -> None:
        self.targets = targets
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path = self.targets.paths[i]
        image = self.transform(image=read_image(path))["image"]
        return {"image": image, "target": torch.from_numpy(self.targets.values[i]), "path": str(path)}


def _subset(t: Targets, idx: list[int]) -> Targets:
    return Targets([t.paths[i] for i in idx], t.values[idx], t.names)


def train_pipeline(preset: str, size: int, mean, std) -> A.Compose:
    if preset not in T.PRESETS:
        raise ValueError(f"data.augment: unknown preset '{preset}'. Choose one of {', '.join(T.PRESETS)}")
    ops: list[A.BasicTransform] = [A.Resize(size, size)]
    if preset != "none":
        ops.append(A.HorizontalFlip())
    if preset == "strong":
        ops.append(A.ColorJitter(0.2, 0.2, 0.2, 0.02, p=0.5))
    return A.Compose(ops + T.normalize(mean, std))


class RegressionDataModule(L.LightningDataModule):
    def __init__(
        self,
        cfg: RegressionDataConfig,
        backbone: str,
        seed: int = 42,
        target_names: list[str] | None = None,
        eval_pipeline: dict[str, Any] | None = None,
    ) -> None:
        """Args beyond the config come from a checkpoint: its target columns and preprocessing win."""
        super().__init__()
        self.cfg = cfg
        self.seed = seed
        self.norm = data_config(backbone, cfg.image_size)
        self.target_names = target_names or cfg.targets
        self._eval_pipeline = eval_pipeline
        self.train_set: RegressionDataset | None = None
        self.val_set: RegressionDataset | None = None
        self.skipped: list[tuple[Path, str]] = []

    def train_pipeline(self) -> A.Compose:
        custom = T.from_config(self.cfg.train_transforms, "data.train_transforms")
        return custom or train_pipeline(self.cfg.augment, self.cfg.image_size, self.norm.mean, self.norm.std)

    def eval_pipeline(self) -> A.Compose:
        if self._eval_pipeline:
            return A.from_dict(self._eval_pipeline)
        custom = T.from_config(self.cfg.val_transforms, "data.val_transforms")
        return custom or T.eval_transforms(self.cfg.image_size, self.norm.mean, self.norm.std)

    def _read(self) -> tuple[Targets, Targets]:
        if not self.cfg.root:
            raise DatasetError("data.root is not set: give --data.root ROOT, the folder holding data.train_csv")
        root = Path(self.cfg.root).expanduser()
        train = read_targets(root / self.cfg.train_csv, self.target_names)
        if self.cfg.val_csv:
            return train, read_targets(root / self.cfg.val_csv, train.names)
        tr, va = seeded_split(len(train.paths), self.cfg.val_fraction, self.seed)
        return _subset(train, tr), _subset(train, va)

    def setup(self, stage: str | None = None) -> None:
        if self.val_set is not None:
            return
        train, val = self._read()
        if self.cfg.check_images:
            for t in (train, val):
                good, bad = drop_unreadable(t.paths)
                keep = [i for i, p in enumerate(t.paths) if p in set(good)]
                t.paths, t.values = [t.paths[i] for i in keep], t.values[keep]
                self.skipped += bad
        if not train.paths:
            raise DatasetError(f"{self.cfg.root}: no readable training images left")
        self.target_names = train.names
        pipeline = self.train_pipeline()
        pipeline.set_random_seed(self.seed)
        self.train_set = RegressionDataset(train, pipeline)
        self.val_set = RegressionDataset(val, self.eval_pipeline())

    def target_stats(self) -> tuple[list[float], list[float]]:
        """Mean and standard deviation of each training target: the model learns standardised values."""
        v = self.train_set.targets.values
        return v.mean(0).tolist(), np.maximum(v.std(0), 1e-6).tolist()

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return make_loader(dataset, self.cfg.batch_size, shuffle, self.cfg.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)
