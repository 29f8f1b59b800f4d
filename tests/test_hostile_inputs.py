"""Hostile inputs a new user tries (issue 19), one table row each: the command, its exit code, the text it must
print, and nothing written (no run folder, no output file). Then the files predict writes for hostile image
folders (commas and other encodings in names, float TIFFs, decompression bombs), strict JSON, atomic writes and the
API's edges. Commands run in-process (`cvsuite.commands.main`) so the table stays fast."""

from __future__ import annotations

import csv
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from cvsuite.commands import main
from cvsuite.config import ConfigError, from_dict
from cvsuite.data.common import DatasetError, check_image, max_image_pixels
from cvsuite.errors import UserError
from cvsuite.outputs import atomic_open, write_csv, write_json
from tests.conftest import colour_image, tiny_recipe, write_class_folders

pytest_plugins = ["tests.surface_fixtures"]  # cls_run, seg_run, det_run

REPO = Path(__file__).resolve().parents[1]


def bomb_png(path: Path, side: int = 20_000) -> Path:
    """A valid PNG header declaring side x side pixels (above Pillow's limit) with one row of data: what a
    decompression bomb looks like to a reader that opens it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit gray
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * (side + 1)))
    path.write_bytes(data + chunk(b"IEND", b""))
    return path


def float_tiff(path: Path, shape: tuple[int, int] = (37, 45)) -> Path:
    Image.fromarray(np.random.default_rng(0).random(shape, dtype=np.float32), "F").save(path)
    return path


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> dict[str, Path]:
    """A tiny recipe, an existing file, an empty folder and a segmentation recipe for the table's commands."""
    tmp = tmp_path_factory.mktemp("hostile")
    data = write_class_folders(tmp / "data", per_class=3)
    recipe = tmp / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(data, tmp / "runs" / "exp", trainer={"max_epochs": 1})))
    listed = tmp / "list.yaml"
    listed.write_text("- task: classification\n- data: {root: x}\n")
    (tmp / "a_file").write_text("not a folder")
    (tmp / "empty").mkdir()
    return {"tmp": tmp, "data": data, "recipe": recipe, "list": listed, "file": tmp / "a_file", "empty": tmp / "empty"}


# (argv with {placeholders}, exit code, text stderr must hold). Train rows write to {tmp}/runs/exp unless they
# name another place; no row may create it, nor {tmp}/out.
TRAIN = ["train", "--config", "{recipe}"]
ROWS = [
    (TRAIN + ["--data.batch_size", "0"], "'data.batch_size' must be >= 1, got 0"),
    (TRAIN + ["--data.batch_size", "-1"], "'data.batch_size' must be >= 1, got -1"),
    (TRAIN + ["--optim.lr", "-1"], "'optim.lr' must be > 0, got -1.0"),
    (TRAIN + ["--data.image_size", "0"], "'data.image_size' must be >= 1, got 0"),
    (TRAIN + ["--data.image_size", "-64"], "'data.image_size' must be >= 1, got -64"),
    (TRAIN + ["--trainer.max_epochs", "0"], "'trainer.max_epochs' must be >= 1, or -1, got 0"),
    (TRAIN + ["--trainer.max_epochs", "-1"], "trainer.max_epochs is -1 (no limit) and nothing else ends the run"),
    (TRAIN + ["--data.num_workers", "-5"], "'data.num_workers' must be >= 0, or -1, got -5"),
    (TRAIN + ["--data.val_fraction", "1"], "'data.val_fraction' must be in (0, 1), got 1.0"),
    (TRAIN + ["--model.dropout", "1.5"], "'model.dropout' must be in [0, 1), got 1.5"),
    (TRAIN + ["--optim.betas", "[0.9, 1.5]"], "'optim.betas[1]' must be in [0, 1), got 1.5"),
    (TRAIN + ["--model.class_weights", "[1, -2]"], "'model.class_weights[1]' must be >= 0, got -2.0"),
    (TRAIN + ["--optim.lr", ".nan"], "'optim.lr' must be > 0, got nan"),
    (TRAIN + ["--run.budget", "0"], "run.budget: cannot read 0"),
    (TRAIN + ["--trainer.limit_val_batches", "1.5"], "'trainer.limit_val_batches' must be a fraction in [0, 1]"),
    (TRAIN + ["--data.val_subset", "1.5"], "'data.val_subset' must be a fraction in (0, 1] or a count >= 1"),
    (
        TRAIN + ["--run.early_stopping_patience", "2", "--trainer.limit_val_batches", "0"],
        "run.early_stopping_patience needs validation, but trainer.limit_val_batches is 0",
    ),
    (
        TRAIN + ["--run.monitor", "val_acc"],
        "'run.monitor' must name a metric the classification task logs: val_accuracy, val_precision",
    ),
    (TRAIN + ["--run.monitor", "val_loss"], "'run.mode' is max but val_loss is better when lower"),
    (TRAIN + ["--run.monitor", "val_f1", "--run.mode", "min"], "'run.mode' is min but val_f1 is better when higher"),
    (
        TRAIN + ["--data.batch_size", "--trainer.max_epochs", "1"],
        "Override '--data.batch_size' needs a value: --data.batch_size VALUE (it is followed by --trainer.max_epochs)",
    ),
    (TRAIN + ["--trainer.default_root_dir", "{file}"], "trainer.default_root_dir {file} is a file; give a folder"),
    (TRAIN + ["--trainer.default_root_dir", "{file}/run"], "{file} is a file, not a folder"),
    (["train", "--config", "{list}"], "{list}: a recipe is a mapping of sections"),
    (["check", "--config", "{list}"], "holds a list"),
    (["eval", "--ckpt", "{ckpt}", "--data.batch_size", "0"], "'data.batch_size' must be >= 1, got 0"),
    (["eval", "--ckpt", "{ckpt}", "--output", "{empty}"], "--output {empty} is a folder; give a file name"),
    (["eval", "--ckpt", "{ckpt}", "--output", "{file}/m.json"], "{file} is a file, not a folder"),
    (["eval", "--ckpt", "{ckpt}", "--predictions", "{empty}"], "--predictions {empty} is a folder"),
    (
        ["eval", "--ckpt", "{ckpt}", "--config", str(REPO / "configs/detection/finetune.yaml")],
        "is a detection recipe, but the checkpoint is a classification model",
    ),
    (
        ["eval", "--ckpt", "{ckpt}", "--config", "{recipe}", "--trainer.max_epochs", "3"],
        "trainer.max_epochs: cannot change a trained model at eval/predict/export (settings of training only)",
    ),
    (
        ["eval", "--ckpt", "{ckpt}", "--data.image_size", "64"],
        "data.image_size: cannot change a trained model",
    ),
    (["predict", "--ckpt", "{ckpt}", "--input", "{image}", "--output", "{file}"], "--output {file} is a file"),
    (["predict", "--ckpt", "{ckpt}", "--input", "{image}", "--output", "{tmp}/out", "--topk", "0"], "--topk must be"),
    (["predict", "--ckpt", "{ckpt}", "--input", "{empty}", "--output", "{tmp}/out"], "folder holds no images"),
    (["predict", "--ckpt", "{ckpt}", "--input", "{tmp}/nowhere", "--output", "{tmp}/out"], "no such file or folder"),
    (["export", "--ckpt", "{ckpt}", "--output", "{tmp}/out", "--tolerance", "-1"], "--tolerance must be >= 0"),
    (["export", "--ckpt", "{ckpt}", "--output", "{file}"], "--output {file} is a file"),
    (
        ["export", "--ckpt", "{ckpt}", "--output", "{tmp}/out", "--images", "{empty}"],
        "--images {empty}: the folder holds no images",
    ),
    (["generate", "--ckpt", "{ckpt}", "--num", "4", "--output", "{tmp}/out", "--batch-size", "0"], "--batch-size"),
    (["generate", "--ckpt", "{ckpt}", "--num", "0", "--output", "{tmp}/out"], "--num must be >= 1, got 0"),
    (["generate", "--ckpt", "{ckpt}", "--num", "2", "--output", "{file}"], "--output {file} is a file"),
]


@pytest.mark.parametrize("argv, text", ROWS, ids=[" ".join(r[0][:1] + r[0][3:]) for r in ROWS])
def test_a_hostile_command_is_named_before_anything_is_written(argv, text, place, cls_run, capsys):
    data, run = cls_run
    where = {**{k: str(v) for k, v in place.items()}, "ckpt": str(run), "image": str(next(data.rglob("*.png")))}
    before = sorted(p.name for p in run.iterdir())
    code = main([a.format(**where) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and text.format(**where) in err, err
    assert "Traceback" not in err
    assert not (place["tmp"] / "runs").exists() and not (place["tmp"] / "out").exists()
    assert not (place["file"].parent / "a_file" / "run").exists()
    assert sorted(p.name for p in run.iterdir()) == before  # no eval_metrics.json or anything else


@pytest.mark.parametrize(
    "task_recipe, changes, text",
    [
        ("detection", {"model.score_thresh": 2}, "'model.score_thresh' must be in [0, 1], got 2.0"),
        ("detection", {"model.nms_iou": -0.1}, "'model.nms_iou' must be in [0, 1]"),
        ("detection", {"data.image_size": 500}, "multiple of 32 for detection"),
        ("segmentation", {"data.crop_size": 0}, "'data.crop_size' must be >= 1"),
        ("segmentation", {"data.ignore_index": -1}, "'data.ignore_index' must be in [0, 65535]"),
        ("regression", {"model.huber_delta": 0}, "'model.huber_delta' must be > 0"),
        ("generation", {"model.latent_dim": 0}, "'model.latent_dim' must be >= 1"),
        (
            "classification",
            {"finetune.cache_features": True, "finetune.freeze_share": None, "finetune.freeze_epochs": 0},
            "finetune.cache_features applies to a frozen phase",
        ),
        ("classification", {"run.seed": -1}, "'run.seed' must be in [0, 4294967295]"),
    ],
)
def test_every_shipped_task_checks_its_ranges(task_recipe, changes, text):
    recipe = next((REPO / "configs" / task_recipe).glob("*.yaml"))
    raw = yaml.safe_load(recipe.read_text())
    for key, value in changes.items():
        section, name = key.split(".")
        raw.setdefault(section, {})[name] = value
    with pytest.raises(ConfigError) as err:
        from_dict(raw)
    assert text in str(err.value)


def test_the_monitors_a_recipe_may_name_are_what_the_tasks_log(cls_run, seg_run, det_run):
    from cvsuite.config import MONITORS

    for task, (_, run) in (("classification", cls_run), ("segmentation", seg_run), ("detection", det_run)):
        with (run / "metrics.csv").open() as fh:
            header = next(csv.reader(fh))
        # COCO's per-area scores are logged when the split holds objects of that size (these tiny shapes: small).
        expected = {m for m in MONITORS[task] if not m.endswith(("_medium", "_large"))}
        assert expected <= set(header), (task, expected - set(header))


def test_the_shipped_recipes_are_within_range():
    for recipe in sorted((REPO / "configs").rglob("*.yaml")):
        from_dict(yaml.safe_load(recipe.read_text()), str(recipe))


# ---- images that cannot be read -------------------------------------------------------------------------------
def test_check_image_names_float_tiffs_bombs_and_truncated_files(tmp_path):
    good = tmp_path / "good.png"
    colour_image((200, 10, 10)).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    sixteen = tmp_path / "sixteen.png"
    Image.fromarray((np.arange(30 * 40).reshape(30, 40) * 50).astype(np.uint16)).save(sixteen)
    assert check_image(good) is None and check_image(sixteen) is None
    assert "floating-point image (mode F)" in check_image(float_tiff(tmp_path / "f.tif"))
    assert "floating-point image (mode F)" in check_image(tmp_path / "f.tif", decode=False)  # the quick check too
    reason = check_image(bomb_png(tmp_path / "bomb.png"), decode=False)
    assert "image too large" in reason and f"{max_image_pixels():,}" in reason
    assert check_image(truncated) is not None
    assert max_image_pixels() == 2 * Image.MAX_IMAGE_PIXELS == 178_956_970  # the documented default


def test_check_and_train_name_a_float_tiff_before_the_run_folder(tmp_path, capsys):
    data = write_class_folders(tmp_path / "data", per_class=3)
    float_tiff(data / "train" / "red" / "float.tif")
    bomb_png(data / "train" / "blue" / "bomb.png")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(data, tmp_path / "run", trainer={"max_epochs": 1})))
    assert main(["check", "--config", str(recipe)]) == 2
    out = capsys.readouterr().out
    assert "float.tif (floating-point image (mode F)" in out and "bomb.png (image too large" in out
    assert main(["train", "--config", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "float.tif" in err and "bomb.png" in err and "--no-check" in err
    assert not (tmp_path / "run").exists()


def test_train_with_no_check_skips_unreadable_images_with_a_warning(tmp_path, capsys):
    data = write_class_folders(tmp_path / "data", per_class=3)
    float_tiff(data / "train" / "red" / "float.tif")
    recipe = tmp_path / "r.yaml"
    trainer = {"max_epochs": 1, "num_sanity_val_steps": 0}
    recipe.write_text(yaml.safe_dump(tiny_recipe(data, tmp_path / "run", trainer=trainer, run={"plots": False})))
    with pytest.warns(UserWarning, match=r"Skipping unreadable image .*float.tif: floating-point"):
        assert main(["train", "--config", str(recipe), "--no-check"]) == 0
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").is_file()


def test_one_image_per_class_stops_before_the_run_folder(tmp_path, capsys):
    data = write_class_folders(tmp_path / "data", per_class=1, splits=("train",))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(data, tmp_path / "run", trainer={"max_epochs": 1})))
    assert main(["train", "--config", str(recipe), "--no-check"]) == 2
    err = capsys.readouterr().err
    assert "the validation split is empty" in err and "val_accuracy" in err and "limit_val_batches 0" in err
    assert not (tmp_path / "run").exists()


# ---- what predict writes ----------------------------------------------------------------------------------------
def test_predict_writes_valid_csv_for_any_file_name_and_skips_bad_images(cls_run, tmp_path, capsys):
    _, run = cls_run
    folder = tmp_path / "in"
    folder.mkdir()
    colour_image((220, 40, 40), size=45).save(folder / "a,b.png")
    colour_image((40, 40, 220), size=33).save(folder / 'quote "x".png')
    latin1 = os.fsencode(folder) + b"/caf\xe9.png"  # a Latin-1 name: not valid UTF-8
    colour_image((40, 40, 220)).save(os.fsdecode(latin1))
    float_tiff(folder / "float.tif")
    bomb_png(folder / "bomb.png")
    (folder / "cut.png").write_bytes((folder / "a,b.png").read_bytes()[:80])
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="Skipping unreadable image"):
        assert main(["predict", "--ckpt", str(run), "--input", str(folder), "--output", str(out)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"predict: 3 image(s) predicted into {out / 'predictions.csv'}; 3 skipped")
    assert "top-1: " in line
    text = (out / "predictions.csv").read_bytes().decode("utf-8")  # valid UTF-8 whatever the names
    rows = list(csv.DictReader(text.splitlines()))
    assert sorted(Path(r["path"]).name for r in rows) == sorted(["a,b.png", 'quote "x".png', "caf\\xe9.png"])
    assert all(r["label_1"] in ("red", "blue") and 0 <= float(r["score_1"]) <= 1 for r in rows)
    assert set(rows[0]) == {"path", "label_1", "score_1", "label_2", "score_2"}
    skipped = json.loads((out / "skipped.json").read_text())
    assert sorted(Path(s["path"]).name for s in skipped) == ["bomb.png", "cut.png", "float.tif"]
    assert all(s["reason"] for s in skipped)
    assert not list(out.glob(".*partial*"))  # no temporary file left


def test_a_clean_predict_leaves_an_empty_skipped_list(cls_run, tmp_path, capsys):
    data, run = cls_run
    out = tmp_path / "out"
    (out).mkdir()
    (out / "skipped.json").write_text('[{"path": "old.png", "reason": "from an earlier run"}]')
    image = next(data.rglob("*.png"))
    assert main(["predict", "--ckpt", str(run), "--input", str(image), "--output", str(out), "--topk", "1"]) == 0
    assert json.loads((out / "skipped.json").read_text()) == []
    assert next(csv.reader((out / "predictions.csv").open())) == ["path", "label_1", "score_1"]


def test_segmentation_predictions_csv_quotes_names(seg_run, tmp_path):
    data, run = seg_run
    folder = tmp_path / "in"
    folder.mkdir()
    colour_image((90, 90, 90), size=40).save(folder / "x,y.png")
    out = tmp_path / "out"
    assert main(["predict", "--ckpt", str(run), "--input", str(folder), "--output", str(out)]) == 0
    with (out / "predictions.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [Path(r["path"]).name for r in rows] == ["x,y.png"] and Path(rows[0]["mask"]).is_file()
    assert sum(float(v) for k, v in rows[0].items() if k.startswith("fraction_")) == pytest.approx(1, abs=1e-4)


# ---- eval with the training recipe, strict JSON, atomic writes ----------------------------------------------------
def test_eval_ignores_the_recipes_training_keys_with_one_note(cls_run, tmp_path, capsys, caplog):
    data, run = cls_run
    stored = yaml.safe_load((run / "config.yaml").read_text())
    recipe = {**stored, "trainer": {**stored["trainer"], "max_epochs": 3, "default_root_dir": str(tmp_path / "x")}}
    recipe["optim"] = {**stored["optim"], "lr": 0.5}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "m.json"
    with caplog.at_level("INFO", logger="cvsuite"):
        assert main(["eval", "--ckpt", str(run), "--config", str(path), "--output", str(out)]) == 0
    notes = [r.getMessage() for r in caplog.records if "training settings ignored" in r.getMessage()]
    assert len(notes) == 1 and "trainer.max_epochs" in notes[0] and "optim.lr" in notes[0]
    err = capsys.readouterr().err
    assert f"wrote {out}" in err and "sample(s) of the val split scored" in err
    assert json.loads(out.read_text())["num_samples"] > 0
    assert not (tmp_path / "x").exists()


def test_eval_takes_a_recipe_with_empty_training_sections(cls_run, tmp_path):
    from cvsuite.checkpoint import CONFIG_KEY, read_checkpoint
    from cvsuite.run import checkpoint_config
    from cvsuite.tasks import get_spec

    _, run = cls_run
    stored = read_checkpoint(run / "checkpoints" / "best.ckpt")
    path = tmp_path / "recipe.yaml"
    path.write_text("task: classification\noptim:\ntrainer:\n")
    cfg = checkpoint_config(stored, path, [], get_spec("classification"))
    assert cfg.to_dict() == from_dict(stored[CONFIG_KEY]).to_dict()  # the empty sections change nothing


def test_json_is_strict_and_writes_are_atomic(tmp_path):
    path = write_json(tmp_path / "m.json", {"r2": float("nan"), "x": [float("inf"), np.float32(0.5)], "n": np.int64(3)})
    assert json.loads(path.read_text(), parse_constant=pytest.fail) == {"r2": None, "x": [None, 0.5], "n": 3}

    target = write_csv(tmp_path / "p.csv", ["path", "v"], [["old", 1]])

    def rows():
        yield ["a", 1]
        raise RuntimeError("the model failed half-way")

    with pytest.raises(RuntimeError):
        write_csv(target, ["path", "v"], rows())
    assert target.read_bytes() == b"path,v\r\nold,1\r\n"  # the earlier file, whole
    with pytest.raises(KeyboardInterrupt), atomic_open(tmp_path / "new.json") as fh:
        fh.write("{")
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "p.csv"]


def test_a_constant_regression_target_gives_null_not_nan_in_metrics_json(tmp_path):
    from cvsuite.run import train
    from tests.test_regression import recipe as regression_recipe
    from tests.test_regression import write_brightness

    root = write_brightness(tmp_path / "data", n=10)
    rows = (root / "train.csv").read_text().splitlines()
    (root / "train.csv").write_text(
        "\n".join([rows[0]] + [",".join([r.split(",")[0], "0.5", "0.25"]) for r in rows[1:]])
    )
    raw = regression_recipe(root, tmp_path / "run")
    raw["trainer"]["max_epochs"] = 1
    raw["run"]["plots"] = False
    run = train(from_dict(raw))
    metrics = json.loads((run / "metrics.json").read_text(), parse_constant=pytest.fail)
    assert metrics["r2"] is None and metrics["per_target"]["brightness"]["r2"] is None


# ---- the Python API's edges ----------------------------------------------------------------------------------------
def test_api_names_empty_and_nan_arrays_and_bomb_files(tmp_path):
    from cvsuite.api import to_rgb

    with pytest.raises(UserError, match=r"shape \(0, 10, 3\) holds no pixels"):
        to_rgb(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(UserError, match="holds 48 NaN or infinite value"):
        to_rgb(np.full((4, 4, 3), np.nan, np.float32))
    with pytest.raises(DatasetError, match=r"bomb.png: image too large"):
        to_rgb(bomb_png(tmp_path / "bomb.png"))
    grey = to_rgb(np.full((5, 7), 0.5, np.float32))
    assert grey.shape == (5, 7, 3) and grey.dtype == np.uint8 and (grey == 128).all()
