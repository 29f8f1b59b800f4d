"""Detection data: ``ROOT/train/`` and ``ROOT/val/`` (a seeded validation split when there is no ``val/``; a ROOT
that is itself one split, like ``ROOT/images`` + ``ROOT/annotations``, is split the same way). Each split is in
any of three formats, detected from what is there or set with ``data.format``:

- ``coco``: ``images/`` + ``annotations.json``;
- ``voc``:  ``images/`` + ``annotations/*.xml`` (class names from the XML; ``difficult`` objects are ignored by
  training and evaluation unless ``data.use_difficult``);
- ``yolo``: ``images/`` + ``labels/*.txt`` (``class cx cy w h``, normalised) + a class-names file.

Every format is read into the same `ImageRecord` (boxes xyxy in pixels of the original image). Boxes outside
the image are clipped and degenerate boxes dropped, each with a warning naming the file; anything else that
cannot be used raises `DatasetError` naming the file, the field and what to do.
"""

from __future__ import annotations

import json
import logging
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import albumentations as A
import lightning as L
import numpy as np
import torch
import yaml
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from cvsuite import transforms as T
from cvsuite.config import ConfigError
from cvsuite.data.common import (
    DatasetError,
    drop_unreadable,
    list_images,
    make_loader,
    read_image,
    seeded_split,
)
from cvsuite.models.backbone import data_config

log = logging.getLogger("cvsuite")

FORMATS = ("coco", "voc", "yolo")
PRESETS = ("none", "light", "strong")
# Files a YOLO split's class names are looked for in, first the split folder, then ROOT.
YOLO_NAME_FILES = ("classes.txt", "obj.names", "names.txt", "data.yaml", "dataset.yaml")
MAX_BOX_WARNINGS = 10


@dataclass
class DetectionDataConfig:
    root: str | None = None  # ROOT with train/ (and val/), or a single split folder (seeded val split)
    format: str | None = None  # coco | voc | yolo; null = detected from the files in each split
    names_file: str | None = None  # YOLO class names (one per line, or a data.yaml); null = looked for
    val_fraction: float = 0.2  # seeded validation split when there is no val/
    image_size: int = 512  # longest side fed to the model (a multiple of 32)
    batch_size: int = 8
    num_workers: int = -1  # -1 = cores - 1
    augment: str = "light"  # none | light (flip, scale jitter/crop, colour) | strong (wider jitter, more colour)
    train_transforms: dict[str, Any] | None = None  # custom albumentations pipeline (A.to_dict format)
    val_transforms: dict[str, Any] | None = None  # must only resize (no crop/pad): boxes are mapped back by scale
    min_visibility: float = 0.3  # a box cut by a crop is kept when this fraction of its area is still in view
    min_box_size: float = 1.0  # boxes narrower or lower than this (pixels) are degenerate and dropped
    use_difficult: bool = False  # VOC: train and evaluate on `difficult` objects instead of ignoring them
    check_images: bool = True  # decode every image once before training; unreadable ones are skipped, named
    class_names: list[str] | None = None  # fix the class order (default: from the annotations)


@dataclass
class ImageRecord:
    """One image and its objects. boxes: (N, 4) float32 xyxy pixels; labels: (N,) int64 class indices; ignore:
    (N,) bool (VOC difficult / COCO iscrowd: neither found nor missed in evaluation, not trained on)."""

    path: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    ignore: np.ndarray
    image_id: int


@dataclass
class Split:
    records: list[ImageRecord]
    class_names: list[str]
    category_ids: list[int]  # COCO category id of each class index (1..K for VOC/YOLO)
    format: str
    skipped: list[tuple[Path, str]] = field(default_factory=list)


# ---- boxes ---------------------------------------------------------------------------------------------------
class _BoxReport:
    """Collects clipped / dropped boxes of one split and warns once per box, up to a limit, then a count."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def add(self, message: str) -> None:
        self.messages.append(message)
        if len(self.messages) <= MAX_BOX_WARNINGS:
            warnings.warn(message, stacklevel=3)

    def flush(self, where: Path) -> None:
        extra = len(self.messages) - MAX_BOX_WARNINGS
        if extra > 0:
            warnings.warn(f"{where}: {extra} more boxes were clipped or dropped (see above for examples)", stacklevel=2)


def clean_boxes(
    boxes: np.ndarray, width: int, height: int, where: str, report: _BoxReport, min_size: float = 1.0
) -> np.ndarray:
    """Clip xyxy `boxes` to the image and return the mask of those to keep (not degenerate after clipping)."""
    boxes = boxes.reshape(-1, 4)
    keep = np.ones(len(boxes), bool)
    for i, box in enumerate(boxes):
        x1, y1, x2, y2 = box.tolist()
        clipped = np.clip(box, 0, [width, height, width, height])
        # Normalised YOLO coordinates come back with float round-off (-3e-7): clip that silently.
        if np.abs(clipped - box).max() > 0.01:
            report.add(
                f"{where}: box {i} [{x1:g}, {y1:g}, {x2:g}, {y2:g}] lies outside the {width}x{height} image; "
                f"clipped to {[round(float(v), 1) for v in clipped]}. Check the annotation if this is not expected."
            )
        boxes[i] = clipped
        bw, bh = boxes[i, 2] - boxes[i, 0], boxes[i, 3] - boxes[i, 1]
        if bw < min_size or bh < min_size:
            report.add(
                f"{where}: box {i} [{x1:g}, {y1:g}, {x2:g}, {y2:g}] is degenerate (width {bw:g}, height {bh:g} "
                f"< data.min_box_size {min_size:g} px); dropped. Fix or delete the annotation."
            )
            keep[i] = False
    return keep


def _record(path, width, height, boxes, labels, ignore, image_id, where, report, min_size) -> ImageRecord:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    keep = clean_boxes(boxes, width, height, where, report, min_size)
    return ImageRecord(
        Path(path),
        int(width),
        int(height),
        boxes[keep],
        np.asarray(labels, np.int64).reshape(-1)[keep],
        np.asarray(ignore, bool).reshape(-1)[keep],
        int(image_id),
    )


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            return img.size
    except OSError as err:
        raise DatasetError(f"{path}: cannot read image ({err}). Replace or delete the file.") from err


def _class_index(names: list[str], name: str, where: str) -> int:
    if name not in names:
        raise DatasetError(
            f"{where}: unknown class '{name}'; this model's classes are {names}. Fix the label, or train with "
            "these classes (data.class_names)."
        )
    return names.index(name)


# ---- COCO ----------------------------------------------------------------------------------------------------
def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DatasetError(
            f"{path}:{err.lineno}:{err.colno}: malformed JSON ({err.msg}). Fix the file (python -m json.tool "
            f"{path.name} shows where)."
        ) from err


def read_coco(split: Path, class_names: list[str] | None, min_size: float = 1.0) -> Split:
    """``split/annotations.json`` (COCO detection) with images in ``split/images/``."""
    ann_file = split / "annotations.json"
    data = _load_json(ann_file)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise DatasetError(f"{ann_file}: no '{key}' list; a COCO file has 'images', 'annotations', 'categories'")
    cats = {}
    for c in data["categories"]:
        if "id" not in c or "name" not in c:
            raise DatasetError(f"{ann_file}: category {c} needs 'id' and 'name'")
        cats[c["id"]] = str(c["name"])
    cat_order = sorted(cats)
    names = list(class_names) if class_names else [cats[c] for c in cat_order]
    # A category the model does not know is an error only where an annotation uses it.
    index_of_cat = {c: names.index(cats[c]) if cats[c] in names else None for c in cat_order}
    category_ids = [next((c for c in cat_order if cats[c] == n), i + 1) for i, n in enumerate(names)]
    images: dict[int, dict[str, Any]] = {}
    for im in data["images"]:
        if "id" not in im or "file_name" not in im:
            raise DatasetError(f"{ann_file}: image entry {im} needs 'id' and 'file_name'")
        path = next((p for p in (split / "images" / im["file_name"], split / im["file_name"]) if p.is_file()), None)
        if path is None:
            raise DatasetError(
                f"{ann_file}: image id {im['id']} has file_name '{im['file_name']}', which is not in "
                f"{split / 'images'}. Add the image or delete the entry and its annotations."
            )
        images[im["id"]] = {"path": path, "boxes": [], "labels": [], "ignore": []}
    for ann in data["annotations"]:
        aid = ann.get("id", "?")
        if ann.get("image_id") not in images:
            raise DatasetError(
                f"{ann_file}: annotation id {aid} points to image_id {ann.get('image_id')!r}, which is not in "
                "'images'. Add the image entry or delete the annotation."
            )
        if ann.get("category_id") not in cats:
            raise DatasetError(
                f"{ann_file}: annotation id {aid} has unknown category_id {ann.get('category_id')!r}; the "
                f"categories are {sorted(cats)}. Fix the id or add the category."
            )
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise DatasetError(f"{ann_file}: annotation id {aid}: 'bbox' must be [x, y, width, height], got {bbox!r}")
        x, y, w, h = (float(v) for v in bbox)
        entry = images[ann["image_id"]]
        entry["boxes"].append([x, y, x + w, y + h])
        label = index_of_cat[ann["category_id"]]
        if label is None:
            label = _class_index(names, cats[ann["category_id"]], f"{ann_file}: annotation id {aid}")
        entry["labels"].append(label)
        entry["ignore"].append(bool(ann.get("iscrowd", 0)))
    report = _BoxReport()
    records = []
    for iid, entry in images.items():
        width, height = _image_size(entry["path"])
        where = f"{ann_file} image id {iid} ({entry['path'].name})"
        records.append(
            _record(
                entry["path"],
                width,
                height,
                entry["boxes"],
                entry["labels"],
                entry["ignore"],
                iid,
                where,
                report,
                min_size,
            )
        )
    report.flush(ann_file)
    return Split(records, names, category_ids, "coco")


# ---- Pascal VOC ------------------------------------------------------------------------------------------------
def _xml_text(node: ET.Element, tag: str, where: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise DatasetError(f"{where}: missing <{tag}>. Fix or delete the file.")
    return child.text.strip()


def _parse_voc(xml: Path) -> tuple[str | None, list[tuple[str, list[float], bool]]]:
    try:
        root = ET.parse(xml).getroot()
    except ET.ParseError as err:
        line, col = err.position
        raise DatasetError(f"{xml}:{line}:{col}: malformed XML ({err}). Fix or delete the file.") from err
    filename = root.findtext("filename")
    objects = []
    for k, obj in enumerate(root.iter("object")):
        where = f"{xml}: object {k}"
        name = _xml_text(obj, "name", where)
        box = obj.find("bndbox")
        if box is None:
            raise DatasetError(f"{where} ('{name}'): missing <bndbox>. Fix or delete the object.")
        try:
            coords = [float(_xml_text(box, t, f"{where} ('{name}')")) for t in ("xmin", "ymin", "xmax", "ymax")]
        except ValueError as err:
            raise DatasetError(f"{where} ('{name}'): <bndbox> coordinates must be numbers ({err})") from err
        difficult = (obj.findtext("difficult") or "0").strip() in ("1", "true", "True")
        objects.append((name, coords, difficult))
    return (filename.strip() if filename else None), objects


def _voc_image(split: Path, xml: Path, filename: str | None, by_stem: dict[str, Path]) -> Path:
    if filename and (split / "images" / filename).is_file():
        return split / "images" / filename
    # <filename> is often stale (renamed files, a missing extension): fall back to the XML's own stem.
    stem = Path(filename).stem if filename else xml.stem
    path = by_stem.get(stem) or by_stem.get(xml.stem)
    if path is None:
        raise DatasetError(
            f"{xml}: points to image '{filename or xml.stem}', which is not in {split / 'images'}. Add the image or "
            "delete the XML."
        )
    return path


def read_voc(split: Path, class_names: list[str] | None, min_size: float = 1.0, use_difficult: bool = False) -> Split:
    """``split/annotations/*.xml`` with images in ``split/images/``; images without an XML have no objects."""
    ann_dir = split / "annotations"
    xmls = sorted(ann_dir.rglob("*.xml"))
    images = list_images(split / "images")
    by_stem = {p.stem: p for p in images}
    parsed = [(xml, *_parse_voc(xml)) for xml in xmls]
    names = list(class_names) if class_names else sorted({o[0] for _, _, objs in parsed for o in objs})
    report = _BoxReport()
    records, annotated = [], set()
    for xml, filename, objects in parsed:
        path = _voc_image(split, xml, filename, by_stem)
        annotated.add(path)
        width, height = _image_size(path)
        labels = [_class_index(names, n, f"{xml}: object '{n}'") for n, _, _ in objects]
        ignore = [d and not use_difficult for _, _, d in objects]
        boxes = [b for _, b, _ in objects]
        records.append(_record(path, width, height, boxes, labels, ignore, 0, str(xml), report, min_size))
    report.flush(ann_dir)
    unannotated = [p for p in images if p not in annotated]
    if unannotated:
        log.info("%s: %d images have no XML in %s; used as images with no objects", split, len(unannotated), ann_dir)
    for p in unannotated:
        width, height = _image_size(p)
        records.append(_record(p, width, height, [], [], [], 0, str(p), report, min_size))
    records.sort(key=lambda r: str(r.path))
    for i, r in enumerate(records):
        r.image_id = i + 1
    return Split(records, names, list(range(1, len(names) + 1)), "voc")


# ---- YOLO ----------------------------------------------------------------------------------------------------
def _read_names_file(path: Path) -> list[str]:
    if path.suffix in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise DatasetError(f"{path}: not valid YAML ({err})") from err
        names = data.get("names") if isinstance(data, dict) else None
        if isinstance(names, dict):
            names = [names[k] for k in sorted(names)]
        if not isinstance(names, list) or not names:
            raise DatasetError(f"{path}: expected a 'names:' list (or {{id: name}} mapping) of class names")
        return [str(n) for n in names]
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"{path}: class-names file is empty; write one class name per line")
    return names


def find_names_file(split: Path, root: Path | None, names_file: str | None) -> Path | None:
    if names_file:
        for base in (Path("."), root or split, split):
            if (base / names_file).is_file():
                return base / names_file
        raise DatasetError(f"data.names_file: {names_file} not found (looked relative to {root or split})")
    for folder in (split, root):
        for name in YOLO_NAME_FILES if folder else ():
            if (folder / name).is_file():
                return folder / name
    return None


def read_yolo(
    split: Path,
    class_names: list[str] | None,
    min_size: float = 1.0,
    root: Path | None = None,
    names_file: str | None = None,
) -> Split:
    """``split/labels/<stem>.txt`` for ``split/images/<stem>.<ext>``; images without a label file have no objects."""
    names_path = find_names_file(split, root, names_file)
    if names_path is None and not class_names:
        raise DatasetError(
            f"{split}: YOLO labels need class names. Add {split}/classes.txt (one name per line, in class-id order), "
            "or set data.names_file or data.class_names."
        )
    file_names = _read_names_file(names_path) if names_path else list(class_names)
    names = list(class_names) if class_names else file_names
    label_dir = split / "labels"
    images = list_images(split / "images")
    by_key = {p.relative_to(split / "images").with_suffix("").as_posix(): p for p in images}
    labels_files = {p.relative_to(label_dir).with_suffix("").as_posix(): p for p in sorted(label_dir.rglob("*.txt"))}
    labels_files = {k: v for k, v in labels_files.items() if v.name not in YOLO_NAME_FILES}
    for key, txt in labels_files.items():
        if key not in by_key:
            raise DatasetError(
                f"{txt}: label file has no image {split / 'images' / key}.<jpg|png|...>. Add the image or delete "
                "the label file."
            )
    report = _BoxReport()
    records = []
    for i, (key, path) in enumerate(sorted(by_key.items())):
        width, height = _image_size(path)
        boxes, labels = [], []
        txt = labels_files.get(key)
        lines = txt.read_text().splitlines() if txt else []
        for lineno, line in enumerate(lines, start=1):
            parts = line.split()
            if not parts:
                continue
            try:
                if len(parts) != 5:
                    raise ValueError(f"{len(parts)} values")
                cls, cx, cy, w, h = int(parts[0]), *(float(v) for v in parts[1:])
            except ValueError as err:
                raise DatasetError(
                    f"{txt}:{lineno}: malformed line '{line.strip()}' ({err}); expected 'class cx cy w h' with "
                    "coordinates normalised to 0-1. Fix or delete the line."
                ) from err
            if not 0 <= cls < len(file_names):
                raise DatasetError(
                    f"{txt}:{lineno}: unknown category id {cls}; {names_path or 'data.class_names'} lists "
                    f"{len(file_names)} classes (ids 0-{len(file_names) - 1}). Fix the id or add the class name."
                )
            labels.append(_class_index(names, file_names[cls], f"{txt}:{lineno}"))
            boxes.append([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height])
        where = str(txt or path)
        records.append(
            _record(path, width, height, boxes, labels, [False] * len(labels), i + 1, where, report, min_size)
        )
    report.flush(label_dir)
    return Split(records, names, list(range(1, len(names) + 1)), "yolo")


# ---- format detection ------------------------------------------------------------------------------------------
def detect_format(split: Path) -> str:
    """Which format the files in `split` are in; raises DatasetError when none or several fit."""
    found = []
    if (split / "annotations.json").is_file():
        found.append("coco")
    if (split / "annotations").is_dir() and any((split / "annotations").rglob("*.xml")):
        found.append("voc")
    if (split / "labels").is_dir():
        found.append("yolo")
    if len(found) == 1:
        return found[0]
    if not found:
        raise DatasetError(
            f"{split}: no annotations found. Expected images/ plus one of: annotations.json (COCO), annotations/*.xml "
            "(Pascal VOC), labels/*.txt with classes.txt (YOLO)."
        )
    raise DatasetError(f"{split}: holds annotations in several formats ({', '.join(found)}); set data.format")


def read_split(
    split: Path,
    fmt: str | None = None,
    class_names: list[str] | None = None,
    min_size: float = 1.0,
    use_difficult: bool = False,
    root: Path | None = None,
    names_file: str | None = None,
) -> Split:
    """One split folder in any format, as records with boxes in pixels of the original images."""
    if not split.is_dir():
        raise DatasetError(f"{split}: folder not found")
    fmt = fmt or detect_format(split)
    if fmt not in FORMATS:
        raise DatasetError(f"data.format: unknown '{fmt}'. Choose one of {', '.join(FORMATS)} (or null to detect)")
    if not (split / "images").is_dir():
        raise DatasetError(f"{split}: no images/ folder; every format keeps its images in {split}/images/")
    if fmt == "coco":
        if not (split / "annotations.json").is_file():
            raise DatasetError(f"{split}: data.format is coco but there is no annotations.json")
        return read_coco(split, class_names, min_size)
    if fmt == "voc":
        return read_voc(split, class_names, min_size, use_difficult)
    return read_yolo(split, class_names, min_size, root, names_file)


# ---- writers (format conversion, generated test data) -----------------------------------------------------------
def write_split(records: list[ImageRecord], class_names: list[str], split: Path, fmt: str) -> Path:
    """Write `records` (their image files are copied into ``split/images``) as a split in format `fmt`."""
    import shutil

    (split / "images").mkdir(parents=True, exist_ok=True)
    for r in records:
        if r.path.resolve() != (split / "images" / r.path.name).resolve():
            shutil.copy(r.path, split / "images" / r.path.name)
    if fmt == "coco":
        anns = []
        for r in records:
            for box, label, ign in zip(r.boxes.tolist(), r.labels.tolist(), r.ignore.tolist()):
                x1, y1, x2, y2 = box
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": r.image_id,
                        "category_id": label + 1,
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": (x2 - x1) * (y2 - y1),
                        "iscrowd": int(ign),
                    }
                )
        data = {
            "images": [
                {"id": r.image_id, "file_name": r.path.name, "width": r.width, "height": r.height} for r in records
            ],
            "annotations": anns,
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(class_names)],
        }
        (split / "annotations.json").write_text(json.dumps(data))
    elif fmt == "voc":
        (split / "annotations").mkdir(exist_ok=True)
        for r in records:
            objs = "".join(
                f"<object><name>{class_names[lab]}</name><difficult>{int(ign)}</difficult><bndbox>"
                f"<xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
                for b, lab, ign in zip(r.boxes.tolist(), r.labels.tolist(), r.ignore.tolist())
            )
            xml = (
                f"<annotation><filename>{r.path.name}</filename><size><width>{r.width}</width>"
                f"<height>{r.height}</height><depth>3</depth></size>{objs}</annotation>"
            )
            (split / "annotations" / f"{r.path.stem}.xml").write_text(xml)
    elif fmt == "yolo":
        (split / "labels").mkdir(exist_ok=True)
        (split / "classes.txt").write_text("\n".join(class_names) + "\n")
        for r in records:
            lines = []
            for (x1, y1, x2, y2), lab in zip(r.boxes.tolist(), r.labels.tolist()):
                cx, cy = (x1 + x2) / 2 / r.width, (y1 + y2) / 2 / r.height
                lines.append(f"{lab} {cx:.8f} {cy:.8f} {(x2 - x1) / r.width:.8f} {(y2 - y1) / r.height:.8f}")
            (split / "labels" / f"{r.path.stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    else:
        raise ValueError(f"unknown format '{fmt}'; choose one of {', '.join(FORMATS)}")
    return split


def make_shapes(
    folder: Path, n: int = 8, size: tuple[int, int] = (96, 128), max_objects: int = 3, seed: int = 0
) -> tuple[list[ImageRecord], list[str]]:
    """Synthetic images of filled rectangles ("square", "bar") and ellipses ("disc") on noise, with exact boxes.

    Image sizes vary (±25% of `size` = (height, width)) and some images have no objects. Returns (records,
    class names); images are PNGs in `folder`.
    """
    names = ["square", "bar", "disc"]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        h = int(size[0] * rng.uniform(0.75, 1.25))
        w = int(size[1] * rng.uniform(0.75, 1.25))
        img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        boxes, labels = [], []
        for _ in range(0 if i % 4 == 3 else int(rng.integers(1, max_objects + 1))):
            cls = int(rng.integers(0, 3))
            bw = int(rng.integers(12, max(13, w // 2)))
            bh = bw if cls != 1 else max(6, bw // 3)
            bh = min(bh, h - 2)
            x1, y1 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            colour = rng.integers(150, 256, 3)
            if cls == 2:
                yy, xx = np.mgrid[0:bh, 0:bw]
                inside = ((xx + 0.5 - bw / 2) / (bw / 2)) ** 2 + ((yy + 0.5 - bh / 2) / (bh / 2)) ** 2 <= 1
                img[y1 : y1 + bh, x1 : x1 + bw][inside] = colour
            else:
                img[y1 : y1 + bh, x1 : x1 + bw] = colour
            boxes.append([x1, y1, x1 + bw, y1 + bh])
            labels.append(cls)
        path = folder / f"shape_{i:03d}.png"
        Image.fromarray(img).save(path)
        records.append(
            ImageRecord(
                path,
                w,
                h,
                np.asarray(boxes, np.float32).reshape(-1, 4),
                np.asarray(labels, np.int64),
                np.zeros(len(labels), bool),
                i + 1,
            )
        )
    return records, names


# ---- pipelines ------------------------------------------------------------------------------------------------
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


def train_pipeline(preset: str, size: int, mean, std, min_visibility: float = 0.3, min_size: float = 1.0) -> A.Compose:
    """Boxes move with the image. Every preset letterboxes to size x size (longest side `size`, aspect kept,
    padded with the mean colour, which the normalisation turns into 0, as torchvision pads its batches).

    none: resize + pad. light: + scale jitter 0.75-1.25 with a random crop/placement, horizontal flip, mild colour.
    strong: scale jitter 0.5-1.5, stronger colour, grey and blur.
    """
    if preset not in PRESETS:
        raise ConfigError(f"data.augment: unknown preset '{preset}'. Choose one of {', '.join(PRESETS)}")
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
        ]
        if preset == "light":
            ops.append(A.ColorJitter(0.2, 0.2, 0.2, 0.02, p=0.5))
        else:
            ops += [A.ColorJitter(0.3, 0.3, 0.3, 0.05, p=0.8), A.ToGray(p=0.05), A.GaussianBlur((3, 5), p=0.1)]
    return A.Compose(ops + T.normalize(mean, std), bbox_params=bbox_params(min_visibility, min_size))


def eval_pipeline(size: int, mean, std) -> A.Compose:
    """Resize so the longest side is `size` (no crop, no pad: predictions map back to the original by scale)."""
    ops = [A.LongestMaxSize(max_size=size, area_for_downscale="image")]
    return A.Compose(ops + T.normalize(mean, std), bbox_params=bbox_params(0.0, 0.0))


def _with_boxes(custom: A.Compose, params: A.BboxParams) -> A.Compose:
    return A.Compose(list(custom.transforms), bbox_params=params)


# ---- dataset -------------------------------------------------------------------------------------------------
class DetectionDataset(Dataset):
    """Dict samples:

    - ``image``: (3, H, W) float, normalised; H, W as the pipeline makes them (may differ between images);
    - ``target``: ``boxes`` (N, 4) float xyxy pixels of ``image``, ``labels`` (N,) int64 — what the loss sees
      (ignored objects left out);
    - ``gt``: ``boxes``/``labels``/``ignore`` in pixels of the original image — what the metric sees;
    - ``orig_size``: (height, width) of the original image; ``image_id``: int; ``path``: str.
    """

    def __init__(self, records: list[ImageRecord], transform: A.Compose) -> None:
        self.records = records
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
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
            },
            "orig_size": (r.height, r.width),
            "image_id": r.image_id,
            "path": str(r.path),
        }


def collate(samples: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Lists, not stacked tensors: images may differ in size and in number of boxes; torchvision's detectors
    take a list of images and pad them into one batch themselves."""
    return {key: [s[key] for s in samples] for key in samples[0]}


class DetectionDataModule(L.LightningDataModule):
    def __init__(
        self,
        cfg: DetectionDataConfig,
        backbone: str,
        seed: int = 42,
        class_names: list[str] | None = None,
        eval_pipeline: dict[str, Any] | None = None,
    ) -> None:
        """Args beyond the config come from a checkpoint: its class order and preprocessing win."""
        super().__init__()
        if cfg.image_size % 32:
            raise ConfigError(
                f"data.image_size must be a multiple of 32 (the deepest feature stride), got {cfg.image_size}"
            )
        self.cfg = cfg
        self.seed = seed
        self.norm = data_config(backbone, cfg.image_size)
        self.class_names = list(class_names or cfg.class_names or []) or None
        self._eval_pipeline = eval_pipeline
        self.train_set: DetectionDataset | None = None
        self.val_set: DetectionDataset | None = None
        self.category_ids: list[int] | None = None
        self.skipped: list[tuple[Path, str]] = []

    # ---- pipelines ---------------------------------------------------------------------------------------
    def train_pipeline(self) -> A.Compose:
        cfg = self.cfg
        custom = T.from_config(cfg.train_transforms, "data.train_transforms")
        if custom is not None:
            return _with_boxes(custom, bbox_params(cfg.min_visibility, cfg.min_box_size))
        return train_pipeline(
            cfg.augment, cfg.image_size, self.norm.mean, self.norm.std, cfg.min_visibility, cfg.min_box_size
        )

    def eval_pipeline(self) -> A.Compose:
        if self._eval_pipeline:
            return A.from_dict(self._eval_pipeline)
        custom = T.from_config(self.cfg.val_transforms, "data.val_transforms")
        if custom is not None:
            return _with_boxes(custom, bbox_params(0.0, 0.0))
        return eval_pipeline(self.cfg.image_size, self.norm.mean, self.norm.std)

    # ---- data --------------------------------------------------------------------------------------------
    def _read(self, stage: str | None = None) -> tuple[Split | None, list[ImageRecord]]:
        cfg = self.cfg
        if not cfg.root:
            raise DatasetError("data.root is not set: give --data.root ROOT with ROOT/train/ (and ROOT/val/)")
        root = Path(cfg.root).expanduser()
        if not root.is_dir():
            raise DatasetError(f"data.root: {root} is not a folder")
        kw = {
            "fmt": cfg.format,
            "min_size": cfg.min_box_size,
            "use_difficult": cfg.use_difficult,
            "root": root,
            "names_file": cfg.names_file,
        }
        if stage == "validate" and self.class_names and (root / "val").is_dir():
            # Evaluating a checkpoint: its classes are known, the training split need not be read at all.
            val = read_split(root / "val", class_names=self.class_names, **kw)
            self.category_ids = val.category_ids
            return None, val.records
        if (root / "train").is_dir():
            train = read_split(root / "train", class_names=self.class_names, **kw)
            if (root / "val").is_dir():
                val = read_split(root / "val", class_names=train.class_names, **kw)
                self.category_ids = val.category_ids
                return train, val.records
        elif (root / "images").is_dir():
            log.info(
                "%s has no train/ folder; using it as one split with a seeded %.0f%% validation split",
                root,
                100 * cfg.val_fraction,
            )
            train = read_split(root, class_names=self.class_names, **kw)
        else:
            raise DatasetError(
                f"{root}: expected {root}/train/ (and optionally {root}/val/), each with images/ and annotations "
                "(annotations.json, annotations/*.xml or labels/*.txt), or a single split with images/ here"
            )
        tr, va = seeded_split(len(train.records), cfg.val_fraction, self.seed)
        val = [train.records[i] for i in va]
        train.records = [train.records[i] for i in tr]
        self.category_ids = train.category_ids
        return train, val

    def setup(self, stage: str | None = None) -> None:
        if self.val_set is not None:
            return
        train, val = self._read(stage)
        if self.cfg.check_images:
            val = self._readable(val)
        if train is not None:
            if self.cfg.check_images:
                train.records = self._readable(train.records)
            if not train.records:
                raise DatasetError(f"{self.cfg.root}: no readable training images left")
            self.class_names = train.class_names
            pipeline = self.train_pipeline()
            # albumentations 2 draws from its own generator, which seed_everything does not reach: seed it here,
            # and per worker in make_loader, so a seeded run augments the same way twice.
            pipeline.set_random_seed(self.seed)
            self.train_set = DetectionDataset(train.records, pipeline)
        self.val_set = DetectionDataset(val, self.eval_pipeline())

    def _readable(self, records: list[ImageRecord]) -> list[ImageRecord]:
        good, bad = drop_unreadable([r.path for r in records])
        self.skipped += bad
        keep = set(good)
        return [r for r in records if r.path in keep]

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return make_loader(dataset, self.cfg.batch_size, shuffle, self.cfg.num_workers, collate_fn=collate)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)
