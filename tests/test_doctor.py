"""The dataset doctor on generated data with known problems: each is reported where a person can act on it,
errors give a non-zero exit, and clean data passes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from cvsuite.commands import main
from cvsuite.config import from_dict
from cvsuite.data.formats import write_split
from cvsuite.doctor import check_dataset, summarise_counts
from cvsuite.testing import make_shapes
from tests.conftest import tiny_recipe, write_class_folders
from tests.test_detection_tools import tiny_detection_recipe
from tests.test_segmentation_data import write_dataset
from tests.test_segmentation_task import tiny_recipe as seg_recipe


def _cls_cfg(root: Path, tmp: Path):
    return from_dict(tiny_recipe(root, tmp / "run"))


def test_clean_classification_data_counts_per_class_and_split(tmp_path):
    root = write_class_folders(tmp_path / "d", per_class=3)
    report = check_dataset(_cls_cfg(root, tmp_path))
    assert report.errors == [] and report.warnings == []
    assert summarise_counts(report) == {"train": {"blue": 3, "red": 3}, "val": {"blue": 3, "red": 3}}
    assert report.sizes["train"][1] == (32, 32)
    assert "no problems found" in report.table()


def test_broken_files_duplicates_and_imbalance_are_reported(tmp_path, capsys):
    root = write_class_folders(tmp_path / "d", per_class=2)
    for i in range(2, 14):  # 14 red vs 2 blue in train
        shutil.copy(root / "train/red/0.png", root / f"train/red/extra{i}.png")
        Image.fromarray(np.full((32, 32, 3), i * 10, np.uint8)).save(root / f"train/red/extra{i}.png")
    data = (root / "train/red/0.png").read_bytes()
    (root / "train/red/cut.png").write_bytes(data[: len(data) // 2])  # truncated
    shutil.copy(root / "train/blue/1.png", root / "val/blue/copy.png")  # same file in train and val
    report = check_dataset(_cls_cfg(root, tmp_path))
    text = report.table()
    assert any("cut.png" in e and "truncated" in e for e in report.errors)
    assert any("copy.png" in e and "also in train" in e for e in report.errors)
    assert any("imbalanced" in w and "class_weights: balanced" in w and "focal" in w for w in report.warnings)
    assert "ERROR" in text
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(root, tmp_path / "run")))
    assert main(["check", "--config", str(recipe)]) == 2
    assert "cut.png" in capsys.readouterr().out


def test_detection_orphan_labels_and_images_without_objects(tmp_path):
    records, names = make_shapes(tmp_path / "raw", n=6, size=(60, 80), seed=1)
    records[0].boxes, records[0].labels = records[0].boxes[:0], records[0].labels[:0]
    records[0].ignore = records[0].ignore[:0]
    root = tmp_path / "data"
    write_split(records[:4], names, root / "train", "yolo")
    write_split(records[4:], names, root / "val", "voc")
    cfg = from_dict(tiny_detection_recipe(root, tmp_path / "run"))
    report = check_dataset(cfg)
    assert report.errors == []
    assert any("without objects" in w and records[0].path.name in w for w in report.warnings)
    counts = summarise_counts(report)
    assert sum(counts["train"].values()) == sum(len(r.labels) for r in records[:4])
    assert report.unit == "objects"
    label = next((root / "train/labels").glob("shape_001.txt"))
    label.write_text(label.read_text() + "0 0.5 0.5 0.0 0.3\n0 0.95 0.5 0.3 0.3\n")  # degenerate, outside
    found = check_dataset(cfg).warnings
    assert any("degenerate" in w and "shape_001" in w for w in found)
    assert any("outside" in w and "shape_001" in w for w in found)
    (root / "train/labels/ghost.txt").write_text("0 0.5 0.5 0.2 0.2\n")  # a label file without its image
    assert any("ghost.txt" in e and "no image" in e for e in check_dataset(cfg).errors)


def test_segmentation_mask_values_that_are_no_class(tmp_path):
    root = tmp_path / "seg"
    write_dataset(root, n_train=3, n_val=2, fmt="index", num_classes=3)
    mask = next((root / "train/masks").glob("*.png"))
    arr = np.asarray(Image.open(mask)).copy()
    arr[0, 0] = 7
    Image.fromarray(arr).save(mask)
    cfg = from_dict(seg_recipe(root, tmp_path / "run", data={"num_classes": 3}))
    report = check_dataset(cfg)
    assert any("[7]" in e and "no class" in e for e in report.errors)
    assert report.unit == "pixels" and set(report.counts) == {"train", "val"}


def test_binary_masks_are_noted_not_errors(tmp_path):
    root = tmp_path / "seg"
    write_dataset(root, n_train=3, n_val=2, fmt="binary", num_classes=2)
    report = check_dataset(from_dict(seg_recipe(root, tmp_path / "run")))
    assert report.errors == []
    assert any("0 and 255" in w for w in report.warnings)
    assert report.counts["train"][1] > 0
