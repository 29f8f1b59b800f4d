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
from typing import Any, Literal

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from cvsuite import augment
from cvsuite.data.base import ContractDataModule, content_hash, file_fingerprint
from cvsuite.data.common import DatasetError, drop_unreadable, read_image, seeded_index, seeded_split
from cvsuite.models.backbone import data_config


@dataclass
class RegressionDataConfig:
    root: str | None = None  # folder holding the CSVs (paths in a CSV are relative to its folder)
    train_csv: str = "train.csv"  # header path,<target>[,<target>...]
    val_csv: str | None = None  # default: a seeded split of train_csv
    targets: list[str] | None = None  # which value columns to learn (default: all but path)
    val_fraction: float = 0.2
    val_subset: int | float | None = None  # validations while training score this many (or this share)
    # of the validation samples, seeded; the final evaluation and eval.py score them all
    image_size: int = 224
    batch_size: int = 32
    num_workers: int = -1  # -1 = cores - 1
    augment: Literal["none", "light", "strong"] = "light"  # resize | + horizontal flip | + colour jitter
    train_transforms: dict[str, Any] | None = None  # custom albumentations pipeline (A.to_dict format)
    val_transforms: dict[str, Any] | None = None
    check_images: bool = True  # decode every image once before training; unreadable ones are skipped, named
    val_root: str | None = None  # evaluate: a folder holding its own CSV, scored instead of the validation split
    rederive_split: bool = False  # evaluate/resume: derive the split anew instead of the checkpoint's val files


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
    """Dict samples: ``image`` (3, H, W) float tensor, ``target`` (T,) float tensor, ``path`` str, ``index`` int
    (position in this dataset, so metrics can drop a distributed sampler's duplicates)."""

    seeded_by_sample = True  # takes (index, seed) keys from the training sampler (`cvsuite.data.common.SampleSeeds`)

    def __init__(self, targets: Targets, transform: A.Compose) -> None:
        self.targets = targets
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets.paths)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        i = seeded_index(self, key)
        path = self.targets.paths[i]
        image = self.transform(image=read_image(path))["image"]
        return {"image": image, "target": torch.from_numpy(self.targets.values[i]), "path": str(path), "index": i}


def _subset(t: Targets, idx: list[int]) -> Targets:
    return Targets([t.paths[i] for i in idx], t.values[idx], t.names)


def _concat(a: Targets, b: Targets | None) -> Targets:
    return a if b is None else Targets(a.paths + b.paths, np.concatenate([a.values, b.values]), a.names)


class RegressionDataModule(ContractDataModule):
    """CSVs -> datasets. Contract: target columns, eval pipeline, validation files (and their values)."""

    def __init__(
        self,
        cfg: RegressionDataConfig,
        backbone: str,
        seed: int = 42,
        stored: dict[str, Any] | None = None,
        split: str = "val",
    ) -> None:
        super().__init__(cfg, seed, stored, split)
        self.norm = data_config(backbone, cfg.image_size)
        self.target_names = self.fact("target_names") or cfg.targets
        self.train_set: RegressionDataset | None = None
        self.val_set: RegressionDataset | None = None
        self.skipped: list[tuple[Path, str]] = []

    def contract(self) -> dict[str, Any]:
        return {**super().contract(), "target_names": list(self.target_names or [])}

    def preset_train(self) -> A.Compose:
        return augment.regression_train(self.cfg.augment, self.cfg.image_size, self.norm.mean, self.norm.std)

    def preset_eval(self) -> A.Compose:
        return augment.classification_eval(self.cfg.image_size, self.norm.mean, self.norm.std)

    def _split(self) -> tuple[Targets, Targets]:
        folder = self.eval_folder()
        if folder is not None:
            # ROOT/test (or data.val_root) holds its own CSV, named like data.val_csv (default: the train CSV's name).
            val = read_targets(folder / Path(self.cfg.val_csv or self.cfg.train_csv).name, self.target_names)
            return Targets([], np.zeros((0, len(val.names)), np.float32), val.names), val
        if not self.cfg.root:
            raise DatasetError("data.root is not set: give --data.root ROOT, the folder holding data.train_csv")
        root = Path(self.cfg.root).expanduser()
        train = read_targets(root / self.cfg.train_csv, self.target_names)
        val = read_targets(root / self.cfg.val_csv, train.names) if self.cfg.val_csv else None
        pool = _concat(train, val)
        if val is not None:
            derived = range(len(train.paths), len(pool.paths))
        else:
            _, derived = seeded_split(len(train.paths), self.cfg.val_fraction, self.seed)
        tr, va = self.choose_val(
            list(zip(pool.paths, pool.values.tolist())),
            derived,
            key=lambda item: item[0],
            fingerprint=lambda item: f"{file_fingerprint(item[0])}:{content_hash(item[1])}",
        )
        return _subset(pool, tr), _subset(pool, va)

    def setup(self, stage: str | None = None) -> None:
        if self.val_set is not None:
            return
        train, val = self._split()
        if self.cfg.check_images:
            for t in (train, val):
                good, bad = drop_unreadable(t.paths)
                keep = [i for i, p in enumerate(t.paths) if p in set(good)]
                t.paths, t.values = [t.paths[i] for i in keep], t.values[keep]
                self.skipped += bad
            self.keep_val_files(val.paths)
        if not train.paths and not self.eval_folder_requested() and stage != "validate":
            raise DatasetError(f"{self.cfg.root}: no readable training images left")
        self.target_names = train.names
        self.train_set = RegressionDataset(train, self.train_pipeline())
        self.val_set = RegressionDataset(val, self.eval_pipeline())

    def target_stats(self) -> tuple[list[float], list[float]]:
        """Mean and standard deviation of each training target: the model learns standardised values."""
        v = self.train_set.targets.values
        return v.mean(0).tolist(), np.maximum(v.std(0), 1e-6).tolist()
