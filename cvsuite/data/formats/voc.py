"""Pascal VOC: ``split/annotations/*.xml`` with images in ``split/images/`` (or, as VOC is downloaded,
``split/Annotations/`` and ``split/JPEGImages/``)."""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from pathlib import Path

from cvsuite.data.common import DatasetError, list_images
from cvsuite.data.formats.records import Split, _BoxReport, _class_index, _image_size, _record, image_dir, voc_dir

log = logging.getLogger("cvsuite")


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
    if filename and (image_dir(split) / filename).is_file():
        return image_dir(split) / filename
    # <filename> is often stale (renamed files, a missing extension): fall back to the XML's own stem.
    stem = Path(filename).stem if filename else xml.stem
    path = by_stem.get(stem) or by_stem.get(xml.stem)
    if path is None:
        raise DatasetError(
            f"{xml}: points to image '{filename or xml.stem}', which is not in {image_dir(split)}. Add the image or "
            "delete the XML."
        )
    return path


def read_voc(split: Path, class_names: list[str] | None, min_size: float = 1.0, use_difficult: bool = False) -> Split:
    """``split/annotations/*.xml`` with images in ``split/images/``; images without an XML have no objects."""
    ann_dir = voc_dir(split)
    xmls = sorted(ann_dir.rglob("*.xml"))
    images = list_images(image_dir(split))
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
