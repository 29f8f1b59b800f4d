"""Detection annotation formats: COCO JSON, Pascal VOC XML and YOLO text files, each read into the same
`ImageRecord` (boxes xyxy in pixels of the original image) and written back (`write_split`, format conversion).

Boxes outside the image are clipped and degenerate boxes dropped, each with a warning naming the file; anything
else that cannot be used raises `DatasetError` naming the file, the field and what to do.
"""

from __future__ import annotations

from pathlib import Path

from cvsuite.data.common import DatasetError
from cvsuite.data.formats.coco import read_coco
from cvsuite.data.formats.records import FORMATS, ImageRecord, Split, clean_boxes, image_dir, voc_dir
from cvsuite.data.formats.voc import read_voc
from cvsuite.data.formats.writers import write_split
from cvsuite.data.formats.yolo import YOLO_NAME_FILES, find_names_file, read_yolo

__all__ = [
    "FORMATS",
    "YOLO_NAME_FILES",
    "ImageRecord",
    "Split",
    "clean_boxes",
    "detect_format",
    "find_names_file",
    "image_dir",
    "read_coco",
    "read_split",
    "read_voc",
    "read_yolo",
    "write_split",
]


def detect_format(split: Path) -> str:
    """Which format the files in `split` are in; raises DatasetError when none or several fit."""
    found = []
    if (split / "annotations.json").is_file():
        found.append("coco")
    if voc_dir(split).is_dir() and any(voc_dir(split).rglob("*.xml")):
        found.append("voc")
    if (split / "labels").is_dir():
        found.append("yolo")
    if len(found) == 1:
        return found[0]
    if not found:
        raise DatasetError(
            f"{split}: no annotations found. Expected images/ plus one of: annotations.json (COCO), annotations/*.xml "
            "(Pascal VOC; or JPEGImages/ + Annotations/), labels/*.txt with classes.txt (YOLO)."
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
    if not image_dir(split).is_dir():
        raise DatasetError(
            f"{split}: no images/ folder; every format keeps its images in {split}/images/ (VOC: JPEGImages/)"
        )
    if fmt == "coco":
        if not (split / "annotations.json").is_file():
            raise DatasetError(f"{split}: data.format is coco but there is no annotations.json")
        return read_coco(split, class_names, min_size)
    if fmt == "voc":
        return read_voc(split, class_names, min_size, use_difficult)
    return read_yolo(split, class_names, min_size, root, names_file)
