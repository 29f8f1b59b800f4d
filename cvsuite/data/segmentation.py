"""Semantic segmentation data: images and masks matched by file stem, or COCO polygon/RLE annotations.

Layouts (``data.root`` = ROOT)::

    ROOT/train/images/*.jpg   ROOT/train/masks/*.png   (+ ROOT/val/images, ROOT/val/masks)
    ROOT/images/*.jpg         ROOT/masks/*.png         + ROOT/splits/{train,val,test}.txt id lists (or VOC's
                                                         ImageSets/Segmentation/): the data's own split
    ROOT/images/*.jpg         ROOT/masks/*.png         (no split: a seeded data.val_fraction becomes validation)

Without a val split a seeded ``data.val_fraction`` of train is validation; a test list is never trained on and is
what ``--split test`` scores (``ROOT/test/`` without lists).

Sub-folder names are found among common ones (images/image/imgs/img/JPEGImages, masks/mask/labels/label/
SegmentationClass/annotations/gt) or set with ``data.images_dir`` / ``data.masks_dir``. Instead of mask files,
``data.train_annotations`` / ``data.val_annotations`` may name COCO JSON files (polygons or RLE).

Masks may be class-index PNGs (value = class id), palette PNGs (VOC-style: the palette index is the class id),
binary 0/255 images (read as 0/1, with a note in the log) or anything else through ``data.value_map``.
Every mask is read once before training: a missing mask, a mask of another size than its image, or a value that
is neither a class, ``ignore_index`` nor mapped is an error that names the files.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import albumentations as A
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from cvsuite import augment
from cvsuite.data.base import ContractDataModule, content_hash, file_fingerprint
from cvsuite.data.common import (
    IMAGE_EXTENSIONS,
    DatasetError,
    default_workers,
    list_images,
    read_image,
    seeded_index,
    seeded_split,
)
from cvsuite.data.splits import SplitLists, find_id_lists, read_id_lists
from cvsuite.models.backbone import data_config

log = logging.getLogger("cvsuite")

IMAGE_DIRS = ("images", "image", "imgs", "img", "JPEGImages")
MASK_DIRS = ("masks", "mask", "labels", "label", "SegmentationClass", "annotations", "gt")


@dataclass
class SegmentationDataConfig:
    root: str | None = None  # ROOT/train/{images,masks} (+ ROOT/val/...), or ROOT/{images,masks} alone
    images_dir: str | None = None  # image sub-folder name; None = first found of images, image, imgs, img, ...
    masks_dir: str | None = None  # mask sub-folder name; None = first found of masks, mask, labels, label, ...
    mask_suffix: str = ""  # mask stem = image stem + this (e.g. "_mask" for a.jpg -> a_mask.png)
    train_annotations: str | None = None  # COCO JSON (polygons/RLE) instead of mask files, relative to root
    val_annotations: str | None = None
    num_classes: int | None = None  # including background; None = len(class_names), COCO categories + 1, or masks
    class_names: list[str] | None = None  # one per class id; default class_0.. (binary: background, foreground)
    ignore_index: int = 255  # mask value that counts for nothing (VOC's void border); padding uses it too
    value_map: dict[Any, int] | None = None  # mask value (or "R,G,B" colour) -> class id or ignore_index
    val_fraction: float = 0.2  # seeded validation split when there is no val/ (or no val_annotations)
    val_subset: int | float | None = None  # validations while training score this many (or this share)
    # of the validation samples, seeded; the final evaluation and eval.py score them all
    image_size: int | None = None  # resize so the longer side is this (train, val, predict); None = native size
    crop_size: int = 256  # square training crops (padded with ignore_index where the image is smaller)
    crops_per_image: int = 1  # random crops of each training image per epoch (small datasets of large images)
    class_crops: float = 0.0  # share of crops placed over a class of the image, rarer classes picked more often
    batch_size: int = 8
    num_workers: int = -1  # -1 = cores - 1
    augment: Literal["none", "light", "strong"] = "light"  # see cvsuite/augment.py
    train_transforms: dict[str, Any] | None = None  # custom albumentations pipeline (A.to_dict); must crop/pad
    val_transforms: dict[str, Any] | None = None  # custom image-only pipeline; predictions are resized to masks
    val_root: str | None = None  # evaluate: a folder with images/ + masks/ scored instead of the validation split
    rederive_split: bool = False  # evaluate/resume: derive the split anew instead of the checkpoint's val files


@dataclass
class Sample:
    """One image and where its truth comes from: a mask file, or COCO annotations (possibly none: background)."""

    image: Path
    mask: Path | None = None
    coco: list[dict[str, Any]] | None = None


@dataclass
class Split:
    samples: list[Sample]
    category_names: list[str] | None = None  # COCO: names in class order, background first
    category_ids: dict[int, int] = field(default_factory=dict)  # COCO category id -> class id


# ---- reading masks ---------------------------------------------------------------------------------------------
def _colour_key(key: Any) -> int | None:
    """``"R,G,B"``, ``"#RRGGBB"`` or ``[R, G, B]`` -> one packed int (R << 16 | G << 8 | B), else None."""
    if isinstance(key, (list, tuple)) and len(key) == 3:
        r, g, b = (int(v) for v in key)
        return (r << 16) | (g << 8) | b
    if isinstance(key, str) and key.startswith("#") and len(key) == 7:
        return int(key[1:], 16)
    if isinstance(key, str) and key.count(",") == 2:
        r, g, b = (int(v) for v in key.split(","))
        return (r << 16) | (g << 8) | b
    return None


def normalize_value_map(value_map: dict[Any, int] | None) -> tuple[dict[int, int], dict[int, int]]:
    """data.value_map -> (gray value -> class, packed colour -> class)."""
    gray: dict[int, int] = {}
    colour: dict[int, int] = {}
    for key, value in (value_map or {}).items():
        packed = _colour_key(key)
        if packed is not None:
            colour[packed] = int(value)
            continue
        try:
            gray[int(key)] = int(value)
        except (TypeError, ValueError) as err:
            raise DatasetError(
                f"data.value_map: key {key!r} is neither a mask value (e.g. 255) nor a colour ('R,G,B' or '#RRGGBB')"
            ) from err
    return gray, colour


def read_mask_raw(path: Path, colour: bool = False) -> np.ndarray:
    """A mask file's values: (H, W) for gray, palette (the index) and 16-bit PNGs; (H, W) packed R<<16|G<<8|B
    ints for colour masks. An RGB file whose channels are all equal is read as gray unless `colour` (the value
    map names colours), so a colour-coded mask holding only a gray class still reads as that colour."""
    try:
        with Image.open(path) as img:
            if img.mode == "P":
                # VOC-style: the palette index is the class id, whatever colour the palette gives it.
                return np.asarray(img)
            if img.mode in ("RGB", "RGBA"):
                rgb = np.asarray(img.convert("RGB"))
                if not colour and (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
                    return rgb[..., 0].copy()  # a gray mask saved as RGB
                return (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
            if img.mode in ("LA", "PA"):
                img = img.getchannel(0)
            return np.asarray(img).astype(np.int64) if img.mode == "1" else np.asarray(img)
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise DatasetError(f"{path}: cannot read mask ({err}). Replace or delete the file.") from err


def coco_mask(annotations: list[dict[str, Any]], height: int, width: int, category_ids: dict[int, int]) -> np.ndarray:
    """Paint COCO polygons/RLE into an (H, W) class-id mask (0 = background). Larger objects are painted first, so
    a small object lying on a large one stays visible."""
    from pycocotools import mask as mask_utils

    out = np.zeros((height, width), dtype=np.int64)
    for ann in sorted(annotations, key=lambda a: -float(a.get("area", 0))):
        seg = ann.get("segmentation")
        if not seg:
            continue
        if isinstance(seg, list):  # polygons
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
        elif isinstance(seg.get("counts"), list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(seg, height, width)
        else:
            rle = seg
        out[mask_utils.decode(rle).astype(bool)] = category_ids[ann["category_id"]]
    return out


@dataclass
class MaskDecoder:
    """Turns a sample's truth into class ids: value_map applied, everything else must be a class or ignore."""

    num_classes: int
    ignore_index: int
    value_map: dict[Any, int] | None = None
    category_ids: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._gray, self._colour = normalize_value_map(self.value_map)

    def raw(self, sample: Sample, size: tuple[int, int] | None = None) -> np.ndarray:
        """Unmapped values. `size` (H, W) is needed for COCO."""
        if sample.mask is not None:
            return read_mask_raw(sample.mask, colour=bool(self._colour))
        if size is None:
            with Image.open(sample.image) as img:
                size = (img.height, img.width)
        return coco_mask(sample.coco or [], size[0], size[1], self.category_ids)

    def encode(self, raw: np.ndarray) -> np.ndarray:
        """(H, W) int64 class ids (or ignore_index); unmapped values pass through unchanged."""
        out = raw.astype(np.int64)
        table = {**self._gray, **self._colour}
        if table:
            values, inverse = np.unique(out, return_inverse=True)
            out = np.array([table.get(int(v), int(v)) for v in values], dtype=np.int64)[inverse].reshape(raw.shape)
        return out

    def invalid(self, values: np.ndarray) -> list[int]:
        """Encoded values that are neither a class id nor ignore_index."""
        return [int(v) for v in values if not (0 <= v < self.num_classes or v == self.ignore_index)]

    def __call__(self, sample: Sample, size: tuple[int, int] | None = None) -> np.ndarray:
        return self.encode(self.raw(sample, size))


def _bad_values_message(bad: dict[int, list[Path]], decoder: MaskDecoder) -> str:
    def show(v: int) -> str:
        return f"colour ({v >> 16},{(v >> 8) & 255},{v & 255})" if v > 65535 else str(v)

    lines = []
    for value, files in sorted(bad.items())[:10]:
        more = f" (+{len(files) - 3} more)" if len(files) > 3 else ""
        lines.append(f"  value {show(value)} in {', '.join(str(f) for f in files[:3])}{more}")
    return (
        f"Masks hold values that are not classes 0..{decoder.num_classes - 1}, nor data.ignore_index "
        f"({decoder.ignore_index}), nor mapped by data.value_map:\n"
        + "\n".join(lines)
        + "\nSet data.num_classes to the real number of classes, map the values with data.value_map "
        f"(e.g. {{{show(next(iter(bad)))}: {decoder.ignore_index}}} to ignore them; colours as 'R,G,B': class), "
        "or fix the masks."
    )


MAX_INFERRED_CLASSES = 64  # more distinct mask values than this without data.num_classes: not class ids


def _unexpected_values_message(stats: MaskStats, ignore_index: int) -> str:
    lines = []
    for value, files in sorted(stats.values.items(), key=lambda kv: len(kv[1]))[:12]:
        shown = ", ".join(str(f) for f in files[:2]) + (f" (+{len(files) - 2} more)" if len(files) > 2 else "")
        lines.append(f"  value {value}: in {len(files)} file(s), e.g. {shown}")
    more = len(stats.values) - 12
    return (
        f"The masks hold {len(stats.values)} distinct values {sorted(stats.values)[:20]}"
        f"{'...' if len(stats.values) > 20 else ''}, which are not class ids 0..K-1 (ignore_index {ignore_index} "
        "aside), so the classes cannot be read from them (rarest first):\n"
        + "\n".join(lines)
        + (f"\n  (+{more} more values)" if more > 0 else "")
        + "\nSay what they are: data.num_classes (values >= it are errors), data.class_names, or data.value_map "
        "(e.g. {255: 1, 7: 255} to read 255 as class 1 and ignore 7). JPEG masks are lossy: save masks as PNG."
    )


# ---- finding samples -------------------------------------------------------------------------------------------
def _find_dir(folder: Path, explicit: str | None, candidates: tuple[str, ...], what: str, key: str) -> Path:
    if explicit:
        path = folder / explicit
        if not path.is_dir():
            raise DatasetError(f"{path}: {what} folder not found (data.{key} = {explicit!r})")
        return path
    for name in candidates:
        if (folder / name).is_dir():
            return folder / name
    found = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    raise DatasetError(
        f"{folder}: no {what} folder (looked for {', '.join(candidates)}; found {found or 'nothing'}). "
        f"Name it with data.{key}, or arrange the data as ROOT/train/images + ROOT/train/masks."
    )


def read_mask_folder(folder: Path, cfg: SegmentationDataConfig) -> Split:
    """Images of ``folder/<images_dir>`` matched by stem (+ mask_suffix) to ``folder/<masks_dir>``."""
    images_dir = _find_dir(folder, cfg.images_dir, IMAGE_DIRS, "image", "images_dir")
    masks_dir = _find_dir(folder, cfg.masks_dir, MASK_DIRS, "mask", "masks_dir")
    images = list_images(images_dir)
    if not images:
        raise DatasetError(f"{images_dir}: no images ({'/'.join(IMAGE_EXTENSIONS[:4])}...)")
    samples, unused = pair_masks(images, images_dir, masks_dir, cfg)
    if unused:
        log.warning("%d mask(s) in %s have no image and are not used, e.g. %s", len(unused), masks_dir, unused[0])
    return Split(samples)


def pair_masks(
    images: list[Path], images_dir: Path, masks_dir: Path, cfg: SegmentationDataConfig
) -> tuple[list[Sample], list[str]]:
    """(a sample per image with its mask, the mask keys no image took); an image without a mask is an error."""
    masks: dict[str, Path] = {}
    for m in list_images(masks_dir):
        key = str(m.relative_to(masks_dir).with_suffix(""))
        # A .png mask wins over a lossy .jpg one with the same stem.
        if key not in masks or m.suffix.lower() == ".png":
            masks[key] = m
    samples, missing = [], []
    for image in images:
        key = str(image.relative_to(images_dir).with_suffix("")) + cfg.mask_suffix
        if key in masks:
            samples.append(Sample(image, masks.pop(key)))
        else:
            missing.append(image)
    if missing:
        shown = ", ".join(p.name for p in missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        raise DatasetError(
            f"{len(missing)} image(s) in {images_dir} have no mask in {masks_dir}: {shown}. Masks are matched by file "
            f"stem{' + data.mask_suffix ' + repr(cfg.mask_suffix) if cfg.mask_suffix else ''} (a.jpg -> "
            f"a{cfg.mask_suffix}.png); add the masks, delete those images, or set data.mask_suffix."
        )
    return samples, list(masks)


def read_coco(json_path: Path, folder: Path, cfg: SegmentationDataConfig) -> Split:
    """A COCO instances file: category ids become classes 1..K in id order, background is class 0."""
    if not json_path.is_file():
        raise DatasetError(f"{json_path}: COCO annotation file not found")
    try:
        coco = json.loads(json_path.read_text())
    except json.JSONDecodeError as err:
        raise DatasetError(f"{json_path}: not valid JSON ({err})") from err
    for key in ("images", "annotations", "categories"):
        if key not in coco:
            raise DatasetError(f"{json_path}: no '{key}' list; expected a COCO instances file")
    cats = sorted(coco["categories"], key=lambda c: c["id"])
    category_ids = {c["id"]: i + 1 for i, c in enumerate(cats)}
    by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for ann in coco["annotations"]:
        if ann.get("category_id") not in category_ids:
            raise DatasetError(
                f"{json_path}: annotation {ann.get('id')} has unknown category_id {ann.get('category_id')}"
            )
        by_image[ann["image_id"]].append(ann)
    bases = [json_path.parent, json_path.parent / "images"]
    if folder.is_dir():
        try:
            bases.insert(0, _find_dir(folder, cfg.images_dir, IMAGE_DIRS, "image", "images_dir"))
        except DatasetError:
            pass
    samples, missing = [], []
    for img in coco["images"]:
        path = next((b / img["file_name"] for b in bases if (b / img["file_name"]).is_file()), None)
        if path is None:
            missing.append(img["file_name"])
            continue
        samples.append(Sample(path, coco=by_image.get(img["id"], [])))
    if missing:
        raise DatasetError(
            f"{json_path}: {len(missing)} image file(s) not found, e.g. {missing[:3]}; looked in "
            f"{', '.join(str(b) for b in bases)}. Set data.images_dir or fix file_name."
        )
    return Split(samples, ["background"] + [c["name"] for c in cats], category_ids)


@dataclass
class OnDisk:
    """A segmentation data set's splits as it declares them: train always, val and test when it has them; `lists`
    when they come from the data's own id lists (splits/*.txt, ImageSets/...)."""

    train: Split
    val: Split | None = None
    test: Split | None = None
    lists: SplitLists | None = None
    source: str | None = None  # without lists: "folders train/, val/" or the COCO files

    def line(self) -> str | None:
        """``splits from splits/{train,val}.txt: train 58, val 14`` for split lists, ``splits from <source>:
        ...`` for split folders or COCO files; None without a val split (the seeded split says so itself)."""
        splits = (("train", self.train), ("val", self.val), ("test", self.test))
        counts = {k: len(v.samples) for k, v in splits if v is not None}
        if self.lists is not None:
            return self.lists.line(counts)
        if self.val is None or not self.train.samples or not self.source:
            return None
        return f"splits from {self.source}: " + ", ".join(f"{k} {n}" for k, n in counts.items())


LIST_FOLDERS = ("splits", "ImageSets/Segmentation", "ImageSets/Main")


def read_on_disk(cfg: SegmentationDataConfig) -> OnDisk:
    """Every split the data declares, from the layouts in the module docstring: ROOT/train/ (and val/) folders,
    COCO files, id lists beside ROOT's image and mask folders, or ROOT as one split (no val: seeded later)."""
    if not cfg.root:
        raise DatasetError("data.root is not set: give --data.root ROOT with ROOT/train/images and ROOT/train/masks")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"data.root {root}: folder not found")
    train_dir = root / "train" if (root / "train").is_dir() else root
    val_dir = root / "val" if (root / "val").is_dir() else None
    if val_dir is not None and not (root / "train").is_dir() and not cfg.train_annotations:
        return OnDisk(Split([]), read_mask_folder(val_dir, cfg))  # only val/: evaluating a checkpoint
    if cfg.train_annotations:
        train = read_coco(root / cfg.train_annotations, train_dir, cfg)
        val = read_coco(root / cfg.val_annotations, val_dir or root, cfg) if cfg.val_annotations else None
        if val is not None and val.category_ids != train.category_ids:
            raise DatasetError(f"{cfg.val_annotations}: categories differ from {cfg.train_annotations}")
        files = ", ".join(f for f in (cfg.train_annotations, cfg.val_annotations) if f)
        return OnDisk(train, val, source=files)
    folder = find_id_lists(root, LIST_FOLDERS) if train_dir == root else None
    if folder is not None:
        images_dir = _find_dir(root, cfg.images_dir, IMAGE_DIRS, "image", "images_dir")
        masks_dir = _find_dir(root, cfg.masks_dir, MASK_DIRS, "mask", "masks_dir")
        lists = read_id_lists(folder, images_dir, root)
        splits = {s: Split(pair_masks(files, images_dir, masks_dir, cfg)[0]) for s, files in lists.files.items()}
        return OnDisk(splits["train"], splits.get("val"), splits.get("test"), lists)
    val = read_mask_folder(val_dir, cfg) if val_dir is not None else None
    return OnDisk(read_mask_folder(train_dir, cfg), val, source="folders train/, val/")


def read_splits(cfg: SegmentationDataConfig) -> tuple[Split, Split | None]:
    """(train, val or None when there is no val split on disk); `read_on_disk` has the test split too."""
    disk = read_on_disk(cfg)
    return disk.train, disk.val


def sample_fingerprint(sample: Sample) -> str:
    """Image, mask file (or COCO annotations): a changed mask is a changed sample."""
    truth = file_fingerprint(sample.mask) if sample.mask is not None else content_hash(sample.coco)
    return f"{file_fingerprint(sample.image)}:{truth}"


# ---- checking every mask once --------------------------------------------------------------------------------
@dataclass
class MaskStats:
    values: dict[int, list[Path]]  # raw mask value -> files holding it
    size_errors: list[str]


def scan(samples: list[Sample], decoder: MaskDecoder, workers: int = 8) -> MaskStats:
    """Read every mask (threads: PNG decoding releases the GIL): raw values and size mismatches."""

    def one(sample: Sample) -> tuple[Sample, np.ndarray, str | None]:
        try:
            with Image.open(sample.image) as img:
                size = (img.height, img.width)
        except (OSError, UnidentifiedImageError, ValueError) as err:
            raise DatasetError(f"{sample.image}: cannot read image ({err}). Replace or delete the file.") from err
        raw = decoder.raw(sample, size)
        error = None
        if raw.shape[:2] != size:
            error = (
                f"mask {sample.mask} is {raw.shape[1]}x{raw.shape[0]} but image {sample.image} is {size[1]}x{size[0]}"
            )
        return sample, np.unique(raw), error

    values: dict[int, list[Path]] = defaultdict(list)
    errors = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for sample, uniques, error in pool.map(one, samples):
            for v in uniques.tolist():
                values[int(v)].append(sample.mask or sample.image)
            if error:
                errors.append(error)
    return MaskStats(dict(values), errors)


def pixel_counts(samples: list[Sample], decoder: MaskDecoder) -> np.ndarray:
    """Pixels of each class over `samples` (for balanced class weights)."""
    counts = np.zeros(decoder.num_classes, dtype=np.int64)
    for sample in samples:
        mask = decoder(sample)
        counts += np.bincount(mask[(mask >= 0) & (mask < decoder.num_classes)], minlength=decoder.num_classes)
    return counts


# ---- datasets ---------------------------------------------------------------------------------------------------
def _check_size(sample: Sample, image: np.ndarray, mask: np.ndarray) -> None:
    if image.shape[:2] != mask.shape[:2]:
        raise DatasetError(
            f"mask {sample.mask} is {mask.shape[1]}x{mask.shape[0]} but image {sample.image} is "
            f"{image.shape[1]}x{image.shape[0]}; a mask must have its image's size. Fix or remove the pair."
        )


class SegmentationDataset(Dataset):
    """Dict samples: ``image`` (3, h, w) float, ``mask`` (H, W) int64 class ids or ignore_index, ``path`` str,
    ``index`` int (position in this dataset).

    Training (`train=True`): image and mask go through `transform` together (same crop, flip, rotation).
    Evaluation: only the image is transformed; the mask stays at its file's resolution, and predictions are
    resized to it before scoring.
    """

    seeded_by_sample = True  # takes (index, seed) keys from the training sampler (`cvsuite.data.common.SampleSeeds`)

    def __init__(
        self, samples: list[Sample], decoder: MaskDecoder, transform: A.Compose, train: bool, repeats: int = 1
    ) -> None:
        self.samples = samples
        self.repeats = max(1, repeats)
        self.decoder = decoder
        self.transform = transform
        self.train = train
        # cv2 warps uint8/uint16 masks; int64 would fail in some transforms.
        self.mask_dtype = np.uint8 if max(decoder.num_classes - 1, decoder.ignore_index) <= 255 else np.uint16

    def __len__(self) -> int:
        return len(self.samples) * self.repeats

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        i = seeded_index(self, key)
        sample = self.samples[i % len(self.samples)]
        image = read_image(sample.image)
        mask = self.decoder(sample, image.shape[:2])
        _check_size(sample, image, mask)
        if self.train:
            out = self.transform(image=image, mask=mask.astype(self.mask_dtype))
            target = torch.as_tensor(np.asarray(out["mask"]), dtype=torch.long)
        else:
            out = self.transform(image=image)
            target = torch.from_numpy(mask)
        return {"image": out["image"], "mask": target, "path": str(sample.image), "index": i}


def pad_collate(batch: list[dict[str, Any]], ignore_index: int) -> dict[str, Any]:
    """Stack samples of different sizes: images zero-padded at the bottom/right, masks padded with ignore_index.

    Returns:
        image (N, 3, H, W), mask (N, Hm, Wm), image_sizes (N, 2) and mask_sizes (N, 2) of the unpadded content,
        path list.
    """
    h = max(b["image"].shape[-2] for b in batch)
    w = max(b["image"].shape[-1] for b in batch)
    hm = max(b["mask"].shape[-2] for b in batch)
    wm = max(b["mask"].shape[-1] for b in batch)
    images = batch[0]["image"].new_zeros(len(batch), batch[0]["image"].shape[0], h, w)
    masks = torch.full((len(batch), hm, wm), ignore_index, dtype=torch.long)
    for i, b in enumerate(batch):
        images[i, :, : b["image"].shape[-2], : b["image"].shape[-1]] = b["image"]
        masks[i, : b["mask"].shape[-2], : b["mask"].shape[-1]] = b["mask"]
    return {
        "image": images,
        "mask": masks,
        "image_sizes": torch.tensor([b["image"].shape[-2:] for b in batch]),
        "mask_sizes": torch.tensor([b["mask"].shape[-2:] for b in batch]),
        "path": [b["path"] for b in batch],
        "index": torch.tensor([b["index"] for b in batch]),
    }


class _Collate:
    """Picklable for worker processes (a lambda is not)."""

    def __init__(self, ignore_index: int) -> None:
        self.ignore_index = ignore_index

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        return pad_collate(batch, self.ignore_index)


# ---- the datamodule ---------------------------------------------------------------------------------------------
class SegmentationDataModule(ContractDataModule):
    """Masks or COCO -> datasets. Contract: class names, ignore_index, value_map (including the one chosen for
    0/255 masks), COCO category ids, eval pipeline, validation files."""

    def __init__(
        self,
        cfg: SegmentationDataConfig,
        backbone: str,
        seed: int = 42,
        stored: dict[str, Any] | None = None,
        split: str = "val",
    ) -> None:
        super().__init__(cfg, seed, stored, split)
        self.norm = data_config(backbone)
        self.fixed = bool(self.fact("class_names"))  # from a checkpoint: nothing is inferred from the data
        self.class_names = list(self.fact("class_names") or []) or None
        self.ignore_index = self.fact("ignore_index", cfg.ignore_index)
        self.value_map = cfg.value_map if cfg.value_map is not None else self.fact("value_map")
        self.category_ids: dict[int, int] = {int(k): int(v) for k, v in self.fact("category_ids") or []}
        self.decoder: MaskDecoder | None = None
        self.train_set: SegmentationDataset | None = None
        self.val_set: SegmentationDataset | None = None
        self.collate_fn = _Collate(self.ignore_index)
        self._on_disk: OnDisk | None = None
        self._train_samples: list[Sample] = []
        self._fitting = True
        self._pixel_counts: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names or [])

    def contract(self) -> dict[str, Any]:
        # value_map as given (YAML may give int keys; the checkpoint stores them as they are). COCO category id ->
        # class id as [id, class] pairs, so evaluating other COCO files maps categories as training did.
        return {
            **super().contract(),
            "ignore_index": self.ignore_index,
            "value_map": self.value_map,
            "category_ids": [[int(k), int(v)] for k, v in sorted(self.category_ids.items())],
        }

    def preset_train(self) -> A.Compose:
        cfg = self.cfg
        return augment.segmentation_train(
            cfg.augment,
            cfg.crop_size,
            cfg.image_size,
            self.norm.mean,
            self.norm.std,
            self.ignore_index,
            cfg.class_crops,
            self.crop_class_preference() if cfg.class_crops and self._fitting else None,
        )

    def crop_class_preference(self) -> np.ndarray:
        """How often `data.class_crops` centres on each class when an image holds several: the square root of its
        inverse pixel share in training. A class in a few images (bicyclists, a construction site) then gets most
        of their class crops instead of one in eight or ten, without starving the common classes of crops."""
        counts = self.class_pixel_counts().astype(np.float64)
        preference = np.where(counts > 0, np.sqrt(counts.sum() / np.maximum(counts, 1)), 0.0)
        chances = ", ".join(f"{n} {p:.1f}" for n, p in zip(self.class_names or [], preference / preference.max()))
        log.info("class crops (data.class_crops): a class is picked in proportion to %s", chances)
        return preference

    def preset_eval(self) -> A.Compose:
        return augment.segmentation_eval(self.cfg.image_size, self.norm.mean, self.norm.std)

    # ---- classes and value decoding ------------------------------------------------------------------------
    def _resolve_classes(self, train: Split, stats: MaskStats) -> None:
        """Fix num_classes, class names and the value map from the config, COCO categories or the mask values."""
        cfg = self.cfg
        values = set(stats.values)
        names = cfg.class_names or train.category_names
        num = cfg.num_classes or (len(names) if names else None)
        if names and len(names) != num:
            raise DatasetError(f"data.class_names has {len(names)} names but data.num_classes is {num}")
        if self.value_map is None and num in (None, 2) and values <= {0, 255} and 255 in values:
            # 0/255 binary images: 255 is the foreground, not VOC's void (which never comes without other classes).
            self.value_map = {255: 1}
            num = 2
            log.info(
                "masks hold only 0 and 255: reading them as binary, 0 -> class 0, 255 -> class 1 "
                "(set data.value_map to read them otherwise)"
            )
        if num is None:
            gray, colour = normalize_value_map(self.value_map)
            mapped = {gray.get(v, colour.get(v, v)) for v in values} - {self.ignore_index}
            if mapped != set(range(len(mapped))) or len(mapped) > MAX_INFERRED_CLASSES:
                # Not class ids 0..K-1: a stray value, JPEG noise or colours; guessing K would change the classes.
                raise DatasetError(_unexpected_values_message(stats, self.ignore_index))
            if not mapped or min(mapped) < 0:
                raise DatasetError(
                    f"Cannot infer data.num_classes from mask values {sorted(values)[:10]}: set data.num_classes "
                    "(and data.value_map for colour masks)"
                )
            num = max(mapped) + 1
            log.info("data.num_classes not set: %d classes from the mask values 0..%d", num, num - 1)
        if not names:
            names = ["background", "foreground"] if num == 2 else [f"class_{i}" for i in range(num)]
        if 0 <= self.ignore_index < num:
            raise DatasetError(
                f"data.ignore_index {self.ignore_index} is also a class id (0..{num - 1}); choose a value that is "
                "not a class, e.g. 255"
            )
        self.class_names = list(names)

    def _report(self, stats: MaskStats) -> None:
        """Raise one DatasetError listing every size mismatch, or else every value that is not a class."""
        if stats.size_errors:
            shown = "\n  ".join(stats.size_errors[:10])
            more = f"\n  (+{len(stats.size_errors) - 10} more)" if len(stats.size_errors) > 10 else ""
            raise DatasetError(
                f"{len(stats.size_errors)} mask(s) differ in size from their image:\n  {shown}{more}\n"
                "A mask must have its image's size: resize it with nearest-neighbour interpolation or fix the pair."
            )
        bad: dict[int, list[Path]] = {}
        for value, files in stats.values.items():
            encoded = int(self.decoder.encode(np.array([value]))[0])
            if self.decoder.invalid(np.array([encoded])):
                bad[value] = files
        if bad:
            raise DatasetError(_bad_values_message(bad, self.decoder))

    def on_disk(self) -> OnDisk:
        """The splits as the data declares them (read once)."""
        if self._on_disk is None:
            self._on_disk = read_on_disk(self.cfg)
        return self._on_disk

    def has_test_list(self) -> bool:
        return self.on_disk().lists is not None and self.on_disk().test is not None

    def _split(self) -> tuple[Split, Split]:
        folder = self.eval_folder()
        if folder is not None:
            if not self.fixed:
                raise DatasetError("--split test / data.val_root evaluate a trained model: give a checkpoint")
            return Split([]), read_mask_folder(folder, self.cfg)
        disk = self.on_disk()
        if disk.lists is not None:
            self.split_lists = disk.lists.source
            log.info("%s", disk.line())
        if self.split == "test":  # the data's own test list (eval_folder found no ROOT/test/ to use)
            if not self.fixed:
                raise DatasetError("--split test evaluates a trained model: give a checkpoint")
            return Split([]), disk.test
        train, val = disk.train, disk.val
        test = disk.test.samples if disk.test is not None else []
        pool = train.samples + (val.samples if val else []) + test
        n_train = len(train.samples)
        if val is not None:
            derived = range(n_train, n_train + len(val.samples))
        else:
            _, derived = seeded_split(n_train, self.cfg.val_fraction, self.seed)
        # Test samples are in the pool only so a checkpoint's stored validation files are found among them; they
        # are never trained on.
        never = range(len(pool) - len(test), len(pool))
        tr, va = self.choose_val(
            pool, derived, key=lambda s: s.image, fingerprint=sample_fingerprint, never_train=never
        )
        log.info(
            "%s: %d train / %d val images (%s validation files)", self.cfg.root, len(tr), len(va), self.split_source
        )
        return (
            Split([pool[i] for i in tr], train.category_names, train.category_ids),
            Split([pool[i] for i in va], train.category_names, train.category_ids),
        )

    def setup(self, stage: str | None = None) -> None:
        if self.val_set is not None:
            return
        train, val = self._split()
        self._train_samples = train.samples
        self._fitting = stage in (None, "fit")  # evaluation builds no training crops: their statistics are not read
        workers = default_workers(self.cfg.num_workers) or 1
        # COCO: the checkpoint's category -> class mapping wins over the files' (class order is the model's).
        category_ids = self.category_ids or train.category_ids or val.category_ids
        self.category_ids = dict(category_ids)
        probe = MaskDecoder(1, self.ignore_index, self.value_map, category_ids)
        if not self.fixed:
            stats = scan(train.samples + val.samples, probe, workers)
            self._resolve_classes(train, stats)
        self.decoder = MaskDecoder(self.num_classes, self.ignore_index, self.value_map, category_ids)
        if self.fixed:
            # Classes come from the checkpoint; only the split that will be used needs checking against them.
            stats = scan(val.samples if stage == "validate" else train.samples + val.samples, self.decoder, workers)
        self._report(stats)
        self.train_set = SegmentationDataset(
            train.samples, self.decoder, self.train_pipeline(), train=True, repeats=self.cfg.crops_per_image
        )
        self.val_set = SegmentationDataset(val.samples, self.decoder, self.eval_pipeline(), train=False)
        log.info(
            "segmentation data: %d train / %d val images, %d classes (%s), ignore_index %d",
            len(train.samples),
            len(val.samples),
            self.num_classes,
            ", ".join(self.class_names),
            self.ignore_index,
        )

    def class_pixel_counts(self) -> np.ndarray:
        """Pixels of each class in the training masks (read once: class crops and class weights both use them)."""
        if self._pixel_counts is None:
            self._pixel_counts = pixel_counts(self._train_samples, self.decoder)
        return self._pixel_counts
