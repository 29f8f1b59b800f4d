"""bench/generalise.py's pure parts: the table maths (mean, spread, ahead beyond the spread), the scores it reads
from each side's metrics, and the data writers, which must give cvsuite and the plain references the same split and
the same boxes and masks."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import bench_data  # noqa: E402
import generalise  # noqa: E402

from cvsuite.data.formats import read_split  # noqa: E402
from cvsuite.data.segmentation import read_mask_raw  # noqa: E402


# ---- table maths ---------------------------------------------------------------------------------------------------
def test_compare_ahead_only_when_every_seed_beats_every_seed():
    c = generalise.compare([0.90, 0.92], [0.85, 0.87], higher_is_better=True)
    assert c["ours"] == pytest.approx(0.91) and c["plain"] == pytest.approx(0.86)
    assert c["ours_spread"] == pytest.approx(0.01) and c["plain_spread"] == pytest.approx(0.01)
    assert c["margin"] == pytest.approx(0.05)
    assert c["ahead"] and not c["behind"]
    # Means 0.93 vs 0.90, but the seeds overlap (ours' worst 0.90 < plain's best 0.92): within the spread.
    c = generalise.compare([0.90, 0.96], [0.88, 0.92], higher_is_better=True)
    assert c["margin"] == pytest.approx(0.03) and not c["ahead"] and not c["behind"]
    c = generalise.compare([0.80, 0.82], [0.90, 0.91], higher_is_better=True)
    assert c["behind"] and not c["ahead"]


def test_compare_lower_is_better_and_single_seed():
    c = generalise.compare([100.0, 110.0], [150.0, 160.0], higher_is_better=False)
    assert c["margin"] == pytest.approx(-50.0) and c["ahead"]
    c = generalise.compare([0.5], [0.4], higher_is_better=True)  # one seed: no spread, any margin counts
    assert c["ours_spread"] == 0 and c["ahead"]


def test_scores_read_the_shared_feature_space_and_the_worst_class():
    ours = {"fid": 80.0, "kid": 0.05, "fid_inception": 80.0, "fid_tf_efficientnet_lite0": 120.0,
            "kid_tf_efficientnet_lite0": 0.1, "feature_network": "inception"}  # fmt: skip
    assert generalise.scores("generation", ours, "tf_efficientnet_lite0") == {"fid": 120.0, "kid": 0.1}
    assert generalise.scores("generation", ours) == {"fid": 80.0, "kid": 0.05}
    seg = {"miou": 0.6, "per_class_iou": {"road": 0.9, "pole": 0.1, "bicyclist": None}}
    assert generalise.scores("segmentation", seg) == {"miou": 0.6, "min_class_iou": 0.1}
    assert generalise.scores("detection", {"error": "boom"}) == {}


def _result(task: str, name: str, side: str, seed: int, **metrics) -> dict:
    return {"task": task, "set": name, "side": side, "seed": seed, "budget_s": 180.0, "wall_s": 170.0,
            "metrics": metrics}  # fmt: skip


def test_table_rows_per_metric_with_spread_and_failures():
    results = [
        _result("classification", "weather4", "ours", 42, accuracy=0.95, auroc=0.99),
        _result("classification", "weather4", "ours", 43, accuracy=0.93, auroc=0.98),
        _result("classification", "weather4", "plain", 42, accuracy=0.90, auroc=0.99),
        _result("classification", "weather4", "plain", 43, accuracy=0.88, auroc=0.97),
        _result("detection", "bccd", "ours", 42, error="Traceback"),
        _result("detection", "bccd", "plain", 42, map_50=0.5, map=0.3, map_75=0.2),
    ]
    rows = generalise.table(results).splitlines()
    assert rows[2].startswith("| classification | weather4 | accuracy | 0.940 ± 0.010 | 0.890 ± 0.010 | +0.050 |")
    assert "**yes**" in rows[2]
    assert rows[3].startswith("|  |  | AUROC | 0.985 ± 0.005 | 0.980 ± 0.010 | +0.005 | no, within spread |")
    assert rows[4] == "| detection | bccd | - | 0 done | 1 done | - | - | 1 failed | - |"
    one_seed = [
        _result("segmentation", "membrane", "ours", 42, miou=0.70, per_class_iou={"a": 0.6, "b": 0.8}),
        _result("segmentation", "membrane", "plain", 42, miou=0.75, per_class_iou={"a": 0.7, "b": None}),
    ]
    rows = generalise.table(one_seed).splitlines()
    assert rows[2].startswith(
        "| segmentation | membrane | mIoU | 0.700 ± 0.000 | 0.750 ± 0.000 | -0.050 | one seed: behind"
    )
    assert rows[3].startswith("|  |  | lowest class IoU | 0.600 ± 0.000 | 0.700 ± 0.000 | -0.100 | one seed: behind")


def test_cases_cover_every_set_of_the_tasks_with_scaled_budgets():
    todo = generalise.cases(["classification", "generation"], None, [1, 2], ["ours", "plain"], 0.15)
    sets = {c.set for c in todo}
    assert sets == {"sign_digits", "weather4", "raccoon_crops", "raccoon_gan", "sunrise_gan"}
    assert len(todo) == 5 * 2 * 2
    assert {c.budget_s for c in todo if c.task == "classification"} == {27.0}
    assert {c.budget_s for c in todo if c.task == "generation"} == {54.0}
    assert todo[0].result_path(Path("w")) == Path("w/results/sign_digits/ours-seed1-27s.json")


# ---- data writers --------------------------------------------------------------------------------------------------
def _photo(path: Path, w: int, h: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def test_voc_lists_keep_the_given_split_and_both_readers_agree(tmp_path):
    src = tmp_path / "voc"
    for i, (w, h) in enumerate([(100, 75), (479, 361), (75, 100)]):
        _photo(src / "images" / f"im{i}.jpg", w, h, i)
        objects = "".join(
            f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{5 + k}</xmin><ymin>6</ymin>"
            f"<xmax>{40 + k}</xmax><ymax>50</ymax></bndbox></object>"
            for k, n in enumerate(["WBC", "RBC"][: i + 1])
        )
        (src / "annotations").mkdir(exist_ok=True)
        (src / "annotations" / f"im{i}.xml").write_text(
            f"<annotation><filename>im{i}.jpg</filename><size><width>{w}</width><height>{h}</height></size>"
            f"{objects}</annotation>"
        )
    (src / "splits").mkdir()
    (src / "splits" / "train.txt").write_text("im0\nim2\n")
    (src / "splits" / "val.txt").write_text("im1\n")
    root = bench_data.write_voc_lists(src, tmp_path / "out", bench_data.LISTS)
    assert sorted(p.name for p in (root / "train" / "images").iterdir()) == ["im0.jpg", "im2.jpg"]
    assert sorted(p.name for p in (root / "val" / "annotations").iterdir()) == ["im1.xml"]
    _compare_readers(root / "val")


def test_yolo_splits_keep_images_without_labels_and_both_readers_agree(tmp_path):
    src = tmp_path / "yolo"
    (src / "data.yaml").parent.mkdir(parents=True)
    (src / "data.yaml").write_text("train: images/train\nval: images/valid\nnc: 2\nnames: [dog, person]\n")
    for split, stems in (("train", ["a", "b"]), ("valid", ["c", "d"]), ("test", ["e"])):
        for k, stem in enumerate(stems):
            _photo(src / "images" / split / f"{stem}.jpg", 361, 479, k)
            if stem != "d":  # d has no label file: an image without objects
                (src / "labels" / split).mkdir(parents=True, exist_ok=True)
                (src / "labels" / split / f"{stem}.txt").write_text("1 0.5 0.4 0.3 0.2\n0 0.25 0.7 0.1 0.2\n")
    root = bench_data.write_yolo_splits(src, tmp_path / "out", {"train": "train", "val": "valid"})
    assert sorted(p.name for p in (root / "val" / "images").iterdir()) == ["c.jpg", "d.jpg"]
    assert not (root / "test").exists()
    assert yaml.safe_load((root / "data.yaml").read_text())["names"] == ["dog", "person"]
    _compare_readers(root / "val")


def _compare_readers(split: Path) -> None:
    """cvsuite's reader and the plain reference's give the same classes and boxes (original pixels) per image."""
    import plain_detection

    ours = read_split(split, class_names=None, root=split.parent)
    plain, names = plain_detection.read_split(split, size=64, names=None)
    assert names == ours.class_names
    assert len(plain) == len(ours.records)
    for record, sample in zip(sorted(ours.records, key=lambda r: r.path), plain):
        order_ours = np.lexsort(np.asarray(record.boxes, np.float32).T)
        order_plain = np.lexsort(sample["orig_boxes"].numpy().T)
        np.testing.assert_allclose(
            np.asarray(record.boxes, np.float32).reshape(-1, 4)[order_ours],
            sample["orig_boxes"].numpy()[order_plain],
            atol=1.0,  # VOC's 1-based corners may be shifted by one pixel by either reader
        )
        assert np.asarray(record.labels)[order_ours].tolist() == sample["labels"].numpy()[order_plain].tolist()


def test_mask_lists_and_the_plain_reader_read_palette_class_ids_and_void(tmp_path):
    import plain_segmentation

    src = tmp_path / "aerial"
    mask = np.zeros((75, 100), np.uint8)
    mask[:, 50:] = 3
    mask[:5] = 255  # void
    for stem in ("t1", "t2"):
        _photo(src / "images" / f"{stem}.jpg", 100, 75, 0)
        (src / "masks").mkdir(exist_ok=True)
        png = Image.fromarray(mask, mode="P")
        png.putpalette([v for c in range(256) for v in (c, 255 - c, 128)])
        png.save(src / "masks" / f"{stem}.png")
    (src / "splits").mkdir()
    (src / "splits" / "train.txt").write_text("t1\n")
    (src / "splits" / "val.txt").write_text("t2\n")
    root = bench_data.write_mask_lists(src, tmp_path / "out", bench_data.LISTS)
    path = root / "val" / "masks" / "t2.png"
    np.testing.assert_array_equal(plain_segmentation.read_mask(path, binary=False), read_mask_raw(path))
    images, masks = plain_segmentation.read_split(root / "val", ["a", "b", "c", "d"], size=None)
    assert images[0].shape == (3, 75, 100) and masks[0].unique().tolist() == [0, 3, 255]


def test_gan_squares_keep_the_centre_square_of_any_photo(tmp_path):
    src = tmp_path / "photos"
    wide = np.zeros((361, 479, 3), np.uint8)
    wide[:, :40] = (255, 0, 0)  # the side strips fall outside the centre square
    wide[:, -40:] = (0, 0, 255)
    wide[:, 40:-40] = (0, 255, 0)
    src.mkdir()
    Image.fromarray(wide).save(src / "wide.png")
    Image.fromarray(np.full((479, 361, 3), 200, np.uint8)).save(src / "tall.jpg")
    folder = bench_data.write_gan_squares(src, tmp_path / "out", size=64)
    out = np.asarray(Image.open(folder / "wide.png"))
    assert out.shape == (64, 64, 3)
    assert out[:, :, 1].min() > 200 and out[:, :, 0].max() < 30 and out[:, :, 2].max() < 30
    assert np.asarray(Image.open(folder / "tall.png")).shape == (64, 64, 3)
