"""A data set's own split is used as given: a YOLO data.yaml (Ultralytics and Roboflow layouts, folders or .txt
lists), splits/{train,val,test}.txt and VOC's ImageSets/Main id lists for detection, the same id lists for
segmentation. The right files land in train, val and test; nothing of test is trained on; `cvsuite check` says
which lists it used; `eval --split test` scores the test list; a list naming a missing file is named with its line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from cvsuite.commands import main
from cvsuite.config import from_dict
from cvsuite.data.common import DatasetError
from cvsuite.data.detection import DetectionDataConfig, DetectionDataModule, read_splits
from cvsuite.data.formats import ImageRecord, write_split
from cvsuite.data.segmentation import SegmentationDataConfig, SegmentationDataModule
from cvsuite.run import evaluate, train
from cvsuite.testing import make_shapes
from tests.conftest import TINY_BACKBONE
from tests.test_detection_tools import tiny_detection_recipe
from tests.test_segmentation_data import save_mask, shapes_image, shapes_mask

QUIET = {"enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0}
SPLITS = {"train": range(0, 6), "val": range(6, 9), "test": range(9, 12)}


# ---- generated data sets in the layouts users bring ----------------------------------------------------------
def _yolo_lines(r: ImageRecord) -> str:
    lines = []
    for (x1, y1, x2, y2), lab in zip(r.boxes.tolist(), r.labels.tolist()):
        cx, cy, w, h = (x1 + x2) / 2 / r.width, (y1 + y2) / 2 / r.height, (x2 - x1) / r.width, (y2 - y1) / r.height
        lines.append(f"{lab} {cx:.8f} {cy:.8f} {w:.8f} {h:.8f}")
    return "\n".join(lines) + ("\n" if lines else "")


def ultralytics_set(root: Path, layout: str = "ultralytics") -> tuple[dict[str, list[ImageRecord]], list[str]]:
    """12 images of odd, non-square sizes (about 75x100) in YOLO format, split 6/3/3.

    ultralytics: images/{train,valid,test}/ + labels/..., data.yaml with paths relative to its folder;
    roboflow: {train,valid,test}/{images,labels}/ + data.yaml with ``../train/images`` (no path: key);
    txt: images/ + labels/ flat, data.yaml with path: and train.txt/val.txt/test.txt lists of ./images/... paths.
    """
    records, names = make_shapes(root / "raw", n=12, size=(75, 100), seed=3)
    folder = {"train": "train", "val": "valid", "test": "test"}
    out: dict[str, list[ImageRecord]] = {}
    for split, idx in SPLITS.items():
        out[split] = []
        for i in idx:
            r = records[i]
            if layout == "ultralytics":
                image = root / "images" / folder[split] / r.path.name
            elif layout == "roboflow":
                image = root / folder[split] / "images" / r.path.name
            else:
                image = root / "images" / r.path.name
            label = Path(str(image).replace("/images/", "/labels/")).with_suffix(".txt")
            image.parent.mkdir(parents=True, exist_ok=True)
            label.parent.mkdir(parents=True, exist_ok=True)
            image.write_bytes(r.path.read_bytes())
            if len(r.labels) or i % 2:  # some images without objects have no label file at all
                label.write_text(_yolo_lines(r))
            out[split].append(ImageRecord(image, r.width, r.height, r.boxes, r.labels, r.ignore, 0))
    if layout == "ultralytics":
        spec = {f: f"images/{folder[f]}" for f in folder}
        spec["names"] = names
    elif layout == "roboflow":
        spec = {f: f"../{folder[f]}/images" for f in folder}
        spec.update(nc=len(names), names=names)
    else:
        for split in SPLITS:
            (root / f"{split}.txt").write_text("".join(f"./images/{r.path.name}\n" for r in out[split]))
        spec = {"path": ".", **{f: f"{f}.txt" for f in folder}, "names": dict(enumerate(names))}
    (root / "data.yaml").write_text(yaml.safe_dump(spec))
    import shutil

    shutil.rmtree(root / "raw")
    return out, names


def id_list_set(root: Path, lists: str = "splits", fmt: str = "voc") -> dict[str, list[str]]:
    """images/ + annotations (VOC XML, COCO, YOLO; "devkit": VOC's JPEGImages/ + Annotations/) for 12 odd-size
    images, and id lists of 6/3/3 images;
    `lists` = "splits" (splits/{train,val,test}.txt) or "voc" (ImageSets/Main/{trainval,val,test}.txt)."""
    records, names = make_shapes(root / "raw", n=12, size=(75, 100), seed=5)
    write_split(records, names, root, "voc" if fmt == "devkit" else fmt)
    import shutil

    shutil.rmtree(root / "raw")
    if fmt == "devkit":  # Pascal VOC as downloaded
        (root / "images").rename(root / "JPEGImages")
        (root / "annotations").rename(root / "Annotations")
    ids = {s: [records[i].path.stem for i in idx] for s, idx in SPLITS.items()}
    if lists == "splits":
        (root / "splits").mkdir()
        for split, stems in ids.items():
            (root / "splits" / f"{split}.txt").write_text("\n".join(stems) + "\n")
    else:
        (root / "ImageSets/Main").mkdir(parents=True)
        (root / "ImageSets/Main/trainval.txt").write_text("\n".join(ids["train"] + ids["val"]) + "\n")
        (root / "ImageSets/Main/val.txt").write_text("\n".join(ids["val"]) + "\n")
        (root / "ImageSets/Main/test.txt").write_text("\n".join(ids["test"]) + "\n")
        (root / "ImageSets/Main/square_train.txt").write_text(f"{ids['train'][0]}  1\n")  # VOC's per-class lists
    return ids


def _names(records) -> list[str]:
    return sorted(Path(r.path).name for r in records)


def _datamodule(root: Path, stored=None, split="val", **data) -> DetectionDataModule:
    cfg = DetectionDataConfig(root=str(root), image_size=64, num_workers=0, check_images=False, **data)
    return DetectionDataModule(cfg, "test_efficientnet", seed=0, stored=stored, split=split)


# ---- detection: data.yaml -------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["ultralytics", "roboflow", "txt"])
def test_data_yaml_splits_and_labels_are_used_as_declared(tmp_path, layout):
    truth, names = ultralytics_set(tmp_path, layout)
    disk = read_splits(DetectionDataConfig(root=str(tmp_path)))
    assert disk.line() == "splits from data.yaml: train 6, val 3, test 3"
    assert disk.train.class_names == names
    for split, expected in truth.items():
        got = {Path(r.path).resolve(): r for r in disk.splits()[split].records}
        assert set(got) == {r.path.resolve() for r in expected}
        for r in expected:  # boxes back in pixels of each odd-size image, labels by class id
            g = got[r.path.resolve()]
            assert (g.width, g.height) == (r.width, r.height)
            np.testing.assert_allclose(g.boxes, r.boxes, atol=1e-3)
            assert g.labels.tolist() == r.labels.tolist()


def test_training_data_holds_train_validation_holds_val_and_test_is_never_trained_on(tmp_path):
    truth, _ = ultralytics_set(tmp_path)
    dm = _datamodule(tmp_path)
    dm.setup("fit")
    assert _names(dm.train_set.records) == _names(truth["train"])
    assert _names(dm.val_set.records) == _names(truth["val"])
    assert dm.split_lists == "data.yaml"
    stored = dm.state_dict()  # the checkpoint's validation files: the val list
    assert sorted(Path(rel).name for rel, _ in stored["val_files"]) == _names(truth["val"])
    test = _datamodule(tmp_path, stored=stored, split="test")
    test.setup("validate")
    assert _names(test.val_set.records) == _names(truth["test"])
    assert test.describe()["split"] == "test" and test.describe()["data_root"] == str(tmp_path.resolve())
    assert test.describe()["split_lists"] == "data.yaml"


def test_a_train_list_alone_holds_val_out_of_train_and_never_uses_test(tmp_path):
    truth, names = ultralytics_set(tmp_path)
    (tmp_path / "data.yaml").write_text(
        yaml.safe_dump({"train": "images/train", "test": "images/test", "names": names})
    )
    dm = _datamodule(tmp_path, val_fraction=0.5)
    dm.setup("fit")
    train, val = _names(dm.train_set.records), _names(dm.val_set.records)
    assert len(val) == 3 and sorted(train + val) == _names(truth["train"])
    assert not set(train + val) & set(_names(truth["test"]))


def test_a_names_only_yaml_is_a_class_names_file_and_train_folders_still_split(tmp_path):
    records, names = make_shapes(tmp_path / "raw", n=6, size=(75, 100), seed=1)
    write_split(records[:4], names, tmp_path / "train", "yolo")
    write_split(records[4:], names, tmp_path / "val", "yolo")
    for split in ("train", "val"):
        (tmp_path / split / "classes.txt").unlink()
    (tmp_path / "data.yaml").write_text(yaml.safe_dump({"names": names}))
    disk = read_splits(DetectionDataConfig(root=str(tmp_path)))
    assert disk.lists is None and len(disk.train.records) == 4 and len(disk.val.records) == 2


def test_data_yaml_errors_name_the_key_and_the_list_line(tmp_path):
    truth, names = ultralytics_set(tmp_path, "txt")
    lines = (tmp_path / "val.txt").read_text().splitlines()
    (tmp_path / "val.txt").write_text("\n".join(lines[:1] + ["./images/gone.png"] + lines[1:]) + "\n")
    with pytest.raises(DatasetError, match=r"val\.txt:2: image './images/gone.png' not found"):
        read_splits(DetectionDataConfig(root=str(tmp_path)))
    (tmp_path / "data.yaml").write_text(yaml.safe_dump({"train": "nowhere/train", "val": "val.txt", "names": names}))
    with pytest.raises(DatasetError, match=r"data.yaml: train: nowhere/train not found"):
        read_splits(DetectionDataConfig(root=str(tmp_path)))
    (tmp_path / "data.yaml").write_text(yaml.safe_dump({"train": "train.txt", "val": "train.txt", "names": names}))
    with pytest.raises(DatasetError, match=r"is in the train split \(data.yaml train:\) and in the val split"):
        read_splits(DetectionDataConfig(root=str(tmp_path)))


# ---- detection: id lists -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("lists", "fmt"), [("splits", "voc"), ("voc", "voc"), ("voc", "devkit"), ("splits", "coco"), ("splits", "yolo")]
)
def test_id_lists_beside_images_and_annotations_decide_the_splits(tmp_path, lists, fmt):
    ids = id_list_set(tmp_path, lists, fmt)
    images = tmp_path / ("JPEGImages" if fmt == "devkit" else "images")
    if fmt != "coco":  # an image in no list (in COCO it would need an entry): not used
        (images / "extra.png").write_bytes((images / f"{ids['train'][0]}.png").read_bytes())
    disk = read_splits(DetectionDataConfig(root=str(tmp_path)))
    source = "splits/{train,val,test}.txt" if lists == "splits" else "ImageSets/Main/{trainval,val,test}.txt"
    expected = f"splits from {source}: train 6, val 3, test 3"
    assert disk.line() == expected + ("; 1 image(s) in no list, not used" if fmt != "coco" else "")
    for split, stems in ids.items():
        assert sorted(Path(r.path).stem for r in disk.splits()[split].records) == sorted(stems)


def test_an_id_list_naming_a_missing_image_names_the_list_and_line(tmp_path):
    ids = id_list_set(tmp_path)
    (tmp_path / "splits/val.txt").write_text(f"{ids['val'][0]}\n\nBloodImage_99999\n")
    with pytest.raises(DatasetError, match=r"splits/val\.txt:3: 'BloodImage_99999' names no image in .*images"):
        read_splits(DetectionDataConfig(root=str(tmp_path)))
    (tmp_path / "splits/val.txt").write_text(f"{ids['test'][0]}\n")
    with pytest.raises(DatasetError, match=r"in the val split \(.*val\.txt\) and in the test split \(.*test\.txt\)"):
        read_splits(DetectionDataConfig(root=str(tmp_path)))


def test_a_checkpoint_split_before_the_lists_still_scores_its_stored_files_and_never_trains_test(tmp_path):
    """A model trained on the whole folder (seeded split, before split lists were used) keeps its stored
    validation files, even those now in the test list; resuming it trains on none of the test images."""
    ids = id_list_set(tmp_path)
    lists = tmp_path / "splits"
    lists.rename(tmp_path / "hidden")
    old = _datamodule(tmp_path)
    old.setup("fit")
    stored = old.state_dict()
    (tmp_path / "hidden").rename(lists)
    dm = _datamodule(tmp_path, stored=stored)
    dm.setup("fit")
    assert dm.split_source == "stored"
    assert _names(dm.val_set.records) == _names(old.val_set.records)
    trained = {Path(r.path).stem for r in dm.train_set.records}
    assert not trained & set(ids["test"])
    assert trained == set(ids["train"] + ids["val"]) - {Path(r.path).stem for r in old.val_set.records}


# ---- the commands: check, train, eval --split test -------------------------------------------------------------
def test_check_prints_the_split_source(tmp_path, capsys):
    ultralytics_set(tmp_path / "yolo")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_detection_recipe(tmp_path / "yolo", tmp_path / "run")))
    main(["check", "--config", str(recipe)])
    out = capsys.readouterr()
    text = out.out + out.err
    assert "splits from data.yaml: train 6, val 3, test 3" in text
    assert "no val split" not in text
    assert "test" in next(line for line in text.splitlines() if line.strip().startswith("class"))


def test_train_then_eval_split_test_scores_the_test_list(tmp_path, capsys):
    truth, _ = ultralytics_set(tmp_path / "data", "roboflow")
    recipe = tiny_detection_recipe(tmp_path / "data", tmp_path / "run")
    recipe["trainer"].update(max_epochs=1, **QUIET)
    recipe["run"] = {"plots": False}
    run = train(from_dict(recipe))
    ckpt = run / "checkpoints/best.ckpt"
    val = evaluate(ckpt, output=str(tmp_path / "val.json"))
    assert val["split_files"] == "stored" and val["num_samples"] == 3
    preds = tmp_path / "test_dets.json"
    capsys.readouterr()
    assert main(["eval", "--ckpt", str(ckpt), "--split", "test", "--predictions", str(preds)]) == 0
    out = capsys.readouterr()
    metrics = json.loads(out.out.strip().splitlines()[-1])
    assert metrics["split"] == "test" and metrics["num_samples"] == 3 and metrics["split_lists"] == "data.yaml"
    gt = json.loads((tmp_path / "test_dets_gt.json").read_text())  # the truth of the split scored: the test list
    assert sorted(Path(im["file_name"]).name for im in gt["images"]) == _names(truth["test"])
    assert all(im["file_name"].startswith("test/images/") for im in gt["images"])


def test_eval_with_predictions_reads_the_data_once(tmp_path, monkeypatch):
    """The ground truth beside --predictions comes from the datamodule eval scored (no second build, no second
    "has no train/ folder" message)."""
    import cvsuite.data.detection as detection

    records, names = make_shapes(tmp_path / "raw", n=8, size=(75, 100), seed=2)
    write_split(records, names, tmp_path / "data", "voc")
    recipe = tiny_detection_recipe(tmp_path / "data", tmp_path / "run")
    recipe["trainer"].update(max_epochs=1, **QUIET)
    recipe["run"] = {"plots": False}
    run = train(from_dict(recipe))
    reads = []
    real = detection.read_splits
    monkeypatch.setattr(detection, "read_splits", lambda *a, **k: reads.append(1) or real(*a, **k))
    preds = tmp_path / "d.json"
    assert main(["eval", "--ckpt", str(run / "checkpoints/best.ckpt"), "--predictions", str(preds)]) == 0
    assert len(reads) == 1
    gt = json.loads((tmp_path / "d_gt.json").read_text())
    stored = json.loads((run / "eval_metrics.json").read_text())
    assert len(gt["images"]) == stored["num_samples"] == 2  # the seeded 20 % of 8 images that were scored
    assert {r["image_id"] for r in json.loads(preds.read_text())} <= {im["id"] for im in gt["images"]}


# ---- segmentation: id lists ----------------------------------------------------------------------------------------
def seg_id_list_set(root: Path, lists: str = "splits") -> dict[str, list[str]]:
    """images/*.jpg + masks/*.png (palette) of odd sizes, id lists 6/3/3; VOC: JPEGImages + SegmentationClass with
    ImageSets/Segmentation lists and images that have no mask (not in any list)."""
    voc = lists == "voc"
    images, masks = (root / "JPEGImages", root / "SegmentationClass") if voc else (root / "images", root / "masks")
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    ids = {}
    for split, idx in SPLITS.items():
        ids[split] = []
        for i in idx:
            h, w = (75 + 7 * i, 100 - 3 * i) if i % 2 else (100 - 3 * i, 75 + 5 * i)
            mask = shapes_mask(h, w, seed=i)
            Image.fromarray(shapes_image(mask, seed=i)).save(images / f"tile{i}_{i:03d}.jpg", quality=95)
            save_mask(mask, masks / f"tile{i}_{i:03d}.png", "palette")
            ids[split].append(f"tile{i}_{i:03d}")
    folder = root / ("ImageSets/Segmentation" if voc else "splits")
    folder.mkdir(parents=True)
    for split, stems in ids.items():
        (folder / f"{split}.txt").write_text("\n".join(stems) + "\n")
    if voc:  # VOC's JPEGImages holds the detection images too: no mask, in no segmentation list
        Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(images / "detection_only.jpg")
    return ids


@pytest.mark.parametrize("lists", ["splits", "voc"])
def test_segmentation_id_lists_decide_train_val_and_test(tmp_path, lists):
    ids = seg_id_list_set(tmp_path, lists)
    cfg = SegmentationDataConfig(root=str(tmp_path), num_classes=3, num_workers=0, crop_size=32)
    dm = SegmentationDataModule(cfg, TINY_BACKBONE, seed=0)
    dm.setup("fit")

    def stems(dataset):
        return sorted(s.image.stem for s in dataset.samples)

    assert stems(dm.train_set) == sorted(ids["train"]) and stems(dm.val_set) == sorted(ids["val"])
    assert dm.split_lists.endswith("{train,val,test}.txt")
    test = SegmentationDataModule(cfg, TINY_BACKBONE, seed=0, stored=dm.state_dict(), split="test")
    test.setup("validate")
    assert stems(test.val_set) == sorted(ids["test"])
    with Image.open(test.val_set.samples[0].image) as img:  # scored at the odd size of its own file
        assert tuple(test.val_set[0]["mask"].shape) == (img.height, img.width)
    stored = SegmentationDataModule(cfg, TINY_BACKBONE, seed=0, stored=dm.state_dict())
    stored.setup("validate")
    assert stored.split_source == "stored" and stems(stored.val_set) == sorted(ids["val"])


def test_segmentation_check_prints_the_lists_and_a_missing_id_is_named(tmp_path, capsys):
    seg_id_list_set(tmp_path / "data")
    recipe = {
        "task": "segmentation",
        "data": {"root": str(tmp_path / "data"), "num_classes": 3, "crop_size": 32, "num_workers": 0},
        "model": {"backbone": TINY_BACKBONE, "pretrained": False},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    main(["check", "--config", str(tmp_path / "r.yaml")])
    out = capsys.readouterr()
    assert "splits from splits/{train,val,test}.txt: train 6, val 3, test 3" in out.out + out.err
    with open(tmp_path / "data/splits/train.txt", "a") as fh:
        fh.write("tile9_missing\n")
    assert main(["check", "--config", str(tmp_path / "r.yaml")]) != 0
    out = capsys.readouterr()
    assert "splits/train.txt:7: 'tile9_missing' names no image" in out.out + out.err


# ---- classification: a CSV's split column ------------------------------------------------------------------------
def csv_split_set(root: Path) -> dict[str, list[str]]:
    """12 odd-size images of two colours and labels.csv with a split column (train / valid / test, 6/3/3)."""
    (root / "img").mkdir(parents=True)
    rows, names = ["path,label,split"], {}
    for i in range(12):
        split = "train" if i < 6 else "valid" if i < 9 else "test"
        label = ("red", "blue")[i % 2]
        colour = (200, 30, 30) if label == "red" else (30, 30, 200)
        size = (100 - 3 * i, 75 + 2 * i)  # (width, height): none square, none a multiple of 32
        Image.new("RGB", size, colour).save(root / "img" / f"{i:02d}.png")
        rows.append(f"img/{i:02d}.png,{label},{split}")
        names.setdefault({"valid": "val"}.get(split, split), []).append(f"{i:02d}.png")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return names


def test_a_csv_split_column_decides_train_val_and_test(tmp_path):
    from cvsuite.data.classification import ClassificationDataConfig, ClassificationDataModule

    names = csv_split_set(tmp_path)
    cfg = ClassificationDataConfig(root=str(tmp_path), train_csv="labels.csv", image_size=32, num_workers=0)
    dm = ClassificationDataModule(cfg, "test_efficientnet", seed=0)
    dm.setup("fit")

    def files(dataset):
        return sorted(Path(p).name for p in dataset.samples.paths)

    assert files(dm.train_set) == names["train"] and files(dm.val_set) == names["val"]
    assert dm.split_lists == "labels.csv (split column)"
    test = ClassificationDataModule(cfg, "test_efficientnet", seed=0, stored=dm.state_dict(), split="test")
    test.setup("validate")
    assert files(test.val_set) == names["test"] and test.describe()["split"] == "test"
    assert test.val_set[0]["image"].shape == (3, 32, 32)

    (tmp_path / "labels.csv").write_text("path,label,split\nimg/00.png,red,train\nimg/01.png,blue,holdout\n")
    with pytest.raises(DatasetError, match=r"labels.csv:3: split 'holdout' is none of train, val, valid"):
        ClassificationDataModule(cfg, "test_efficientnet").setup("fit")


def test_check_prints_the_csv_split_column(tmp_path, capsys):
    csv_split_set(tmp_path / "data")
    recipe = {
        "task": "classification",
        "data": {"root": str(tmp_path / "data"), "train_csv": "labels.csv", "image_size": 32, "num_workers": 0},
        "model": {"backbone": "test_efficientnet", "pretrained": False},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    main(["check", "--config", str(tmp_path / "r.yaml")])
    out = capsys.readouterr()
    assert "splits from labels.csv (split column): train 6, val 3, test 3" in out.out + out.err
