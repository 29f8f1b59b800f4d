"""The data contract stored with a checkpoint: eval scores exactly the training-time validation files, overrides
are a declared set, and bad data is named before any run folder exists."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cvsuite.config import ConfigError
from cvsuite.data.common import DatasetError, read_image
from cvsuite.run import evaluate, train
from tests.conftest import CLASSES, colour_image, tiny_recipe, write_class_folders


@pytest.fixture(scope="module")
def run_without_val(tmp_path_factory):
    """A classification run whose validation split is a seeded split of train/ (no val/ folder)."""
    tmp = tmp_path_factory.mktemp("contract")
    root = write_class_folders(tmp / "data", per_class=10, splits=("train",))
    from cvsuite.config import from_dict

    cfg = from_dict(tiny_recipe(root, tmp / "run", trainer={"max_epochs": 1}, run={"plots": False}))
    run_dir = train(cfg)
    return root, run_dir / "checkpoints" / "best.ckpt"


def test_eval_scores_the_stored_files_after_images_were_added(run_without_val, tmp_path):
    root, ckpt = run_without_val
    before = evaluate(ckpt, output=str(tmp_path / "a.json"))
    assert before["split"] == "val" and before["split_files"] == "stored" and before["num_samples"] == 4
    assert before["data_root"] == str(root.resolve())
    # 20 more images in train/: a fresh seeded split would now hold other (and more) files.
    for i, (name, colour) in enumerate(CLASSES.items()):
        for k in range(10):
            colour_image(colour, seed=1000 + 10 * i + k).save(root / "train" / name / f"added_{k}.png")
    try:
        after = evaluate(ckpt, output=str(tmp_path / "b.json"))
        assert after["num_samples"] == before["num_samples"]
        for key in ("accuracy", "loss", "f1_macro"):
            if key in before:
                assert after[key] == pytest.approx(before[key], abs=1e-9), key
        # Re-deriving deliberately uses the folder as it is now, and says so.
        derived = evaluate(ckpt, overrides=["--data.rederive_split", "true"], output=str(tmp_path / "c.json"))
        assert derived["split_files"] == "derived" and derived["num_samples"] == 8
    finally:
        for p in root.rglob("added_*.png"):
            p.unlink()


def test_another_seed_is_refused_not_ignored(run_without_val, tmp_path):
    _, ckpt = run_without_val
    with pytest.raises(ConfigError, match=r"run.seed: cannot change a trained model"):
        evaluate(ckpt, overrides=["--run.seed", "7"], output=str(tmp_path / "x.json"))
    with pytest.raises(ConfigError, match=r"model.dropout: cannot change a trained model"):
        evaluate(ckpt, overrides=["--model.dropout", "0.5"], output=str(tmp_path / "x.json"))


def test_config_file_merges_onto_the_stored_recipe(run_without_val, tmp_path):
    _, ckpt = run_without_val
    recipe = tmp_path / "eval.yaml"
    recipe.write_text(yaml.safe_dump({"data": {"batch_size": 1}}))  # a partial file: the rest is the checkpoint's
    small_batches = evaluate(ckpt, config=str(recipe), output=str(tmp_path / "m.json"))
    default = evaluate(ckpt, output=str(tmp_path / "d.json"))
    assert small_batches["accuracy"] == pytest.approx(default["accuracy"])
    assert small_batches["num_samples"] == default["num_samples"]


def test_missing_or_changed_stored_file_is_named(run_without_val, tmp_path):
    root, ckpt = run_without_val
    stored = torch.load(ckpt, map_location="cpu", weights_only=False)
    state = next(v for v in stored.values() if isinstance(v, dict) and "val_files" in v)
    victim = root / state["val_files"][0][0]
    saved = victim.read_bytes()
    try:
        victim.unlink()
        with pytest.raises(DatasetError, match=f"1 missing: {state['val_files'][0][0]}"):
            evaluate(ckpt, output=str(tmp_path / "x.json"))
        colour_image((0, 200, 0), seed=5).save(victim)  # same name, other pixels
        with pytest.raises(DatasetError, match="changed since training.*--data.rederive_split true"):
            evaluate(ckpt, output=str(tmp_path / "x.json"))
    finally:
        victim.write_bytes(saved)


def test_split_test_and_val_root_score_new_data_and_say_so(run_without_val, tmp_path):
    root, ckpt = run_without_val
    other = write_class_folders(tmp_path / "other", per_class=3, splits=("test",))
    out = evaluate(ckpt, overrides=["--data.val_root", str(other / "test")], output=str(tmp_path / "v.json"))
    assert out["split_files"] == "val_root" and out["num_samples"] == 6 and out["data_root"] == str(other / "test")
    write_class_folders(root, per_class=2, splits=("test",))
    try:
        out = evaluate(ckpt, output=str(tmp_path / "t.json"), split="test")
        assert out["split"] == "test" and out["num_samples"] == 4
    finally:
        import shutil

        shutil.rmtree(root / "test")
    with pytest.raises(DatasetError, match="has no test split: no test/ folder and no test list"):
        evaluate(ckpt, output=str(tmp_path / "t.json"), split="test")


def test_eval_json_of_the_tool_has_the_split_keys(run_without_val, tmp_path, capsys):
    from tools.eval import main

    _, ckpt = run_without_val
    assert main(["--ckpt", str(ckpt), "--output", str(tmp_path / "e.json")]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"split", "split_files", "data_root", "num_samples", "accuracy"} <= set(printed)
    assert main(["--ckpt", str(ckpt), "--model.backbone", "resnet18"]) == 2
    assert "cannot change a trained model" in capsys.readouterr().err


# ---- bad data named before a run folder exists ---------------------------------------------------------------------
def _train_tool(tmp_path: Path, recipe: dict) -> int:
    from tools.train import main

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return main(["--config", str(path)])


def test_one_class_is_named_before_the_run_folder(tmp_path, capsys):
    root = tmp_path / "data"
    for i in range(4):
        (root / "train" / "red").mkdir(parents=True, exist_ok=True)
        colour_image((200, 0, 0), seed=i).save(root / "train" / "red" / f"{i}.png")
    assert _train_tool(tmp_path, tiny_recipe(root, tmp_path / "runs" / "exp")) == 2
    assert "found one class (red)" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_empty_detection_set_is_named(tmp_path, capsys):
    from cvsuite.data.formats import ImageRecord, write_split

    images = tmp_path / "raw"
    images.mkdir()
    records = []
    for i in range(4):
        path = images / f"{i}.png"
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(path)
        records.append(
            ImageRecord(path, 32, 32, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, bool), i + 1)
        )
    write_split(records, ["thing"], tmp_path / "data" / "train", "coco")
    recipe = {
        "task": "detection",
        "data": {"root": str(tmp_path / "data"), "image_size": 64, "num_workers": 0},
        "model": {"backbone": "test_efficientnet", "pretrained": False},
        "trainer": {"default_root_dir": str(tmp_path / "runs" / "exp")},
    }
    assert _train_tool(tmp_path, recipe) == 2
    assert "holds no objects at all (3 images, 0 boxes)" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_too_few_gan_images_are_named(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    colour_image((10, 200, 10)).save(tmp_path / "data" / "only.png")
    recipe = {
        "task": "generation",
        "data": {"root": str(tmp_path / "data"), "image_size": 32, "num_workers": 0},
        "model": {"discriminator": "dcgan", "pretrained": False},
        "trainer": {"default_root_dir": str(tmp_path / "runs" / "exp")},
    }
    assert _train_tool(tmp_path, recipe) == 2
    assert "1 readable image(s); a GAN needs at least 2" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


# ---- reading -------------------------------------------------------------------------------------------------------
def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], np.uint16).repeat(4, axis=0)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    image = read_image(tmp_path / "deep.png")
    assert image.dtype == np.uint8 and image.shape == (4, 4, 3)
    assert image[0, :, 0].tolist() == [0, 1, 128, 255]
    Image.fromarray(np.ones((4, 4), np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(DatasetError, match="float.tif: floating-point image"):
        read_image(tmp_path / "float.tif")


def test_generation_loader_is_reproducible(tmp_path):
    from cvsuite.data.generation import GenerationDataConfig, GenerationDataModule

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(6):
        # Left half bright, right half dark: a flip is visible in every image.
        pixels = np.zeros((16, 16, 3), np.uint8)
        pixels[:, :8] = 40 * i + 20
        Image.fromarray(pixels).save(folder / f"{i}.png")
    cfg = GenerationDataConfig(root=str(folder), image_size=16, batch_size=6, images_per_epoch=6, num_workers=0)

    def first_batch(seed: int) -> torch.Tensor:
        L.seed_everything(seed, verbose=False)
        dm = GenerationDataModule(cfg, seed=seed)
        dm.setup("fit")
        return torch.cat([next(iter(dm.train_dataloader()))["image"] for _ in range(3)])

    assert torch.equal(first_batch(3), first_batch(3))
    assert not torch.equal(first_batch(3), first_batch(4))


def test_predict_refuses_an_override_that_cannot_change_the_model(run_without_val, tmp_path, capsys):
    from tools.predict import main

    root, ckpt = run_without_val
    image = next((root / "train").rglob("*.png"))
    assert main(["--ckpt", str(ckpt), "--input", str(image), "--output", str(tmp_path / "p")]) == 0
    assert (
        main(["--ckpt", str(ckpt), "--input", str(image), "--output", str(tmp_path / "q"), "--data.image_size", "64"])
        == 2
    )
    assert "data.image_size: cannot change a trained model" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


def test_validation_loader_under_ddp_does_not_pad(tmp_path):
    """With torch.distributed initialised, validation gets a sampler that gives each image to one rank only."""
    import torch.distributed as dist
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

    from cvsuite.data.common import make_loader

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        dataset = list(range(5))
        loader = make_loader(dataset, batch_size=2, train=False, num_workers=0)
        assert isinstance(loader.sampler, UnrepeatedDistributedSampler)
        assert sorted(i for batch in loader for i in batch.tolist()) == dataset
        assert not isinstance(make_loader(dataset, 2, train=True, num_workers=0).sampler, UnrepeatedDistributedSampler)
    finally:
        dist.destroy_process_group()
