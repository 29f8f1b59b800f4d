"""Classification data: folder and CSV layouts give the same targets; bad input is named, never silent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cvsuite.data.classification import ClassificationDataConfig, ClassificationDataModule
from cvsuite.data.common import DatasetError, check_image, read_image, seeded_split
from tests.conftest import write_class_folders


def make_dm(**cfg) -> ClassificationDataModule:
    base = {"image_size": 32, "batch_size": 4, "num_workers": 0, "augment": "none"}
    dm = ClassificationDataModule(ClassificationDataConfig(**{**base, **cfg}), "test_efficientnet")
    dm.setup("fit")
    return dm


def targets(dm) -> dict[str, object]:
    return {Path(p).resolve(): lab for p, lab in zip(dm.train_set.samples.paths, dm.train_set.samples.labels)}


def test_folders_and_csv_give_identical_samples(tmp_path):
    root = write_class_folders(tmp_path, per_class=3)
    rows = ["path,label"] + [f"{p.relative_to(root)},{p.parent.name}" for p in sorted((root / "train").rglob("*.png"))]
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    from_folders = make_dm(root=str(root))
    from_csv = make_dm(root=str(root), train_csv="train.csv", val_fraction=0.5)
    assert from_folders.class_names == from_csv.class_names == ["blue", "red"]
    both = targets(from_folders)
    assert all(both[p] == lab for p, lab in targets(from_csv).items())
    sample = from_folders.train_set[0]
    assert sample["image"].shape == (3, 32, 32) and sample["image"].dtype == torch.float32
    assert isinstance(sample["label"], int)


def test_multilabel_csv(tmp_path):
    root = write_class_folders(tmp_path, per_class=4, splits=("train",))
    files = sorted((root / "train").rglob("*.png"))
    lines = ["path,label"]
    for i, p in enumerate(files):
        lines.append(f"{p.relative_to(root)},{'cat dog' if i % 2 else 'cat'}")
    lines.append(f"{files[0].relative_to(root)},bird")  # a second row for the same image adds a label
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    dm = make_dm(root=str(root), train_csv="labels.csv", val_fraction=0.25)
    assert dm.multilabel and dm.class_names == ["bird", "cat", "dog"]
    all_items = [dm.train_set[i] for i in range(len(dm.train_set))] + [dm.val_set[i] for i in range(len(dm.val_set))]
    first = next(s for s in all_items if Path(s["path"]) == files[0].resolve())
    assert first["label"].tolist() == [1.0, 1.0, 0.0]


def test_seeded_split_is_stratified_and_reproducible():
    groups = [0] * 10 + [1] * 30
    a = seeded_split(40, 0.2, seed=1, groups=groups)
    assert a == seeded_split(40, 0.2, seed=1, groups=groups)
    assert a != seeded_split(40, 0.2, seed=2, groups=groups)
    val = a[1]
    assert sum(groups[i] == 0 for i in val) == 2 and sum(groups[i] == 1 for i in val) == 6
    assert not set(a[0]) & set(val)


def test_val_split_when_no_val_folder(tmp_path):
    root = write_class_folders(tmp_path, per_class=10, splits=("train",))
    dm = make_dm(root=str(root), val_fraction=0.2)
    assert len(dm.val_set) == 4 and len(dm.train_set) == 16


def test_unreadable_images_are_skipped_with_their_name(tmp_path):
    root = write_class_folders(tmp_path, per_class=4)
    truncated = root / "train" / "red" / "0.png"
    truncated.write_bytes(truncated.read_bytes()[:100])
    fake = root / "train" / "blue" / "notes.jpg"
    fake.write_text("this is not an image")
    with pytest.warns(UserWarning) as caught:
        dm = make_dm(root=str(root))
    messages = " ".join(str(w.message) for w in caught)
    assert str(truncated) in messages and str(fake) in messages
    assert len(dm.train_set) == 7 and {str(p) for p, _ in dm.skipped} == {str(truncated), str(fake)}
    loaded = [dm.train_set[i]["path"] for i in range(len(dm.train_set))]
    assert str(truncated) not in loaded


def test_empty_class_folder_is_an_error(tmp_path):
    root = write_class_folders(tmp_path, per_class=2)
    (root / "train" / "green").mkdir()
    with pytest.raises(DatasetError, match=r"train/green: class folder holds no images"):
        make_dm(root=str(root))


def test_csv_row_with_missing_file_or_unknown_label(tmp_path):
    root = write_class_folders(tmp_path, per_class=2, splits=("train",))
    (root / "train.csv").write_text("path,label\ntrain/red/0.png,red\ntrain/red/missing.png,red\n")
    with pytest.raises(DatasetError, match=r"train.csv:3: .*missing.png does not exist"):
        make_dm(root=str(root), train_csv="train.csv")
    (root / "train.csv").write_text("path,label\ntrain/red/0.png,red\ntrain/blue/0.png,blue\n")
    (root / "val.csv").write_text("path,label\ntrain/red/1.png,purple\n")
    with pytest.raises(DatasetError, match=r"label\(s\) \['purple'\] that are not classes"):
        make_dm(root=str(root), train_csv="train.csv", val_csv="val.csv")
    (root / "bad.csv").write_text("file,class\nx,y\n")
    with pytest.raises(DatasetError, match="must name columns 'path' and 'label'"):
        make_dm(root=str(root), train_csv="bad.csv")


def test_missing_root_and_layout(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        make_dm(root=str(tmp_path / "nope"))
    (tmp_path / "flat").mkdir()
    with pytest.raises(DatasetError, match="no train/ folder"):
        make_dm(root=str(tmp_path / "flat"))


def test_augmentation_presets_and_custom_pipeline(tmp_path):
    import albumentations as A

    root = write_class_folders(tmp_path, per_class=2)
    for preset in ("none", "light", "strong"):
        assert make_dm(root=str(root), augment=preset).train_set[0]["image"].shape == (3, 32, 32)
    from cvsuite.config import ConfigError, from_dict

    with pytest.raises(ConfigError, match="'data.augment' must be one of none, light, strong, got 'heavy'"):
        from_dict({"task": "classification", "data": {"root": str(root), "augment": "heavy"}})
    custom = A.to_dict(A.Compose([A.Resize(24, 24), A.Normalize(), A.pytorch.ToTensorV2()]))
    assert make_dm(root=str(root), train_transforms=custom).train_set[0]["image"].shape == (3, 24, 24)
    with pytest.raises(ValueError, match="data.train_transforms: not a valid albumentations pipeline"):
        make_dm(root=str(root), train_transforms={"transform": {"__class_fullname__": "NoSuchOp"}})


def test_augmentation_is_reproducible_for_a_seed(tmp_path):
    root = write_class_folders(tmp_path, per_class=2)

    def first_image(seed: int) -> torch.Tensor:
        # The loader seeds the pipelines (from the run's seed, per worker and rank): cvsuite.data.common.make_loader.
        cfg = ClassificationDataConfig(root=str(root), image_size=32, num_workers=0, augment="strong")
        dm = ClassificationDataModule(cfg, "test_efficientnet", seed=seed)
        dm.setup("fit")
        torch.manual_seed(seed)
        dm.train_dataloader()
        return torch.stack([dm.train_set[0]["image"] for _ in range(3)])

    assert torch.equal(first_image(1), first_image(1))
    assert not torch.equal(first_image(1), first_image(2))


@pytest.mark.parametrize("progressive", [False, True])
def test_the_jpeg_check_fails_exactly_where_a_full_decode_fails(tmp_path, progressive):
    """The check before training decodes JPEGs at 1/8 scale: it must refuse every file a full decode refuses (cut
    anywhere, bytes overwritten) and accept every file it reads (odd sizes, grey, CMYK, EXIF-rotated)."""
    rng = np.random.default_rng(0)
    photo = Image.fromarray((rng.random((361, 479, 3)) * 255).astype(np.uint8))
    good = {"rgb": photo, "grey": photo.convert("L").resize((75, 100)), "cmyk": photo.convert("CMYK")}
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    for name, image in good.items():
        image.save(tmp_path / f"{name}.jpg", quality=90, progressive=progressive, exif=exif if name == "rgb" else b"")
    raw = (tmp_path / "rgb.jpg").read_bytes()
    cut = {n: raw[:n] for n in (len(raw) // 3, len(raw) // 2, len(raw) - 200, len(raw) - 2)}
    garbage = {n: raw[:n] + b"\xff\xd9" * 50 + raw[n + 100 :] for n in (len(raw) // 2, len(raw) - 300)}
    for kind, files in (("cut", cut), ("garbage", garbage)):
        for n, data in files.items():
            (tmp_path / f"{kind}{n}.jpg").write_bytes(data)

    def full_decode(path: Path) -> bool:
        try:
            read_image(path)
            return True
        except DatasetError:
            return False

    for path in sorted(tmp_path.glob("*.jpg")):
        assert (check_image(path) is None) == full_decode(path), path.name
    assert all(check_image(tmp_path / f"{name}.jpg") is None for name in good)
    for n in cut:
        assert "truncated" in check_image(tmp_path / f"cut{n}.jpg")
