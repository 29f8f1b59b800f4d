"""COCO detection: ``split/annotations.json`` with images in ``split/images/``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cvsuite.data.common import DatasetError
from cvsuite.data.formats.records import Split, _BoxReport, _class_index, _image_size, _record


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
        images[im["id"]] = {"path": path, "boxes": [], "labels": [], "ignore": [], "areas": []}
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
        # COCO's own area (of the segmentation, when there is one) decides small/medium/large, as in the official
        # evaluation; without a segmentation the box area is what COCO uses too (NaN = box area, filled later).
        has_area = ann.get("segmentation") and isinstance(ann.get("area"), (int, float))
        entry["areas"].append(float(ann["area"]) if has_area else float("nan"))
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
                areas=entry["areas"],
            )
        )
    report.flush(ann_file)
    return Split(records, names, category_ids, "coco")
