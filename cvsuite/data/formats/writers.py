"""Writing records back as a COCO, VOC or YOLO split (format conversion, generated data)."""

from __future__ import annotations

import json
from pathlib import Path

from cvsuite.data.formats.records import FORMATS, ImageRecord


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
