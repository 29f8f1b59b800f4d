"""Image regression: CSV targets (one or several columns), MSE/MAE/Huber losses that fall on learnable data,
MAE/RMSE/R² against hand-computed values, the scatter plot, and predict/eval/export/the API like other tasks."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cvsuite
from cvsuite.commands import main
from cvsuite.config import from_dict, load_config
from cvsuite.data.common import DatasetError
from cvsuite.data.regression import read_targets
from cvsuite.metrics.regression import regression_metrics
from cvsuite.run import train
from cvsuite.tasks.regression import RegressionTask
from tests.conftest import TINY_BACKBONE

REPO = Path(__file__).resolve().parents[1]


def write_brightness(root: Path, n: int = 24, size: int = 32) -> Path:
    """Gray images whose brightness (0..1) and its square are the targets: learnable in a few steps."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    with (root / "train.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "brightness", "squared"])
        for i in range(n):
            b = i / (n - 1)
            px = np.clip(b * 255 + rng.normal(0, 8, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(root / f"images/{i}.png")
            w.writerow([f"images/{i}.png", f"{b:.4f}", f"{b * b:.4f}"])
    return root


def recipe(root: Path, out: Path, **model) -> dict:
    return {
        "task": "regression",
        "data": {"root": str(root), "image_size": 32, "batch_size": 8, "num_workers": 0, "augment": "none"},
        "model": {"backbone": TINY_BACKBONE, "pretrained": False, "dropout": 0.0, **model},
        "optim": {"optimizer": "adam", "lr": 0.01, "weight_decay": 0.0, "scheduler": "none"},
        "run": {"plots": True},
        "trainer": {"max_epochs": 4, "default_root_dir": str(out), "enable_progress_bar": False,
                    "enable_model_summary": False, "log_every_n_steps": 1, "num_sanity_val_steps": 0},
    }  # fmt: skip


def test_metrics_match_hand_computed_values():
    true = np.array([[1.0], [2.0], [3.0], [4.0]])
    pred = np.array([[1.5], [2.0], [2.0], [4.0]])
    m = regression_metrics(pred, true, ["y"])
    assert m["mae"] == pytest.approx((0.5 + 0 + 1 + 0) / 4)
    assert m["rmse"] == pytest.approx(np.sqrt((0.25 + 1) / 4))
    assert m["r2"] == pytest.approx(1 - 1.25 / 5.0)  # ss_tot = 2.25 + .25 + .25 + 2.25


def test_r2_of_a_constant_target_is_undefined_without_a_warning():
    true = np.array([[3.0, 1.0], [3.0, 2.0], [3.0, 4.0]])
    pred = np.array([[2.0, 1.0], [3.0, 2.0], [4.0, 3.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "Mean of empty slice" RuntimeWarning would raise here
        one = regression_metrics(pred[:, :1], true[:, :1], ["flat"])
        both = regression_metrics(pred, true, ["flat", "y"])
    assert np.isnan(one["r2"]) and one["per_target"]["flat"]["r2"] is None
    # the mean over targets leaves out the undefined one: R² of y = 1 - 1 / (sum of (y - 7/3)^2 = 14/3)
    assert both["r2"] == pytest.approx(1 - 1 / (14 / 3))
    assert both["per_target"]["flat"]["r2"] is None


def test_csv_errors_name_the_line(tmp_path):
    (tmp_path / "a.csv").write_text("path,value\nx.png,abc\n")
    with pytest.raises(DatasetError, match=r"a.csv:2: not a number"):
        read_targets(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("value,path\n")
    with pytest.raises(DatasetError, match="header"):
        read_targets(tmp_path / "b.csv")
    (tmp_path / "c.csv").write_text("path,value\nmissing.png,1\n")
    with pytest.raises(DatasetError, match="missing.png not found"):
        read_targets(tmp_path / "c.csv")


@pytest.mark.parametrize("loss", ["mse", "mae", "huber"])
def test_each_loss_falls_on_learnable_data(tmp_path, loss):
    root = write_brightness(tmp_path / "d", n=16)
    cfg = from_dict(recipe(root, tmp_path / "run", loss=loss))
    from cvsuite.tasks.regression import build_datamodule, build_module

    dm = build_datamodule(cfg)
    dm.setup("fit")
    module = build_module(cfg, dm)
    opt = torch.optim.Adam(module.parameters(), lr=0.01)
    batch = next(iter(dm.train_dataloader()))
    losses = []
    for _ in range(15):
        loss_value = module.criterion(module(batch["image"]), batch["target"])
        opt.zero_grad()
        loss_value.backward()
        opt.step()
        losses.append(float(loss_value.detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_train_eval_predict_export_and_api(tmp_path, capsys):
    root = write_brightness(tmp_path / "d")
    run = train(from_dict(recipe(root, tmp_path / "run")))
    for name in ("scatter.png", "metrics.json", "curves.png", "checkpoints/best.ckpt"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"mae", "rmse", "r2", "per_target"} <= set(metrics)
    assert set(metrics["per_target"]) == {"brightness", "squared"}
    ckpt = run / "checkpoints/best.ckpt"
    module = RegressionTask.load_from_checkpoint(ckpt, map_location="cpu", pretrained=False)
    assert module.hparams.target_mean[0] == pytest.approx(np.mean([i / 23 for i in range(24)]), abs=0.1)

    assert main(["eval", "--ckpt", str(ckpt)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out.strip().splitlines()[-1])["mae"] == pytest.approx(metrics["mae"], abs=1e-5)
    assert "brightness" in err

    image = root / "images/5.png"
    assert main(["predict", "--ckpt", str(ckpt), "--input", str(image), "--output", str(tmp_path / "p")]) == 0
    rows = list(csv.DictReader((tmp_path / "p/predictions.csv").open()))
    model = cvsuite.load(ckpt, device="cpu")
    res = model(image)
    assert set(res.values) == {"brightness", "squared"}
    assert float(rows[0]["brightness"]) == pytest.approx(res.values["brightness"], abs=1e-4)

    assert main(["export", "--ckpt", str(ckpt), "--output", str(tmp_path / "x"), "--images", str(image)]) == 0
    meta = json.loads((tmp_path / "x/model.json").read_text())
    assert meta["target_names"] == ["brightness", "squared"] and meta["outputs"] == ["values"]


def test_the_recipe_is_valid():
    cfg = load_config(REPO / "configs/regression/finetune.yaml")
    assert cfg.task == "regression" and cfg.model.loss == "huber"
