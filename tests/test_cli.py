"""The cvsuite command: fast --help without torch, each sub-command's flags, the recipe's keys, train/eval/predict
through it (best epoch at the end, eval's table on stderr and one JSON line on stdout, COCO ground truth next to
detection predictions), and the console script entry in pyproject.toml."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import tomllib
import yaml

from cvsuite.commands import COMMANDS, main
from tests.conftest import tiny_recipe

pytest_plugins = ["tests.surface_fixtures"]  # cls_run, det_run

REPO = Path(__file__).resolve().parents[1]


def test_help_is_fast_and_imports_no_torch():
    code = (
        "import sys, runpy; sys.argv = ['train.py', '--help']\n"
        "try:\n    runpy.run_path('tools/train.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO_TORCH')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert "--config" in out and "--resume" in out and "--section.key value" in out
    assert out.strip().endswith("NO_TORCH")


def test_every_subcommand_lists_its_flags(capsys):
    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    for name in ("train", "eval", "predict", "export", "check", "generate"):
        assert name in top and name in COMMANDS
        assert main([name, "--help"]) == 0
        assert "--section.key value" in capsys.readouterr().out
    assert main(["export", "--help"]) == 0
    assert "{onnx,torchscript}" in capsys.readouterr().out


def test_train_help_with_a_recipe_lists_its_keys_values_and_types(capsys):
    assert main(["train", "--config", str(REPO / "configs/detection/finetune.yaml"), "--help"]) == 0
    out = capsys.readouterr().out
    assert "task: detection" in out
    line = next(x for x in out.splitlines() if "--model.architecture" in x)
    # the value in this recipe, then the choices the key accepts
    assert "'fcos'" in line and line.rstrip().endswith("Literal['fcos', 'retinanet', 'faster_rcnn']")
    assert any("--trainer.max_epochs" in x for x in out.splitlines())


def test_console_script_entry_point():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["cvsuite"] == "cvsuite.commands:main"
    assert {"onnx", "dev"} <= set(project["optional-dependencies"])
    out = subprocess.run([sys.executable, "-m", "cvsuite", "--help"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and "generate" in out.stdout


def test_train_prints_the_best_epoch_then_eval_table_and_json(colour_data, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(colour_data, tmp_path / "run", run={"plots": False})))
    assert main(["train", "--config", str(recipe), "--trainer.num_sanity_val_steps", "0"]) == 0
    captured = capsys.readouterr()
    assert "dataset check" not in captured.err  # clean data: the quick check stays silent
    best = [x for x in captured.err.splitlines() if x.startswith("best val_accuracy")]
    assert len(best) == 1 and " at epoch " in best[0]
    assert captured.out.strip().splitlines()[-1] == f"run folder: {tmp_path / 'run'}"
    epochs = [x for x in captured.err.splitlines() if x.startswith("epoch ")]
    assert [x.split()[1] for x in epochs] == ["1/2", "2/2"]

    ckpt = tmp_path / "run/checkpoints/best.ckpt"
    assert main(["eval", "--ckpt", str(ckpt)]) == 0
    captured = capsys.readouterr()
    metrics = json.loads(captured.out.strip().splitlines()[-1])
    assert len(captured.out.strip().splitlines()) == 1
    assert "accuracy" in captured.err and "class" in captured.err and "red" in captured.err
    assert f"{metrics['accuracy']:.4g}" in captured.err


def test_train_stops_on_dataset_errors_before_the_run_folder(colour_data, tmp_path, capsys):
    (colour_data / "train/red/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(colour_data, tmp_path / "run")))
    assert main(["train", "--config", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and "--no-check" in err
    assert not (tmp_path / "run").exists()


def test_eval_predictions_on_voc_data_write_coco_ground_truth(det_run, tmp_path, capsys):
    data, run = det_run
    preds = tmp_path / "dets.json"
    assert main(["eval", "--ckpt", str(run / "checkpoints/best.ckpt"), "--predictions", str(preds)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    gt = json.loads((tmp_path / "dets_gt.json").read_text())
    assert out["ground_truth"] == str(tmp_path / "dets_gt.json")
    files = {im["id"]: im["file_name"] for im in gt["images"]}
    assert sorted(files.values()) == sorted(f"val/images/{p.name}" for p in (data / "val/images").glob("*.png"))
    results = json.loads(preds.read_text())
    assert results and {r["image_id"] for r in results} <= set(files)
    assert {r["category_id"] for r in results} <= {c["id"] for c in gt["categories"]}
    # pycocotools reads the pair as they are
    from pycocotools.coco import COCO

    coco = COCO(str(tmp_path / "dets_gt.json"))
    coco.loadRes(str(preds))


def test_readme_install_versions_match_pyproject():
    """README's "Requires ..." line states the lower bounds pyproject.toml enforces, no older and no other."""
    import re

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    bounds = {
        re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower(): d.split(">=")[1].split(",")[0].strip()
        for d in project["dependencies"]
        if ">=" in d
    }
    bounds["python"] = project["requires-python"].removeprefix(">=")
    readme = (REPO / "README.md").read_text()
    install = readme[readme.index("## Install") : readme.index("## Tasks")]
    line = install[install.index("Requires ") : install.index("Only lower bounds")]
    stated = {name.lower(): version for name, version in re.findall(r"([A-Za-z][\w-]*) ≥ ([\d.]+)", line)}
    assert {"python", "torch", "torchvision", "timm", "lightning", "albumentations"} <= set(stated)
    for name, version in stated.items():
        assert bounds.get(name) == version, f"README says {name} ≥ {version}, pyproject.toml {bounds.get(name)}"
