"""Detection data. The splits come from the first layout found in ``data.root`` (ROOT), the data's own first:

1. a YOLO ``data.yaml`` declaring ``train:``/``val:``/``test:`` (Ultralytics, Roboflow; `cvsuite.data.splits`);
2. ``ROOT/train/`` and ``ROOT/val/`` split folders (``ROOT/test/`` for ``--split test``);
3. id lists ``splits/{train,val,test}.txt`` or ``ImageSets/Main/*.txt`` beside ``ROOT/images`` + annotations;
4. ROOT itself as one split (``ROOT/images`` + ``ROOT/annotations``).

Without a val split a seeded ``data.val_fraction`` of train is validation; a test split is never trained on. Each
split folder is in any of three formats, detected from what is there or set with ``data.format``:

- ``coco``: ``images/`` + ``annotations.json``;
- ``voc``:  ``images/`` + ``annotations/*.xml`` (or VOC's ``JPEGImages/`` + ``Annotations/``; class names from
  the XML; ``difficult`` objects are ignored by training and evaluation unless ``data.use_difficult``);
- ``yolo``: ``images/`` + ``labels/*.txt`` (``class cx cy w h``, normalised) + a class-names file.

The readers and writers are in `cvsuite.data.formats`; this module turns their `ImageRecord`s into datasets.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from cvsuite import augment
from cvsuite.config import ConfigError
from cvsuite.data.base import ContractDataModule, content_hash, file_fingerprint
from cvsuite.data.common import DatasetError, drop_unreadable, read_image, seeded_index, seeded_split
from cvsuite.data.formats import ImageRecord, Split, image_dir, read_split
from cvsuite.data.formats.yolo import read_yolo_pairs
from cvsuite.data.splits import (
    SplitLists,
    find_data_yaml,
    find_id_lists,
    read_data_yaml,
    read_id_lists,
    yolo_label_path,
)
from cvsuite.models.backbone import data_config

log = logging.getLogger("cvsuite")


@dataclass
class DetectionDataConfig:
    root: str | None = None  # ROOT with data.yaml, train/ (and val/), split lists, or one split folder (seeded val)
    format: Literal["coco", "voc", "yolo"] | None = None  # null = detected from the files in each split
    names_file: str | None = None  # YOLO class names (one per line), or a data.yaml declaring the splits too;
    # null = looked for (ROOT/data.yaml with train: declares the splits)
    val_fraction: float = 0.2  # seeded validation split when there is no val/
    val_subset: int | float | None = None  # validations while training score this many (or this share)
    # of the validation samples, seeded; the final evaluation and eval.py score them all
    image_size: int = 512  # longest side fed to the model (a multiple of 32)
    batch_size: int = 8
    num_workers: int = -1  # -1 = cores - 1
    augment: Literal["none", "light", "strong"] = "light"  # see cvsuite/augment.py
    train_transforms: dict[str, Any] | None = None  # custom albumentations pipeline (A.to_dict format)
    val_transforms: dict[str, Any] | None = None  # must only resize (no crop/pad): boxes are mapped back by scale
    min_visibility: float = 0.3  # a box cut by a crop is kept when this fraction of its area is still in view
    min_box_size: float = 1.0  # boxes narrower or lower than this (pixels) are degenerate and dropped
    use_difficult: bool = False  # VOC: train and evaluate on `difficult` objects instead of ignoring them
    check_images: bool = True  # decode every image once before training; unreadable ones are skipped, named
    class_names: list[str] | None = None  # fix the class order (default: from the annotations)
    val_root: str | None = None  # evaluate: a split folder (images/ + annotations) scored instead of validation
    rederive_split: bool = False  # evaluate/resume: derive the split anew instead of the checkpoint's val files


# ---- dataset -------------------------------------------------------------------------------------------------
class DetectionDataset(Dataset):
    """Dict samples:

    - ``image``: (3, H, W) float, normalised; H, W as the pipeline makes them (may differ between images);
    - ``target``: ``boxes`` (N, 4) float xyxy pixels of ``image``, ``labels`` (N,) int64 — what the loss sees
      (ignored objects left out);
    - ``gt``: ``boxes``/``labels``/``ignore``/``area`` in pixels of the original image — what the metric sees
      (``area``: the COCO annotation's segmentation area when it has one, else the box's);
    - ``orig_size``: (height, width) of the original image; ``image_id``: int; ``path``: str; ``index``: int
      (position in this dataset).
    """

    seeded_by_sample = True  # takes (index, seed) keys from the training sampler (`cvsuite.data.common.SampleSeeds`)

    def __init__(self, records: list[ImageRecord], transform: A.Compose) -> None:
        self.records = records
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        i = seeded_index(self, key)
        r = self.records[i]
        image = read_image(r.path)
        if image.shape[:2] != (r.height, r.width):
            raise DatasetError(
                f"{r.path}: image is {image.shape[1]}x{image.shape[0]} but was {r.width}x{r.height} when the "
                "annotations were read; re-run so sizes are read again"
            )
        train = ~r.ignore
        out = self.transform(image=image, bboxes=r.boxes[train], labels=r.labels[train])
        boxes = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
        return {
            "image": out["image"],
            "target": {
                "boxes": torch.from_numpy(boxes),
                "labels": torch.as_tensor(np.asarray(out["labels"], np.int64).reshape(-1)),
            },
            "gt": {
                "boxes": torch.from_numpy(r.boxes),
                "labels": torch.from_numpy(r.labels),
                "ignore": torch.from_numpy(r.ignore),
                "area": torch.from_numpy(object_areas(r)),
            },
            "orig_size": (r.height, r.width),
            "image_id": r.image_id,
            "path": str(r.path),
            "index": i,
        }


def object_areas(r: ImageRecord) -> np.ndarray:
    """(N,) area of each object for COCO's small/medium/large: the annotation's (segmentation) area where it has
    one, else the box's."""
    boxes = (r.boxes[:, 2] - r.boxes[:, 0]) * (r.boxes[:, 3] - r.boxes[:, 1])
    if r.areas is None:
        return boxes.astype(np.float32)
    return np.where(np.isfinite(r.areas), r.areas, boxes).astype(np.float32)


def collate(samples: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Lists, not stacked tensors: images may differ in size and in number of boxes; torchvision's detectors
    take a list of images and pad them into one batch themselves."""
    return {key: [s[key] for s in samples] for key in samples[0]}


def record_fingerprint(r: ImageRecord) -> str:
    """The image file and its boxes, labels and ignore flags: a changed annotation is a changed sample."""
    return f"{file_fingerprint(r.path)}:{content_hash(r.boxes, r.labels, r.ignore)}"


@dataclass
class OnDisk:
    """A detection data set's splits as it declares them: train always, val and test when the data has them;
    `lists` when they come from the data's own split lists (data.yaml, splits/*.txt), `folders` the split
    folders read (for the doctor's orphan-label check)."""

    train: Split
    val: Split | None = None
    test: Split | None = None
    lists: SplitLists | None = None
    folders: list[Path] = field(default_factory=list)

    def splits(self) -> dict[str, Split]:
        return {k: v for k, v in (("train", self.train), ("val", self.val), ("test", self.test)) if v is not None}

    def line(self) -> str | None:
        """``splits from data.yaml: train 142, val 41, test 20`` for split lists, ``splits from folders train/,
        val/: ...`` for split folders; None without a val split (the seeded split says so itself)."""
        counts = {k: len(v.records) for k, v in self.splits().items()}
        if self.lists is not None:
            return self.lists.line(counts)
        if self.val is None or not self.train.records:
            return None
        return f"splits from folders {', '.join(f'{k}/' for k in counts)}: " + ", ".join(
            f"{k} {n}" for k, n in counts.items()
        )


def read_args(cfg: DetectionDataConfig) -> dict[str, Any]:
    return {
        "fmt": cfg.format,
        "min_size": cfg.min_box_size,
        "use_difficult": cfg.use_difficult,
        "root": Path(cfg.root).expanduser() if cfg.root else None,
        "names_file": cfg.names_file,
    }


def declared_lists(root: Path, names_file: str | None, fmt: str | None = None) -> SplitLists | None:
    """The data's own split lists, if it has them: a data.yaml declaring train (first: Ultralytics and Roboflow
    exports keep images/{train,valid,test} or train/, valid/, test/ folders beside it), else, when ROOT has no
    train/ folder, splits/*.txt or ImageSets/Main/*.txt id lists of the images in ROOT/images."""
    if fmt in (None, "yolo"):
        data_yaml = find_data_yaml(root, names_file)
        if data_yaml is not None:
            return read_data_yaml(data_yaml)
    if (root / "train").is_dir() or not image_dir(root).is_dir():
        return None
    folder = find_id_lists(root)
    return read_id_lists(folder, image_dir(root), root) if folder is not None else None


def read_splits(cfg: DetectionDataConfig, class_names: list[str] | None = None) -> OnDisk:
    """Every split the data declares, in this order of layouts: a data.yaml with train:, ROOT/train/ (and val/)
    folders, id lists (splits/, ImageSets/Main/) beside ROOT/images, ROOT as one split (no val: seeded later)."""
    if not cfg.root:
        raise DatasetError("data.root is not set: give --data.root ROOT with ROOT/train/ (and ROOT/val/)")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"data.root: {root} is not a folder")
    kw = read_args(cfg)
    lists = declared_lists(root, cfg.names_file, cfg.format)
    if lists is not None and lists.class_names is not None:  # data.yaml: YOLO labels of the listed images
        names = list(class_names) if class_names else lists.class_names
        splits = {
            s: read_yolo_pairs(
                [(p, label if (label := yolo_label_path(p)).is_file() else None) for p in files],
                names,
                lists.class_names,
                str(lists.where),
                cfg.min_box_size,
                lists.where.parent,
            )
            for s, files in lists.files.items()
        }
        return OnDisk(splits["train"], splits.get("val"), splits.get("test"), lists)
    if lists is not None:  # id lists: ROOT read as one split, its records shared out
        whole = read_split(root, class_names=class_names, **kw)
        by_path = {r.path.resolve(): r for r in whole.records}
        splits = {}
        for split, files in lists.files.items():
            missing = [p for p in files if p.resolve() not in by_path]
            if missing:
                raise DatasetError(
                    f"{lists.where / (split + '.txt')}: {len(missing)} listed image(s) have no annotation entry in "
                    f"{root} ({whole.format}), e.g. {missing[0].name}. Add them to the annotations or delete the lines."
                )
            records = [by_path[p.resolve()] for p in files]
            splits[split] = Split(records, whole.class_names, whole.category_ids, whole.format, whole.skipped)
        return OnDisk(splits["train"], splits.get("val"), splits.get("test"), lists, [root])
    if not (root / "train").is_dir() and (root / "val").is_dir() and class_names:
        # Evaluating a checkpoint on a ROOT that holds only val/: its classes are known already.
        val = read_split(root / "val", class_names=class_names, **kw)
        return OnDisk(Split([], val.class_names, val.category_ids, val.format), val, folders=[root / "val"])
    if (root / "train").is_dir():
        train = read_split(root / "train", class_names=class_names, **kw)
        if (root / "val").is_dir():
            val = read_split(root / "val", class_names=train.class_names, **kw)
            return OnDisk(train, val, folders=[root / "train", root / "val"])
        return OnDisk(train, folders=[root / "train"])
    if image_dir(root).is_dir():
        log.info(
            "%s has no train/ folder nor split lists; using it as one split with a seeded %.0f%% validation split",
            root,
            100 * cfg.val_fraction,
        )
        return OnDisk(read_split(root, class_names=class_names, **kw), folders=[root])
    raise DatasetError(
        f"{root}: expected {root}/train/ (and optionally {root}/val/), each with images/ and annotations "
        "(annotations.json, annotations/*.xml or labels/*.txt), a data.yaml declaring the splits, or a single split "
        "with images/ here (split lists in splits/{train,val,test}.txt)"
    )


class DetectionDataModule(ContractDataModule):
    """Any format -> datasets. Contract: class names, COCO category ids, eval pipeline, validation files."""

    collate_fn = staticmethod(collate)

    def __init__(
        self,
        cfg: DetectionDataConfig,
        backbone: str,
        seed: int = 42,
        stored: dict[str, Any] | None = None,
        split: str = "val",
    ) -> None:
        super().__init__(cfg, seed, stored, split)
        if cfg.image_size % 32:
            raise ConfigError(
                f"data.image_size must be a multiple of 32 (the deepest feature stride), got {cfg.image_size}"
            )
        self.norm = data_config(backbone, cfg.image_size)
        self.class_names = list(self.fact("class_names") or cfg.class_names or []) or None
        self.category_ids: list[int] | None = self.fact("category_ids")
        self.train_set: DetectionDataset | None = None
        self.val_set: DetectionDataset | None = None
        self.skipped: list[tuple[Path, str]] = []
        self._on_disk: OnDisk | None = None

    def contract(self) -> dict[str, Any]:
        return {**super().contract(), "category_ids": list(self.category_ids or [])}

    def preset_train(self) -> A.Compose:
        cfg = self.cfg
        return augment.detection_train(
            cfg.augment, cfg.image_size, self.norm.mean, self.norm.std, cfg.min_visibility, cfg.min_box_size
        )

    def preset_eval(self) -> A.Compose:
        return augment.detection_eval(self.cfg.image_size, self.norm.mean, self.norm.std)

    def adapt_train(self, custom: A.Compose) -> A.Compose:
        return augment.with_boxes(custom, augment.bbox_params(self.cfg.min_visibility, self.cfg.min_box_size))

    def adapt_eval(self, custom: A.Compose) -> A.Compose:
        return augment.with_boxes(custom, augment.bbox_params(0.0, 0.0))

    # ---- data --------------------------------------------------------------------------------------------
    def on_disk(self) -> OnDisk:
        """The splits as the data declares them (read once)."""
        if self._on_disk is None:
            self._on_disk = read_splits(self.cfg, self.class_names)
        return self._on_disk

    def has_test_list(self) -> bool:
        return self.on_disk().lists is not None and self.on_disk().test is not None

    def _read_args(self) -> dict[str, Any]:
        return read_args(self.cfg)

    def _split(self) -> tuple[Split | None, list[ImageRecord]]:
        folder = self.eval_folder()
        if folder is not None:
            if not self.class_names:
                raise DatasetError("--split test / data.val_root evaluate a trained model: give a checkpoint")
            val = read_split(folder, class_names=self.class_names, **self._read_args())
            self.category_ids = val.category_ids
            return None, val.records
        disk = self.on_disk()
        if disk.lists is not None:
            self.split_lists = disk.lists.source
            log.info("%s", disk.line())
        if self.split == "test":  # the data's own test list (eval_folder found no ROOT/test/ to use)
            if not self.class_names:
                raise DatasetError("--split test evaluates a trained model: give a checkpoint")
            self.category_ids = disk.test.category_ids
            return None, disk.test.records
        train, val = disk.train, disk.val
        test = disk.test.records if disk.test is not None else []
        pool = train.records + (val.records if val else []) + test
        n_train = len(train.records)
        if val is not None:
            derived = range(n_train, n_train + len(val.records))
            self.category_ids = val.category_ids
        else:
            _, derived = seeded_split(n_train, self.cfg.val_fraction, self.seed)
            self.category_ids = train.category_ids
        # The test images are in the pool only so that a checkpoint's stored validation files are found among them
        # (a model trained before the data's own split was used); they are never trained on.
        never = range(len(pool) - len(test), len(pool))
        tr, va = self.choose_val(pool, derived, key=lambda r: r.path, fingerprint=record_fingerprint, never_train=never)
        train = Split([pool[i] for i in tr], train.class_names, train.category_ids, train.format, train.skipped)
        return train, [pool[i] for i in va]

    def setup(self, stage: str | None = None) -> None:
        if self.val_set is not None:
            return
        train, val = self._split()
        if self.cfg.check_images:
            val = self._readable(val)
            self.keep_val_files([r.path for r in val])
        if train is not None:
            if self.cfg.check_images:
                train.records = self._readable(train.records)
            if not train.records and stage != "validate":
                raise DatasetError(f"{self.cfg.root}: no readable training images left")
            if stage != "validate" and not any(len(r.labels) for r in train.records):
                raise DatasetError(
                    f"{self.cfg.root}: the training split holds no objects at all ({len(train.records)} images, 0 "
                    "boxes); a detector cannot learn from it. Check that the annotations were found (format, "
                    "file names) and hold boxes."
                )
            self.class_names = train.class_names
            self.train_set = DetectionDataset(train.records, self.train_pipeline())
        self.val_set = DetectionDataset(val, self.eval_pipeline())

    def _readable(self, records: list[ImageRecord]) -> list[ImageRecord]:
        good, bad = drop_unreadable([r.path for r in records])
        self.skipped += bad
        keep = set(good)
        return [r for r in records if r.path in keep]

    def train_dataloader(self):
        if self.train_set is None:
            raise DatasetError("this datamodule was set up for evaluation only (no training split)")
        return super().train_dataloader()
