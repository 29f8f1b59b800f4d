"""YOLO: ``split/labels/<stem>.txt`` (``class cx cy w h``, normalised) + a class-names file."""

from __future__ import annotations

from pathlib import Path

import yaml

from cvsuite.data.common import DatasetError, list_images
from cvsuite.data.formats.records import Split, _BoxReport, _class_index, _image_size, _record

# Files a YOLO split's class names are looked for in, first the split folder, then ROOT.
YOLO_NAME_FILES = ("classes.txt", "obj.names", "names.txt", "data.yaml", "dataset.yaml")


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
    pairs = [(path, labels_files.get(key)) for key, path in sorted(by_key.items())]
    return read_yolo_pairs(pairs, names, file_names, str(names_path or "data.class_names"), min_size, label_dir)


def read_yolo_pairs(
    pairs: list[tuple[Path, Path | None]],
    names: list[str],
    file_names: list[str],
    names_source: str,
    min_size: float = 1.0,
    where: Path | None = None,
) -> Split:
    """Records of (image, label file or None) pairs; the label files' class ids index `file_names`, mapped by name
    onto `names` (the model's class order). A missing label file means an image with no objects."""
    report = _BoxReport()
    records = []
    for i, (path, txt) in enumerate(pairs):
        width, height = _image_size(path)
        boxes, labels = [], []
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
                    f"{txt}:{lineno}: unknown category id {cls}; {names_source} lists "
                    f"{len(file_names)} classes (ids 0-{len(file_names) - 1}). Fix the id or add the class name."
                )
            labels.append(_class_index(names, file_names[cls], f"{txt}:{lineno}"))
            boxes.append([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height])
        records.append(
            _record(
                path, width, height, boxes, labels, [False] * len(labels), i + 1, str(txt or path), report, min_size
            )
        )
    if where is not None:
        report.flush(where)
    return Split(records, names, list(range(1, len(names) + 1)), "yolo")
