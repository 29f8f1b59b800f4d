"""Classification data: ``ROOT/train/<class>/*`` and ``ROOT/val/<class>/*`` folders (a seeded validation split
when there is no ``val/``), or CSV files of ``path,label`` (several labels in one cell separated by spaces, ``;``
or ``|``, or several rows per path, make it multi-label)."""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import albumentations as A
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cvsuite import augment
from cvsuite.data.base import ContractDataModule, file_fingerprint
from cvsuite.data.common import (
    IMAGE_EXTENSIONS,
    DatasetError,
    drop_unreadable,
    list_images,
    make_loader,
    read_image,
    seeded_index,
    seeded_split,
)
from cvsuite.models.backbone import data_config

log = logging.getLogger("cvsuite")


@dataclass
class ClassificationDataConfig:
    root: str | None = None  # folder with train/ (and val/) class folders, or holding the CSVs
    train_csv: str | None = None  # CSV of path,label (paths relative to the CSV's folder); overrides folders
    val_csv: str | None = None
    val_fraction: float = 0.2  # seeded validation split when there is no val/ (or no val_csv)
    val_subset: int | float | None = None  # validations while training score this many (or this share)
    # of the validation samples, seeded; the final evaluation and eval.py score them all
    image_size: int = 224
    batch_size: int = 32
    num_workers: int = -1  # -1 = cores - 1
    augment: Literal["none", "light", "strong"] = "light"
    train_transforms: dict[str, Any] | None = None  # custom albumentations pipeline (A.to_dict format)
    val_transforms: dict[str, Any] | None = None
    multilabel: bool | None = None  # None = multi-label when any image has several labels
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    check_images: bool = True  # decode every image once before training; unreadable ones are skipped, named
    class_names: list[str] | None = None  # fix the class order (default: sorted folder names / labels)
    val_root: str | None = None  # evaluate: a folder of <class>/ images scored instead of the validation split
    rederive_split: bool = False  # evaluate/resume: derive the split anew instead of the checkpoint's val files


@dataclass
class Samples:
    paths: list[Path]
    labels: list[list[int]]  # one or more class ids per image
    class_names: list[str]
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def _split_labels(cell: str) -> list[str]:
    return [t for t in re.split(r"[;|\s]+", cell.strip()) if t]


# Values of a CSV's optional `split` column, and the split each stands for.
CSV_SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def csv_splits(path: Path) -> list[str]:
    """The splits a CSV's ``split`` column names (train, val, test, in that order); [] without the column."""
    rows = _csv_rows(path)
    return [s for s in ("train", "val", "test") if any(split == s for _, _, split, _ in rows)]


def _csv_rows(path: Path) -> list[tuple[int, str, str | None, str]]:
    """(line, path cell, split or None, label cell) of every non-empty row; errors name the line."""
    if not path.is_file():
        raise DatasetError(f"{path}: CSV file not found")
    out = []
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise DatasetError(f"{path}: empty CSV; expected a header 'path,label' and one row per image")
        cols = [h.strip().lower() for h in header]
        if "path" not in cols or "label" not in cols:
            raise DatasetError(f"{path}: header must name columns 'path' and 'label', found {header}")
        ip, il = cols.index("path"), cols.index("label")
        isp = cols.index("split") if "split" in cols else None
        for lineno, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) <= max(ip, il, isp or 0):
                raise DatasetError(f"{path}:{lineno}: expected columns {', '.join(header)}, got {row}")
            split = None
            if isp is not None:
                split = CSV_SPLITS.get(row[isp].strip().lower())
                if split is None:
                    raise DatasetError(
                        f"{path}:{lineno}: split '{row[isp]}' is none of {', '.join(CSV_SPLITS)}; fix the row"
                    )
            out.append((lineno, row[ip], split, row[il]))
    return out


def read_csv(path: Path, class_names: list[str] | None = None, split: str | None = None) -> Samples:
    """Rows of path,label; rows for one path are merged (multi-label). Names the row of any problem. With a
    ``split`` column (train, val/valid/validation, test), only the rows of `split` are read (all when None)."""
    rows: dict[Path, list[str]] = {}
    lines: dict[Path, int] = {}
    for lineno, cell, row_split, label in _csv_rows(path):
        if split is not None and row_split is not None and row_split != split:
            continue
        file = (path.parent / cell.strip()).resolve()
        labels = _split_labels(label)
        if not labels:
            raise DatasetError(f"{path}:{lineno}: no label for {cell}")
        rows.setdefault(file, []).extend(x for x in labels if x not in rows.get(file, []))
        lines.setdefault(file, lineno)
    names = class_names or sorted({x for labels in rows.values() for x in labels})
    index = {n: i for i, n in enumerate(names)}
    paths, labels, skipped = [], [], []
    for file, names_of in rows.items():
        unknown = [x for x in names_of if x not in index]
        if unknown:
            raise DatasetError(
                f"{path}: {file} has label(s) {unknown} that are not classes of this model ({', '.join(names)}). "
                "Fix the CSV or train with these classes."
            )
        if not file.is_file():
            raise DatasetError(
                f"{path}:{lines[file]}: {file} does not exist (paths are relative to the CSV's folder). Fix the path "
                "or delete the row."
            )
        paths.append(file)
        labels.append([index[x] for x in names_of])
    return Samples(paths, labels, names, skipped)


def read_folders(root: Path, class_names: list[str] | None = None) -> Samples:
    """``root/<class>/*`` images; every class folder must hold images."""
    if not root.is_dir():
        raise DatasetError(f"{root}: folder not found; expected one sub-folder of images per class")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DatasetError(f"{root}: no class folders; expected {root}/<class>/*.jpg")
    names = class_names or [p.name for p in folders]
    index = {n: i for i, n in enumerate(names)}
    paths, labels = [], []
    for folder in folders:
        if folder.name not in index:
            raise DatasetError(
                f"{folder}: class '{folder.name}' is not one of this model's classes ({', '.join(names)})"
            )
        images = list_images(folder)
        if not images:
            others = [p.name for p in folder.iterdir()][:3]
            found = f" (found only {others})" if others else ""
            raise DatasetError(
                f"{folder}: class folder holds no images{found}. Add images ({', '.join(IMAGE_EXTENSIONS[:4])}...) "
                "or remove the folder."
            )
        paths += images
        labels += [[index[folder.name]]] * len(images)
    return Samples(paths, labels, names)


@dataclass
class ClassificationSplits:
    """The splits as the data declares them: train always, val and test when it has them. `lists`: a CSV's
    ``split`` column when that decided them; `source`: where they came from otherwise (folders, CSV files)."""

    train: Samples
    val: Samples | None = None
    test: Samples | None = None
    lists: str | None = None
    source: str | None = None

    def line(self) -> str | None:
        """``splits from labels.csv (split column): train 80, val 20, test 10``, ``splits from folders train/,
        val/: ...``; None without a val split (the seeded split says so itself) unless a CSV's column decided."""
        if not self.train.paths or (self.lists is None and (self.val is None or self.source is None)):
            return None
        parts = (("train", self.train), ("val", self.val), ("test", self.test))
        counts = ", ".join(f"{k} {len(v.paths)}" for k, v in parts if v is not None)
        held = "" if self.val is not None else " (no val rows: a seeded data.val_fraction of train is held out)"
        return f"splits from {self.lists or self.source}: {counts}{held}"


def read_samples(cfg: ClassificationDataConfig, class_names: list[str] | None = None) -> ClassificationSplits:
    """Every split the data declares: CSVs (a ``split`` column in train_csv decides train/val/test unless
    val_csv is given), or ROOT/train/ (and val/) class folders."""
    root = Path(cfg.root).expanduser() if cfg.root else None
    if cfg.train_csv:
        base = root or Path(".")
        path = base / cfg.train_csv
        train = read_csv(path, class_names, "train")
        if cfg.val_csv:
            val = read_csv(base / cfg.val_csv, train.class_names, "val")
            return ClassificationSplits(train, val, source=f"{cfg.train_csv}, {cfg.val_csv}")
        present = csv_splits(path)
        if not present:
            return ClassificationSplits(train)
        if not train.paths:
            raise DatasetError(f"{path}: the split column names no train rows; mark the training rows 'train'")
        val = read_csv(path, train.class_names, "val") if "val" in present else None
        test = read_csv(path, train.class_names, "test") if "test" in present else None
        return ClassificationSplits(train, val, test, lists=f"{cfg.train_csv} (split column)")
    if root is None:
        raise DatasetError("data.root is not set: give --data.root ROOT with ROOT/train/<class>/ folders")
    if not root.is_dir():
        raise DatasetError(f"data.root {root} does not exist")
    if not (root / "train").is_dir() and (root / "val").is_dir() and class_names:
        # Evaluating a checkpoint on a ROOT that holds only val/: its classes are known already.
        return ClassificationSplits(Samples([], [], list(class_names)), read_folders(root / "val", class_names))
    if not (root / "train").is_dir():
        raise DatasetError(
            f"{root}: no train/ folder. Expected {root}/train/<class>/*.jpg (and optionally {root}/val/), "
            "or set data.train_csv"
        )
    train = read_folders(root / "train", class_names)
    val = read_folders(root / "val", train.class_names) if (root / "val").is_dir() else None
    return ClassificationSplits(train, val, source="folders train/, val/")


class ImageClassificationDataset(Dataset):
    """Dict samples: ``image`` (3, H, W) float tensor, ``label`` int (or (C,) multi-hot float), ``path`` str,
    ``index`` int (position in this dataset, so metrics can drop duplicates)."""

    seeded_by_sample = True  # takes (index, seed) keys from the training sampler (`cvsuite.data.common.SampleSeeds`)

    def __init__(self, samples: Samples, transform: A.Compose, multilabel: bool) -> None:
        self.samples = samples
        self.transform = transform
        self.multilabel = multilabel
        self.num_classes = len(samples.class_names)

    def __len__(self) -> int:
        return len(self.samples.paths)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        i = seeded_index(self, key)
        path = self.samples.paths[i]
        image = self.transform(image=read_image(path))["image"]
        return {"image": image, "label": self.target(i), "path": str(path), "index": i}

    def target(self, i: int) -> int | torch.Tensor:
        labels = self.samples.labels[i]
        if not self.multilabel:
            return labels[0]
        target = torch.zeros(self.num_classes)
        target[labels] = 1.0
        return target


class CachedFeatures(Dataset):
    """The training set as (pooled backbone features, label) pairs: what a frozen epoch with
    ``finetune.cache_features`` trains the head on, without reading an image."""

    def __init__(self, features: torch.Tensor, images: ImageClassificationDataset) -> None:
        self.features = features
        self.images = images

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"features": self.features[i], "label": self.images.target(i), "index": i}


def _subset(samples: Samples, idx: list[int]) -> Samples:
    return Samples([samples.paths[i] for i in idx], [samples.labels[i] for i in idx], samples.class_names)


def _concat(a: Samples, b: Samples | None) -> Samples:
    if b is None:
        return a
    return Samples(a.paths + b.paths, a.labels + b.labels, a.class_names, a.skipped + b.skipped)


class ClassificationDataModule(ContractDataModule):
    """Folders or CSVs -> datasets. Contract: class names, label mode, eval pipeline, validation files."""

    def __init__(
        self,
        cfg: ClassificationDataConfig,
        backbone: str,
        seed: int = 42,
        stored: dict[str, Any] | None = None,
        split: str = "val",
    ) -> None:
        super().__init__(cfg, seed, stored, split)
        self.norm = data_config(backbone, cfg.image_size)
        self.class_names = self.fact("class_names") or cfg.class_names
        self.multilabel = self.fact("multilabel", cfg.multilabel)
        self.train_set: ImageClassificationDataset | None = None
        self.val_set: ImageClassificationDataset | None = None
        self.skipped: list[tuple[Path, str]] = []
        self._image_loader: DataLoader | None = None
        self._on_disk: ClassificationSplits | None = None

    def contract(self) -> dict[str, Any]:
        return {**super().contract(), "multilabel": bool(self.multilabel)}

    def preset_train(self) -> A.Compose:
        if self.cfg.augment == "none":
            # No random transform: exactly what validation and predict see (resize + centre crop), which is also
            # what finetune.cache_features computes its features on.
            return self.preset_eval()
        return augment.classification_train(self.cfg.augment, self.cfg.image_size, self.norm.mean, self.norm.std)

    def preset_eval(self) -> A.Compose:
        return augment.classification_eval(self.cfg.image_size, self.norm.mean, self.norm.std, self.norm.crop_pct)

    # ---- data --------------------------------------------------------------------------------------------
    def on_disk(self) -> ClassificationSplits:
        """The splits as the data declares them (read once)."""
        if self._on_disk is None:
            self._on_disk = read_samples(self.cfg, self.class_names)
        return self._on_disk

    def has_test_list(self) -> bool:
        return self.on_disk().test is not None

    def _split(self) -> tuple[Samples, Samples]:
        folder = self.eval_folder()
        if folder is not None:
            if not self.class_names:
                raise DatasetError("--split test / data.val_root evaluate a trained model: give a checkpoint")
            val = read_folders(folder, self.class_names)
            return Samples([], [], val.class_names), val
        disk = self.on_disk()
        if disk.lists:
            self.split_lists = disk.lists
            log.info("%s", disk.line())
        if self.split == "test":  # the CSV's test rows (eval_folder found no ROOT/test/ to use)
            if not self.class_names:
                raise DatasetError("--split test evaluates a trained model: give a checkpoint")
            return Samples([], [], disk.test.class_names), disk.test
        train, val = disk.train, disk.val
        pool = _concat(_concat(train, val), disk.test)
        n_val = len(val.paths) if val is not None else 0
        if val is not None:
            derived = range(len(train.paths), len(train.paths) + n_val)
        else:
            _, derived = seeded_split(
                len(train.paths), self.cfg.val_fraction, self.seed, [lab[0] for lab in train.labels]
            )
        tr, va = self.choose_val(
            list(zip(pool.paths, pool.labels)),
            derived,
            key=lambda item: item[0],
            fingerprint=lambda item: f"{file_fingerprint(item[0])}:{sorted(item[1])}",
            never_train=range(len(train.paths) + n_val, len(pool.paths)),  # the CSV's test rows
        )
        return _subset(pool, tr), _subset(pool, va)

    def setup(self, stage: str | None = None) -> None:
        if self.val_set is not None:
            return
        train, val = self._split()
        if self.cfg.check_images:
            for samples in (train, val):
                good, bad = drop_unreadable(samples.paths)
                keep = set(good)
                samples.labels = [lab for p, lab in zip(samples.paths, samples.labels) if p in keep]
                samples.paths = good
                self.skipped += bad
            self.keep_val_files(val.paths)
        if not train.paths and not self.eval_folder_requested() and stage != "validate":
            raise DatasetError(f"{self.cfg.root}: no readable training images left")
        self.class_names = train.class_names
        if len(self.class_names) < 2 and not self.cfg.multilabel:
            raise DatasetError(
                f"{self.cfg.root}: found one class ({', '.join(self.class_names)}); classification needs at least "
                "two class folders (or labels). Add the other classes' images."
            )
        if self.multilabel is None:
            self.multilabel = any(len(lab) > 1 for lab in train.labels + val.labels)
        self.train_set = ImageClassificationDataset(train, self.train_pipeline(), self.multilabel)
        self.val_set = ImageClassificationDataset(val, self.eval_pipeline(), self.multilabel)

    def train_dataloader(self) -> DataLoader:
        """Images, or in a frozen epoch with ``finetune.cache_features`` their cached backbone features: the same
        length, batch size and shuffling, so the schedule is unchanged. (The Trainer reloads loaders every epoch
        in that mode; the image loader is built once and kept, with its workers.)"""
        module = self.trainer.lightning_module if self.trainer is not None else None
        if module is None or not module.finetune_cfg.get("cache_features"):
            return super().train_dataloader()
        if module.uses_cached_features():
            # Un-augmented, and preprocessed exactly as validation and predict see images (resize + centre crop),
            # so the head learns on the features it is later scored and used on.
            plain = ImageClassificationDataset(self.train_set.samples, self.eval_pipeline(), self.multilabel)
            features = CachedFeatures(module.train_features(plain, self.cfg.batch_size), self.train_set)
            return self.at_epoch(make_loader(features, self.cfg.batch_size, train=True, num_workers=0, seed=self.seed))
        if self._image_loader is None:
            self._image_loader = super().train_dataloader()
        return self._image_loader

    def class_counts(self) -> np.ndarray:
        counts = np.zeros(len(self.class_names))
        for labels in self.train_set.samples.labels:
            counts[labels] += 1
        return counts
