"""The Python API: cvsuite.load(ckpt)(image) gives typed results for every task, from paths, PIL images, arrays
and lists, with the numbers of tools/predict.py; cvsuite.train runs a recipe; bad inputs are named errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import cvsuite
from cvsuite.api import Classification, Detections, Segmentation, override_args, to_rgb
from cvsuite.data.common import DatasetError
from cvsuite.run import predict
from tests.conftest import tiny_recipe

pytest_plugins = ["tests.surface_fixtures"]  # cls_run, seg_run, det_run

REPO = Path(__file__).resolve().parents[1]


def test_import_cvsuite_is_light():
    code = "import sys, cvsuite; print('torch' in sys.modules); print(callable(cvsuite.load))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]


def test_classification_from_path_pil_array_and_list_matches_predict_tool(cls_run, tmp_path):
    data, run = cls_run
    model = cvsuite.load(run / "checkpoints/best.ckpt", device="cpu")
    assert model.task == "classification" and model.class_names == ["blue", "red"]
    paths = sorted((data / "val" / "red").glob("*.png"))[:3]
    one = model(paths[0], topk=2)
    assert isinstance(one, Classification)
    assert one.labels[0] in ("blue", "red") and sorted(one.labels) == ["blue", "red"]
    assert one.scores[0] >= one.scores[1] and abs(sum(one.probs) - 1) < 1e-5
    pil = model(Image.open(paths[0]))
    arr = model(np.asarray(Image.open(paths[0])))
    assert pil.scores == pytest.approx(one.scores) and arr.scores == pytest.approx(one.scores)
    many = model([str(p) for p in paths])
    assert isinstance(many, list) and len(many) == 3
    # same numbers as tools/predict.py
    predict(run / "checkpoints/best.ckpt", paths[0], tmp_path / "preds")
    row = json.loads((tmp_path / "preds/predictions.json").read_text())[0]
    assert [t["label"] for t in row["topk"]] == one.labels
    assert [t["score"] for t in row["topk"]] == pytest.approx(one.scores, abs=1e-5)


def test_segmentation_mask_at_input_size_with_probabilities(seg_run, tmp_path):
    data, run = seg_run
    model = cvsuite.load(run / "checkpoints/best.ckpt", device="cpu")
    path = sorted((data / "val" / "images").glob("*"))[0]
    h, w = np.asarray(Image.open(path)).shape[:2]
    res = model(path, probs=True)
    assert isinstance(res, Segmentation)
    assert res.mask.shape == (h, w) and res.probs.shape == (2, h, w)
    np.testing.assert_allclose(res.probs.sum(0), 1, atol=1e-5)
    np.testing.assert_array_equal(res.probs.argmax(0), res.mask)
    assert model(path).probs is None
    # a different-sized second image in the same call keeps its own size
    small = np.asarray(Image.open(path).resize((w // 2, h // 2)))
    both = model([path, small])
    assert both[1].mask.shape == (h // 2, w // 2)
    predict(run / "checkpoints/best.ckpt", path, tmp_path / "preds")
    written = np.asarray(Image.open(next((tmp_path / "preds/masks").glob("*.png"))))
    np.testing.assert_array_equal(written, res.mask)


def test_detection_boxes_in_original_pixels_match_predict_tool(det_run, tmp_path):
    data, run = det_run
    model = cvsuite.load(run / "checkpoints/best.ckpt", device="cpu", overrides={"model.score_thresh": 0.0})
    path = sorted((data / "val/images").glob("*.png"))[0]
    res = model(path)
    assert isinstance(res, Detections)
    assert res.boxes.shape == (len(res.scores), 4) and len(res.labels) == len(res.scores) > 0
    assert (np.diff(res.scores) <= 0).all()
    assert set(res.labels) <= set(model.class_names)
    predict(run / "checkpoints/best.ckpt", path, tmp_path / "preds", overrides=["--model.score_thresh", "0.0"])
    dets = json.loads((tmp_path / "preds/detections.json").read_text())[0]["detections"]
    assert len(dets) == len(res.scores)
    np.testing.assert_allclose([d["box"] for d in dets], res.boxes, atol=0.01)
    np.testing.assert_allclose([d["score"] for d in dets], res.scores, atol=1e-4)


def test_images_of_any_mode_become_rgb_uint8(tmp_path):
    gray16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    out = to_rgb(tmp_path / "g16.png")
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == round(63000 * 255 / 65535)  # scaled, not clipped to 255
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    assert to_rgb(rgba)[0, 0].tolist() == [200, 0, 0]
    assert to_rgb(np.full((2, 2), 0.5, np.float32))[0, 0].tolist() == [128, 128, 128]
    assert to_rgb(Image.new("L", (3, 2), 7)).shape == (2, 3, 3)


def test_bad_inputs_are_named_errors(cls_run, tmp_path):
    _, run = cls_run
    model = cvsuite.load(run / "checkpoints/best.ckpt", device="cpu")
    with pytest.raises(FileNotFoundError, match="nope.png"):
        model(tmp_path / "nope.png")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError, match="notes.txt"):
        model(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="shape"):
        model(np.zeros((2, 3, 4, 5), np.uint8))
    with pytest.raises(TypeError):
        model(42)


def test_unknown_task_in_checkpoint_is_named(cls_run, tmp_path):
    import torch

    _, run = cls_run
    stored = torch.load(run / "checkpoints/best.ckpt", weights_only=False)
    stored["cvsuite_config"]["task"] = "pose"
    torch.save(stored, tmp_path / "odd.ckpt")
    with pytest.raises((KeyError, ValueError), match="pose"):
        cvsuite.load(tmp_path / "odd.ckpt")


def test_train_from_python_with_dict_overrides(colour_data, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(colour_data, tmp_path / "unused")))
    run = cvsuite.train(
        recipe,
        overrides={
            "trainer.max_epochs": 1,
            "trainer.default_root_dir": str(tmp_path / "run"),
            "trainer.num_sanity_val_steps": 0,
            "run.plots": False,
        },
    )
    assert run == tmp_path / "run" and (run / "checkpoints/best.ckpt").is_file()
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["max_epochs"] == 1


def test_override_args_write_values_as_yaml():
    assert override_args({"a.b": 1, "c.d": [1, 2], "e.f": None, "g.h": "x"}) == [
        "--a.b", "1", "--c.d", "[1, 2]", "--e.f", "null", "--g.h", "x",
    ]  # fmt: skip
