"""Segmentation data and metrics: every mask format loads to the same targets, augmentation keeps image and mask
aligned, bad input is named, and mIoU/Dice/pixel accuracy equal hand-computed values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cvsuite.augment import segmentation_train as train_transforms
from cvsuite.data.common import DatasetError
from cvsuite.data.segmentation import (
    MaskDecoder,
    Sample,
    SegmentationDataConfig,
    SegmentationDataModule,
    pad_collate,
)
from cvsuite.metrics.segmentation import SegmentationMetrics, confusion_matrix, summarize
from tests.conftest import TINY_BACKBONE

COLOURS = np.array([[20, 20, 20], [220, 40, 40], [40, 200, 40], [40, 40, 220]], dtype=np.uint8)


def shapes_mask(h: int, w: int, seed: int, num_classes: int = 3) -> np.ndarray:
    """Background, a rectangle (class 1) and, for 3+ classes, a disc (class 2) on top of it."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((h, w), dtype=np.uint8)
    y, x = rng.integers(2, h // 2), rng.integers(2, w // 2)
    mask[y : y + h // 3, x : x + w // 3] = 1
    if num_classes > 2:
        cy, cx = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4)
        yy, xx = np.mgrid[:h, :w]
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 < (min(h, w) // 5) ** 2] = 2
    return mask


def shapes_image(mask: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 20, (*mask.shape, 3))
    return np.clip(COLOURS[mask].astype(int) + noise, 0, 255).astype(np.uint8)


def save_mask(mask: np.ndarray, path: Path, fmt: str) -> None:
    """Write class ids in one of the formats users bring."""
    if fmt == "index":
        Image.fromarray(mask).save(path)
    elif fmt == "palette":
        img = Image.fromarray(mask, mode="P")
        img.putpalette([128, 0, 0, 0, 128, 0, 0, 0, 128] + [0] * (256 * 3 - 9))  # colours do not matter, the index does
        img.save(path)
    elif fmt == "binary":
        Image.fromarray((mask * 255).astype(np.uint8)).save(path)
    elif fmt == "colour":
        Image.fromarray(COLOURS[mask]).save(path)
    elif fmt == "uint16":
        Image.fromarray(mask.astype(np.uint16)).save(path)
    else:
        raise ValueError(fmt)


def write_dataset(
    root: Path,
    n_train: int = 6,
    n_val: int = 3,
    size: tuple[int, int] = (48, 64),
    fmt: str = "index",
    num_classes: int = 3,
    splits: bool = True,
) -> dict[str, np.ndarray]:
    """ROOT/{train,val}/{images,masks} (or ROOT/{images,masks} with splits=False); returns stem -> true ids."""
    truth = {}
    layout = [("train", n_train), ("val", n_val)] if splits else [(".", n_train + n_val)]
    for split, n in layout:
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            stem = f"{split.strip('.')}{i}"
            mask = shapes_mask(*size, seed=i + 100 * (split == "val"), num_classes=num_classes)
            Image.fromarray(shapes_image(mask, i)).save(root / split / "images" / f"{stem}.jpg")
            save_mask(mask, root / split / "masks" / f"{stem}.png", fmt)
            truth[stem] = mask.astype(np.int64)
    return truth


def datamodule(root: Path, **data) -> SegmentationDataModule:
    cfg = SegmentationDataConfig(root=str(root), num_workers=0, crop_size=32, batch_size=4, **data)
    dm = SegmentationDataModule(cfg, TINY_BACKBONE)
    dm.setup("fit")
    return dm


def targets(dm: SegmentationDataModule) -> dict[str, np.ndarray]:
    samples = dm.train_set.samples + dm.val_set.samples
    return {s.image.stem: dm.decoder(s) for s in samples}


# ---- mask formats -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fmt, data",
    [
        ("index", {}),
        ("palette", {}),
        ("uint16", {}),
        ("colour", {"value_map": {"20,20,20": 0, "220,40,40": 1, "#28C828": 2}}),
    ],
)
def test_mask_formats_load_to_identical_targets(tmp_path, fmt, data):
    truth = write_dataset(tmp_path, fmt=fmt)
    dm = datamodule(tmp_path, **data)
    assert dm.num_classes == 3
    got = targets(dm)
    assert got.keys() == truth.keys()
    for stem, mask in truth.items():
        np.testing.assert_array_equal(got[stem], mask, err_msg=f"{fmt}: {stem}")


def test_binary_0_255_masks_become_0_1_with_a_note(tmp_path, caplog):
    truth = write_dataset(tmp_path / "binary", fmt="binary", num_classes=2)
    write_dataset(tmp_path / "index", fmt="index", num_classes=2)
    with caplog.at_level("INFO", logger="cvsuite"):
        binary = datamodule(tmp_path / "binary")
    assert "only 0 and 255" in caplog.text
    assert binary.class_names == ["background", "foreground"]
    assert binary.value_map == {255: 1}
    index = targets(datamodule(tmp_path / "index"))
    for stem, got in targets(binary).items():
        np.testing.assert_array_equal(got, truth[stem])
        np.testing.assert_array_equal(got, index[stem])


def test_value_map_can_send_values_to_ignore(tmp_path):
    truth = write_dataset(tmp_path, fmt="index")
    dm = datamodule(tmp_path, num_classes=2, value_map={2: 255})  # the disc becomes "don't care"
    for stem, got in targets(dm).items():
        np.testing.assert_array_equal(got, np.where(truth[stem] == 2, 255, truth[stem]))
    item = dm.val_set[0]
    assert item["mask"].dtype == torch.long and item["mask"].shape == (48, 64)


def test_coco_polygons_and_rle_become_masks(tmp_path):
    from pycocotools import mask as mask_utils

    (tmp_path / "train" / "images").mkdir(parents=True)
    h, w = 40, 50
    expected = np.zeros((h, w), dtype=np.int64)
    expected[5:15, 10:30] = 1  # polygon of category id 7 -> class 1
    blob = np.zeros((h, w), dtype=np.uint8, order="F")
    blob[20:35, 5:20] = 1
    expected[blob.astype(bool)] = 2  # RLE of category id 9 -> class 2
    images, anns = [], []
    for i in range(5):
        Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(tmp_path / "train" / "images" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "height": h, "width": w})
        poly = [10, 5, 30, 5, 30, 15, 10, 15]  # x, y pairs of the rectangle's corners
        rle = mask_utils.encode(blob)
        rle["counts"] = rle["counts"].decode()
        anns.append({"id": 2 * i, "image_id": i, "category_id": 7, "segmentation": [poly], "area": 200, "iscrowd": 0})
        anns.append({"id": 2 * i + 1, "image_id": i, "category_id": 9, "segmentation": rle, "area": 225, "iscrowd": 1})
    cats = [{"id": 9, "name": "blob"}, {"id": 7, "name": "box"}]
    (tmp_path / "train.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    dm = datamodule(tmp_path, train_annotations="train.json")
    assert dm.class_names == ["background", "box", "blob"]
    for got in targets(dm).values():
        # pycocotools rasterises polygon edges inclusively: allow a one-pixel rim on the box
        core = np.zeros_like(expected, dtype=bool)
        core[6:14, 11:29] = True
        assert (got[core] == 1).all()
        np.testing.assert_array_equal(got[20:35, 5:20], 2)
        assert ((got == 1) != (expected == 1)).sum() <= 2 * (20 + 10) + 4


def test_seeded_val_split_and_flexible_folder_names(tmp_path):
    write_dataset(tmp_path, n_train=8, n_val=2, splits=False)
    (tmp_path / "images").rename(tmp_path / "image")  # membrane's layout: image/ and label/
    (tmp_path / "masks").rename(tmp_path / "label")
    a, b = datamodule(tmp_path, val_fraction=0.3), datamodule(tmp_path, val_fraction=0.3)
    assert len(a.train_set.samples) == 7 and len(a.val_set.samples) == 3
    assert [s.image for s in a.val_set.samples] == [s.image for s in b.val_set.samples]
    assert not {s.image for s in a.val_set.samples} & {s.image for s in a.train_set.samples}


# ---- bad input --------------------------------------------------------------------------------------------------
def test_mask_of_another_size_is_named(tmp_path):
    write_dataset(tmp_path)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "train" / "masks" / "train2.png")
    with pytest.raises(DatasetError, match=r"train2\.png is 10x10 but image .*train2\.jpg is 64x48"):
        datamodule(tmp_path)


def test_unknown_mask_values_are_listed_with_their_files(tmp_path):
    write_dataset(tmp_path)
    bad = np.zeros((48, 64), np.uint8)
    bad[0, :3] = [7, 9, 255]  # 255 is ignore_index: allowed
    Image.fromarray(bad).save(tmp_path / "val" / "masks" / "val1.png")
    with pytest.raises(DatasetError) as err:
        datamodule(tmp_path, num_classes=3)
    msg = str(err.value)
    assert "value 7 in" in msg and "value 9 in" in msg and "val1.png" in msg and "value 255" not in msg
    assert "data.value_map" in msg and "data.num_classes" in msg


def test_image_without_mask_is_named(tmp_path):
    write_dataset(tmp_path)
    (tmp_path / "train" / "masks" / "train3.png").unlink()
    with pytest.raises(DatasetError, match=r"have no mask.*train3\.jpg.*data\.mask_suffix"):
        datamodule(tmp_path)


def test_colour_mask_without_value_map_says_so(tmp_path):
    write_dataset(tmp_path, fmt="colour")
    with pytest.raises(DatasetError, match=r"colour \(220,40,40\)"):
        datamodule(tmp_path, num_classes=3)


def test_ignore_index_that_is_a_class_is_refused(tmp_path):
    write_dataset(tmp_path)
    with pytest.raises(DatasetError, match="data.ignore_index 1 is also a class"):
        datamodule(tmp_path, num_classes=3, ignore_index=1)


def test_missing_mask_folder_says_what_was_looked_for(tmp_path):
    (tmp_path / "train" / "images").mkdir(parents=True)
    (tmp_path / "train" / "segs").mkdir()
    with pytest.raises(DatasetError, match=r"no mask folder.*found \['images', 'segs'\].*data\.masks_dir"):
        datamodule(tmp_path)


# ---- augmentation keeps image and mask aligned --------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["none", "light", "strong"])
def test_masks_stay_aligned_after_augmentation(preset):
    """Black/white shapes: after any crop, scale, flip or rotation, the image's brightness still gives the mask
    (colour jitter and blur only move values within each side of mid-gray, and only near edges)."""
    h, w = 90, 120
    mask = shapes_mask(h, w, seed=3, num_classes=2)
    image = np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=2)
    pipeline = train_transforms(preset, 64, None, (0.5,) * 3, (0.5,) * 3, ignore_index=255)
    agree, flips = [], 0
    for seed in range(20):
        np.random.seed(seed)
        pipeline.set_random_seed(seed)
        out = pipeline(image=image, mask=mask)
        assert out["image"].shape == (3, 64, 64) and out["mask"].shape == (64, 64)
        gray = out["image"].numpy().mean(0) * 0.5 + 0.5  # back to [0, 1]
        m = np.asarray(out["mask"]).astype(int)
        valid = m != 255
        agree.append(((gray > 0.5) == (m == 1))[valid].mean())
        flips += int(not np.array_equal(m, mask[:64, :64]))
    assert min(agree) > 0.97, agree
    assert flips > 0  # the pipeline did move things


def test_crops_of_small_images_are_padded_with_ignore():
    mask = np.ones((20, 30), np.uint8)
    image = np.full((20, 30, 3), 255, np.uint8)
    out = train_transforms("none", 64, None, (0.5,) * 3, (0.5,) * 3, ignore_index=255)(image=image, mask=mask)
    m = np.asarray(out["mask"])
    assert (m == 1).sum() == 600 and (m == 255).sum() == 64 * 64 - 600


def thin_and_rare_mask(h: int = 75, w: int = 100) -> np.ndarray:
    """Background with a 1-pixel pole (class 1) near one edge and a 3x3 blob (class 2) in a far corner."""
    mask = np.zeros((h, w), np.uint8)
    mask[:, 3] = 1
    mask[h - 5 : h - 2, w - 5 : w - 2] = 2
    mask[0, 50:60] = 255  # void pixels are never a crop's class
    return mask


@pytest.mark.parametrize("preset", ["none", "light"])
def test_class_crops_give_thin_and_rare_classes_crops_of_their_own(preset):
    """A 75x100 image whose pole and blob cover 1 % of it: random 32-px crops hold the blob in about one in
    forty; with data.class_crops 1.0 each of the three classes is picked for a third of the crops (the blob then in
    over a quarter of them, 300 draws), crops stay aligned (brightness encodes the class) at the crop size."""
    mask = thin_and_rare_mask()
    image = np.repeat((mask.astype(int) * 100 % 256).astype(np.uint8)[..., None], 3, axis=2)

    def seen(share: float) -> tuple[float, float]:
        pipeline = train_transforms(preset, 32, None, (0.0,) * 3, (1.0,) * 3, 255, class_crops=share)
        pipeline.set_random_seed(0)
        pole = blob = 0
        for _ in range(300):
            out = pipeline(image=image, mask=mask)
            m = np.asarray(out["mask"]).astype(int)
            assert out["image"].shape == (3, 32, 32) and m.shape == (32, 32)
            brightness = (out["image"].numpy()[0] * 255).round().astype(int)
            valid = m != 255
            # light's scale jitter blends edges: most pixels (the blob's centre included) keep their class value
            assert (brightness == m * 100 % 256)[valid].mean() > 0.9
            pole += (m == 1).any()
            blob += (m == 2).any()
        return pole / 300, blob / 300

    pole0, blob0 = seen(0.0)
    pole1, blob1 = seen(1.0)
    assert blob0 < 0.1 and blob1 > 0.25, (blob0, blob1)
    assert pole1 > pole0 + 0.1 and pole1 > 0.3, (pole0, pole1)


def test_class_crops_with_a_custom_pipeline_is_refused():
    from cvsuite.config import ConfigError, load_config

    custom = ["--data.train_transforms", '{"transform": {"__class_fullname__": "Compose", "transforms": []}}']
    with pytest.raises(ConfigError, match="data.class_crops"):
        load_config("configs/segmentation/finetune.yaml", ["--data.class_crops", "0.5", *custom])
    with pytest.raises(ConfigError, match="data.class_crops"):
        load_config("configs/segmentation/finetune.yaml", ["--data.class_crops", "1.5"])
    # The recipe's own class_crops with a custom pipeline: the message names the setting that makes it work.
    with pytest.raises(ConfigError, match="set data.class_crops 0"):
        load_config("configs/segmentation/finetune.yaml", custom)
    assert load_config("configs/segmentation/finetune.yaml", ["--data.class_crops", "0", *custom]).data.class_crops == 0


def test_class_crops_centre_on_a_rare_class_as_often_as_its_preference_says():
    """The blob (class 2) next to the background and a pole: picked for a third of the class crops when every class
    counts the same, for 20/22 of them with a preference of 20 against 1 and 1 (300 draws, seeded)."""
    mask = thin_and_rare_mask()
    image = np.zeros((*mask.shape, 3), np.uint8)

    def blob_share(preference) -> float:
        pipeline = train_transforms("none", 32, None, (0.0,) * 3, (1.0,) * 3, 255, 1.0, preference)
        pipeline.set_random_seed(0)
        return np.mean([(np.asarray(pipeline(image=image, mask=mask)["mask"]) == 2).any() for _ in range(300)])

    uniform, preferred = blob_share(None), blob_share([1.0, 1.0, 20.0])
    assert 0.25 < uniform < 0.5, uniform
    assert preferred > 0.85, preferred


def test_class_crops_reach_the_training_pipeline_with_each_class_preferred_by_its_rarity(tmp_path):
    write_dataset(tmp_path, size=(75, 100))
    dm = datamodule(tmp_path, class_crops=0.5)
    crops = [t for t in dm.train_set.transform.transforms if type(t).__name__ == "ClassCentredCrop"]
    assert len(crops) == 1 and crops[0].share == 0.5
    counts = np.zeros(3)
    for sample in dm.train_set.samples:
        counts += np.bincount(dm.decoder(sample).ravel(), minlength=3)[:3]
    # The square root of each class's inverse pixel share in the training masks, by hand.
    np.testing.assert_allclose(crops[0].class_preference, np.sqrt(counts.sum() / counts), rtol=1e-9)
    assert np.argmax(crops[0].class_preference) == np.argmin(counts)
    batch = next(iter(dm.train_dataloader()))
    assert batch["mask"].shape[-2:] == (32, 32)


def test_pad_collate_keeps_true_sizes():
    batch = [
        {"image": torch.ones(3, 20, 30), "mask": torch.ones(40, 60, dtype=torch.long), "path": "a", "index": 0},
        {"image": torch.ones(3, 32, 16), "mask": torch.zeros(32, 16, dtype=torch.long), "path": "b", "index": 1},
    ]
    out = pad_collate(batch, ignore_index=255)
    assert out["image"].shape == (2, 3, 32, 30) and out["mask"].shape == (2, 40, 60)
    assert out["image_sizes"].tolist() == [[20, 30], [32, 16]] and out["mask_sizes"].tolist() == [[40, 60], [32, 16]]
    assert out["image"][0, :, 20:].abs().sum() == 0 and (out["mask"][1, 32:] == 255).all()


def test_decoder_passes_classes_and_maps_the_rest():
    decoder = MaskDecoder(num_classes=3, ignore_index=255, value_map={"128": 2, 200: 255})
    raw = np.array([[0, 1, 128], [200, 255, 5]])
    np.testing.assert_array_equal(decoder.encode(raw), [[0, 1, 2], [255, 255, 5]])
    assert decoder.invalid(np.unique(decoder.encode(raw))) == [5]
    assert decoder(Sample(Path("x.png"), coco=[]), size=(4, 5)).shape == (4, 5)


# ---- metrics -----------------------------------------------------------------------------------------------------
def test_metrics_equal_hand_computed_values_with_ignore_and_an_absent_class():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 1]])  # the 0 under 255 must not count
    m = summarize(confusion_matrix(pred, target, 4, 255), ["a", "b", "c", "d"])
    # truth/pred pairs: (0,0) (0,1) (1,1) (1,1) (2,2) (2,0) (1,1); class d is in neither
    iou = {"a": 1 / 3, "b": 3 / 4, "c": 1 / 2, "d": None}
    dice = {"a": 2 / 4, "b": 6 / 7, "c": 2 / 3, "d": None}
    assert m["per_class_iou"] == pytest.approx(iou)
    assert m["per_class_dice"] == pytest.approx(dice)
    assert m["miou"] == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
    assert m["dice"] == pytest.approx((1 / 2 + 6 / 7 + 2 / 3) / 3)
    assert m["pixel_accuracy"] == pytest.approx(5 / 7)
    assert m["num_pixels"] == 7 and m["confusion_matrix"][2] == [1, 0, 1, 0]
    json.dumps(m)  # None, not NaN: valid JSON


def test_a_class_predicted_but_absent_from_truth_scores_zero():
    target = torch.zeros(1, 4, dtype=torch.long)
    pred = torch.tensor([[0, 0, 3, 3]])
    m = summarize(confusion_matrix(pred, target, 4), list("abcd"))
    assert m["per_class_iou"] == {"a": 0.5, "b": None, "c": None, "d": 0.0}
    assert m["miou"] == pytest.approx(0.25) and m["pixel_accuracy"] == pytest.approx(0.5)


def test_metric_accumulates_one_matrix_over_batches():
    rng = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (4, 16, 16), generator=rng)
    pred = torch.randint(0, 3, (4, 16, 16), generator=rng)
    target[0, :4] = 255
    metric = SegmentationMetrics(["x", "y", "z"], ignore_index=255)
    for i in range(4):
        metric.update(pred[i], target[i])
    once = summarize(confusion_matrix(pred, target, 3, 255), ["x", "y", "z"])
    assert metric.compute() == once
    # not the mean of per-batch mIoUs
    per_batch = [summarize(confusion_matrix(pred[i], target[i], 3, 255), ["x", "y", "z"])["miou"] for i in range(4)]
    assert once["miou"] != pytest.approx(sum(per_batch) / 4, abs=1e-9)


def test_metric_rejects_values_that_are_not_classes():
    with pytest.raises(ValueError, match=r"target values \[5\]"):
        confusion_matrix(torch.zeros(3), torch.tensor([0, 5, 255]), 3, 255)


def test_a_stray_mask_value_stops_the_run_with_values_counts_and_files(tmp_path):
    write_dataset(tmp_path, fmt="binary", num_classes=2)
    stray = tmp_path / "train" / "masks" / "train0.png"
    values = np.asarray(Image.open(stray)).copy()
    values[0, 0] = 7
    Image.fromarray(values).save(stray)
    with pytest.raises(DatasetError) as err:
        datamodule(tmp_path)
    message = str(err.value)
    assert "distinct values [0, 7, 255]" in message and f"value 7: in 1 file(s), e.g. {stray}" in message
    assert "data.value_map" in message
    # Saying what the value is makes the data usable: 7 -> ignore, 255 -> foreground.
    dm = datamodule(tmp_path, value_map={255: 1, 7: 255})
    assert dm.class_names == ["background", "foreground"]
    sample = next(s for s in dm.train_set.samples + dm.val_set.samples if s.mask == stray)
    assert int(dm.decoder(sample)[0, 0]) == 255


def test_lossy_jpeg_like_masks_are_not_read_as_hundreds_of_classes(tmp_path):
    write_dataset(tmp_path, fmt="index")
    for mask in (tmp_path / "train" / "masks").glob("*.png"):
        noisy = np.asarray(Image.open(mask)).astype(int) * 100 + np.random.default_rng(0).integers(0, 3, (48, 64))
        Image.fromarray(noisy.astype(np.uint8)).save(mask)
    with pytest.raises(DatasetError, match="not class ids 0..K-1"):
        datamodule(tmp_path)
