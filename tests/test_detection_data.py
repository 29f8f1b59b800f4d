"""Detection data: three formats read to the same targets, augmentation keeps boxes on their objects, batching
of mixed sizes and empty images, and a named message for every kind of bad input."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cvsuite.augment import detection_train as train_pipeline
from cvsuite.data.common import DatasetError
from cvsuite.data.detection import DetectionDataConfig, DetectionDataModule, DetectionDataset, collate
from cvsuite.data.formats import ImageRecord, detect_format, read_split, write_split
from cvsuite.testing import make_shapes

TINY = "test_efficientnet"
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


@pytest.fixture
def shapes(tmp_path: Path) -> tuple[list[ImageRecord], list[str]]:
    return make_shapes(tmp_path / "raw", n=8, seed=3)


def _by_name(split) -> dict[str, list[tuple[str, list[float]]]]:
    """Targets keyed by image file name: (class name, box) sorted, independent of class order and ids."""
    out = {}
    for r in split.records:
        out[r.path.name] = sorted(
            (split.class_names[lab], [round(v, 3) for v in box]) for box, lab in zip(r.boxes.tolist(), r.labels)
        )
    return out


def test_three_formats_read_to_identical_targets(tmp_path, shapes):
    records, names = shapes
    assert any(len(r.boxes) == 0 for r in records) and any(len(r.boxes) > 1 for r in records)
    truth = {
        r.path.name: sorted((names[k], [round(v, 3) for v in b]) for b, k in zip(r.boxes.tolist(), r.labels))
        for r in records
    }
    for fmt in ("coco", "voc", "yolo"):
        split = write_split(records, names, tmp_path / fmt, fmt)
        assert detect_format(split) == fmt
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # clean data reads silently (YOLO's float round-off included)
            read = read_split(split)
        assert read.format == fmt
        assert _by_name(read) == truth, fmt
        assert {r.path.name: (r.width, r.height) for r in read.records} == {
            r.path.name: (r.width, r.height) for r in records
        }
    # With the class order fixed (as a checkpoint does), the label indices agree as well.
    fixed = [read_split(tmp_path / fmt, class_names=names) for fmt in ("coco", "voc", "yolo")]
    labels = [{r.path.name: r.labels.tolist() for r in s.records} for s in fixed]
    assert labels[0] == labels[1] == labels[2]


def test_voc_difficult_is_ignored_unless_asked(tmp_path, shapes):
    records, names = shapes
    rec = next(r for r in records if len(r.boxes) >= 2)
    rec.ignore = np.array([True] + [False] * (len(rec.boxes) - 1))
    split = write_split([rec], names, tmp_path / "voc", "voc")
    assert read_split(split).records[0].ignore.tolist() == rec.ignore.tolist()
    assert not read_split(split, use_difficult=True).records[0].ignore.any()
    # Training targets leave the ignored object out; the metric's ground truth keeps it, flagged.
    ds = DetectionDataset(read_split(split, class_names=names).records, train_pipeline("none", 128, MEAN, STD))
    sample = ds[0]
    assert len(sample["target"]["boxes"]) == len(rec.boxes) - 1
    assert sample["gt"]["ignore"].tolist() == rec.ignore.tolist()


def _object_masks(record: ImageRecord) -> list[np.ndarray]:
    masks = []
    for box in record.boxes.astype(int):
        m = np.zeros((record.height, record.width), np.uint8)
        m[box[1] : box[3], box[0] : box[2]] = 1
        masks.append(m)
    return masks


@pytest.mark.parametrize("preset", ["none", "light", "strong"])
def test_boxes_stay_on_their_objects_after_augmentation(tmp_path, preset):
    # Rectangles only (no discs), so an object's pixels fill its box exactly.
    records, _ = make_shapes(tmp_path, n=12, seed=5)
    records = [r for r in records if len(r.boxes) and (r.labels != 2).all()][:4]
    assert records
    pipeline = train_pipeline(preset, 96, MEAN, STD, min_visibility=0.0)
    checked = 0
    for seed in range(5):
        pipeline.set_random_seed(seed)
        for r in records:
            image = np.asarray(Image.open(r.path).convert("RGB"))
            # Masks move exactly like the image: one per object, plus one marking the image (not the padding).
            masks = [*_object_masks(r), np.ones(image.shape[:2], np.uint8)]
            out = pipeline(image=image, bboxes=r.boxes, labels=np.arange(len(r.boxes)), masks=masks)
            assert out["image"].shape == (3, 96, 96)
            img = out["image"].numpy().mean(0) * 0.5 + 0.5  # grey, back to 0..1
            objects = np.stack([np.asarray(m) for m in out["masks"][:-1]]).any(0)
            background = img[(np.asarray(out["masks"][-1]) > 0) & ~objects]
            for box, k in zip(np.asarray(out["bboxes"]), out["labels"]):
                ys, xs = np.nonzero(np.asarray(out["masks"][int(k)]))
                # The box is the tight frame of the object's visible pixels (up to the masks' nearest-neighbour
                # resampling)...
                assert abs(xs.min() - box[0]) <= 2.5 and abs(ys.min() - box[1]) <= 2.5
                assert abs(xs.max() + 1 - box[2]) <= 2.5 and abs(ys.max() + 1 - box[3]) <= 2.5
                # ...and the image shows the bright object inside it, brighter than the dark background.
                x1, y1, x2, y2 = np.round(box).astype(int)
                inside = img[y1 + 1 : max(y1 + 2, y2 - 1), x1 + 1 : max(x1 + 2, x2 - 1)]
                if background.size:
                    assert inside.mean() > background.mean() + 0.2
                checked += 1
    assert checked >= 10


def test_flip_moves_boxes_with_the_image():
    image = np.zeros((40, 60, 3), np.uint8)
    image[5:15, 2:12] = 255  # object near the left edge
    import albumentations as A

    flip = A.Compose([A.HorizontalFlip(p=1.0)], bbox_params=A.BboxParams("pascal_voc", label_fields=["labels"]))
    out = flip(image=image, bboxes=np.array([[2.0, 5.0, 12.0, 15.0]]), labels=[0])
    np.testing.assert_allclose(out["bboxes"][0], [48, 5, 58, 15])
    assert out["image"][5:15, 48:58].min() == 255


def test_mixed_sizes_and_empty_images_batch(tmp_path, shapes):
    records, names = shapes
    write_split(records, names, tmp_path / "d" / "train", "coco")
    write_split(records[:4], names, tmp_path / "d" / "val", "yolo")
    cfg = DetectionDataConfig(root=str(tmp_path / "d"), image_size=64, batch_size=8, num_workers=0, augment="light")
    dm = DetectionDataModule(cfg, TINY)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    sizes = {tuple(im.shape[1:]) for im in batch["image"]}
    assert len(sizes) > 1 and all(max(s) == 64 for s in sizes)  # longest side 64, aspect kept
    assert any(len(t["boxes"]) == 0 for t in batch["target"])
    assert [tuple(s) for s in batch["orig_size"]] == [(r.height, r.width) for r in records[:4]]
    train = collate([dm.train_set[i] for i in range(len(dm.train_set))])
    assert {tuple(im.shape) for im in train["image"]} == {(3, 64, 64)}
    assert all(t["boxes"].dtype == torch.float32 and t["labels"].dtype == torch.int64 for t in train["target"])


def test_single_folder_root_gets_a_seeded_split(tmp_path, shapes):
    records, names = shapes
    write_split(records, names, tmp_path / "one", "voc")
    cfg = DetectionDataConfig(root=str(tmp_path / "one"), val_fraction=0.25, image_size=64, num_workers=0)
    a, b = DetectionDataModule(cfg, TINY, seed=1), DetectionDataModule(cfg, TINY, seed=1)
    a.setup(), b.setup()
    assert len(a.val_set) == 2 and len(a.train_set) == 6
    assert [r.path for r in a.val_set.records] == [r.path for r in b.val_set.records]
    assert not {r.path for r in a.val_set.records} & {r.path for r in a.train_set.records}


def test_checkpoint_class_names_win(tmp_path, shapes):
    records, names = shapes
    write_split(records, names, tmp_path / "d" / "train", "voc")
    cfg = DetectionDataConfig(root=str(tmp_path / "d"), image_size=64, num_workers=0)
    dm = DetectionDataModule(cfg, TINY, stored={"class_names": ["disc", "bar", "square"]})
    dm.setup()
    assert dm.class_names == ["disc", "bar", "square"]
    with pytest.raises(DatasetError, match=r"unknown class 'square'.*\['disc', 'bar'\]"):
        read_split(tmp_path / "d" / "train", class_names=["disc", "bar"])


# ---- bad input -------------------------------------------------------------------------------------------
def _coco(tmp_path: Path, anns: list[dict], size=(40, 30), images=None) -> Path:
    split = tmp_path / "c"
    (split / "images").mkdir(parents=True)
    Image.new("RGB", size).save(split / "images" / "a.png")
    data = {
        "images": images or [{"id": 1, "file_name": "a.png", "width": size[0], "height": size[1]}],
        "annotations": anns,
        "categories": [{"id": 7, "name": "cat"}],
    }
    (split / "annotations.json").write_text(json.dumps(data))
    return split


def test_box_outside_the_image_is_clipped_with_a_warning(tmp_path):
    split = _coco(tmp_path, [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [30, -5, 20, 20]}])
    with pytest.warns(UserWarning, match=r"a\.png.*box 0 \[30, -5, 50, 15\] lies outside the 40x30 image; clipped"):
        split_ = read_split(split)
    np.testing.assert_allclose(split_.records[0].boxes, [[30, 0, 40, 15]])
    assert split_.category_ids == [7]


def test_degenerate_box_is_dropped_with_a_warning(tmp_path):
    anns = [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [5, 5, 0, 10]},
        {"id": 2, "image_id": 1, "category_id": 7, "bbox": [5, 5, 10, 10]},
    ]
    with pytest.warns(UserWarning, match=r"box 0 .* is degenerate \(width 0, height 10.*dropped"):
        split = read_split(_coco(tmp_path, anns))
    np.testing.assert_allclose(split.records[0].boxes, [[5, 5, 15, 15]])


def test_coco_annotation_pointing_to_a_missing_image(tmp_path):
    split = _coco(tmp_path, [{"id": 3, "image_id": 9, "category_id": 7, "bbox": [1, 1, 5, 5]}])
    with pytest.raises(DatasetError, match=r"annotations\.json: annotation id 3 points to image_id 9.*not in 'images'"):
        read_split(split)


def test_coco_image_file_missing(tmp_path):
    images = [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "gone.jpg"}]
    with pytest.raises(DatasetError, match=r"image id 2 has file_name 'gone\.jpg', which is not in .*images"):
        read_split(_coco(tmp_path, [], images=images))


def test_coco_unknown_category_id(tmp_path):
    split = _coco(tmp_path, [{"id": 4, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5]}])
    with pytest.raises(DatasetError, match=r"annotation id 4 has unknown category_id 3; the categories are \[7\]"):
        read_split(split)


def test_coco_malformed_json_names_the_line(tmp_path):
    split = _coco(tmp_path, [])
    (split / "annotations.json").write_text('{"images": [],\n "annotations": [,]\n}')
    with pytest.raises(DatasetError, match=r"annotations\.json:2:\d+: malformed JSON"):
        read_split(split)


def test_voc_malformed_xml_and_missing_image(tmp_path):
    split = tmp_path / "v"
    (split / "images").mkdir(parents=True)
    (split / "annotations").mkdir()
    Image.new("RGB", (20, 20)).save(split / "images" / "a.png")
    (split / "annotations" / "a.xml").write_text("<annotation><object><name>x</name>\n<bndbox></object>")
    with pytest.raises(DatasetError, match=r"a\.xml:2:\d+: malformed XML"):
        read_split(split)
    (split / "annotations" / "a.xml").unlink()
    (split / "annotations" / "b.xml").write_text("<annotation><filename>zzz.jpg</filename></annotation>")
    with pytest.raises(DatasetError, match=r"b\.xml: points to image 'zzz\.jpg', which is not in"):
        read_split(split)
    (split / "annotations" / "b.xml").unlink()
    box = "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>oops</xmax><ymax>5</ymax></bndbox>"
    (split / "annotations" / "a.xml").write_text(f"<annotation><object><name>x</name>{box}</object></annotation>")
    with pytest.raises(DatasetError, match=r"a\.xml: object 0 \('x'\): <bndbox> coordinates must be numbers"):
        read_split(split)


def _yolo(tmp_path: Path, lines: str) -> Path:
    split = tmp_path / "y"
    (split / "images").mkdir(parents=True)
    (split / "labels").mkdir()
    Image.new("RGB", (20, 10)).save(split / "images" / "a.png")
    (split / "classes.txt").write_text("cat\ndog\n")
    (split / "labels" / "a.txt").write_text(lines)
    return split


def test_yolo_bad_lines_are_named(tmp_path):
    split = _yolo(tmp_path, "0 0.5 0.5 0.5 0.5\n1 0.5 0.5\n")
    with pytest.raises(DatasetError, match=r"a\.txt:2: malformed line '1 0\.5 0\.5'.*'class cx cy w h'"):
        read_split(split)
    (split / "labels" / "a.txt").write_text("5 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DatasetError, match=r"a\.txt:1: unknown category id 5; .*classes\.txt lists 2 classes"):
        read_split(split)
    (split / "labels" / "a.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    np.testing.assert_allclose(read_split(split).records[0].boxes, [[5, 2.5, 15, 7.5]])
    (split / "labels" / "b.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    with pytest.raises(DatasetError, match=r"b\.txt: label file has no image"):
        read_split(split)


def test_yolo_without_class_names_says_what_to_add(tmp_path):
    split = _yolo(tmp_path, "")
    (split / "classes.txt").unlink()
    with pytest.raises(DatasetError, match=r"YOLO labels need class names\. Add .*classes\.txt"):
        read_split(split)


def test_layout_errors(tmp_path, shapes):
    records, names = shapes
    write_split(records[:2], names, tmp_path / "both", "coco")
    write_split(records[:2], names, tmp_path / "both", "yolo")
    with pytest.raises(DatasetError, match=r"several formats \(coco, yolo\); set data.format"):
        read_split(tmp_path / "both")
    assert read_split(tmp_path / "both", fmt="yolo").format == "yolo"
    (tmp_path / "empty" / "images").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"no annotations found"):
        read_split(tmp_path / "empty")
    cfg = DetectionDataConfig(root=str(tmp_path / "nothing_here"))
    with pytest.raises(DatasetError, match="is not a folder"):
        DetectionDataModule(cfg, TINY).setup()
    with pytest.raises(ValueError, match="multiple of 32"):
        DetectionDataModule(DetectionDataConfig(root="x", image_size=100), TINY)


def test_coco_category_unknown_to_the_model_fails_only_where_used(tmp_path):
    split = _coco(tmp_path, [])
    assert read_split(split, class_names=["dog"]).records[0].labels.tolist() == []
    data = json.loads((split / "annotations.json").read_text())
    data["annotations"] = [{"id": 5, "image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5]}]
    (split / "annotations.json").write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"annotation id 5: unknown class 'cat'; this model's classes are \['dog'\]"):
        read_split(split, class_names=["dog"])


@pytest.mark.parametrize("workers", [0, 1])
def test_seeded_augmentation_repeats(tmp_path, shapes, workers):
    import lightning as L

    records, names = shapes
    write_split(records, names, tmp_path / "d" / "train", "coco")
    write_split(records[:2], names, tmp_path / "d" / "val", "coco")

    def first_batch(seed: int) -> list[torch.Tensor]:
        cfg = DetectionDataConfig(root=str(tmp_path / "d"), image_size=64, batch_size=8, num_workers=workers)
        dm = DetectionDataModule(cfg, TINY, seed=seed)
        dm.setup("fit")
        L.seed_everything(seed, workers=True, verbose=False)
        return [t["boxes"] for t in next(iter(dm.train_dataloader()))["target"]]

    a, b, c = first_batch(1), first_batch(1), first_batch(2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, c))


def test_coco_segmentation_area_reaches_the_metric(tmp_path, shapes):
    """COCO's small/medium/large use the annotation's area (of its segmentation), not the box's."""
    records, names = shapes
    split = write_split(records[:2], names, tmp_path / "d", "coco")
    data = json.loads((split / "annotations.json").read_text())
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        ann["segmentation"] = [[x, y, x + w, y, x, y + h]]  # a triangle: half the box
        ann["area"] = w * h / 2
    (split / "annotations.json").write_text(json.dumps(data))
    ds = DetectionDataset(read_split(split).records, train_pipeline("none", 128, MEAN, STD))
    sample = ds[0]
    boxes = sample["gt"]["boxes"]
    box_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    assert torch.allclose(sample["gt"]["area"], box_area / 2)
    from cvsuite.metrics.detection import DetectionEvaluator

    ev = DetectionEvaluator(names)
    ev.update([{"boxes": boxes, "scores": torch.ones(len(boxes)), "labels": sample["gt"]["labels"]}], [sample["gt"]])
    areas = [a["area"] for a in ev.coco_ground_truth()["annotations"]]
    assert areas == pytest.approx((box_area / 2).tolist())
