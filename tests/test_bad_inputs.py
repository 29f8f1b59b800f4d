"""Bad input gets a named `error:` and exit 2 from the tools, before any run folder is created; a bug keeps its
traceback (exit 1). Checkpoints: truncated, empty, not a checkpoint, needing more trust, of another task. Training
without validation runs with a note instead of Lightning's RuntimeError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from cvsuite import cli
from cvsuite.checkpoint import CONFIG_KEY, CheckpointError, read_checkpoint
from cvsuite.config import ConfigError, from_dict
from cvsuite.run import predict, train
from tests.conftest import tiny_recipe, write_class_folders
from tests.test_detection_tools import tool


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    data = write_class_folders(tmp / "data", per_class=4)
    recipe = tiny_recipe(data, tmp / "run", run={"plots": False}, trainer={"max_epochs": 1})
    config = tmp / "recipe.yaml"
    config.write_text(yaml.safe_dump(recipe))
    return tmp, config, train(from_dict(recipe))


def _bad_files(tmp, good):
    raw = good.read_bytes()
    files = {
        "truncated": raw[: len(raw) // 2],
        "empty": b"",
        "text": b"these are not the weights you are looking for\n",
    }
    for name, content in files.items():
        (tmp / f"{name}.ckpt").write_bytes(content)
    torch.save({"state_dict": {}}, tmp / "foreign.ckpt")  # a readable file, but not ours
    return {**{n: tmp / f"{n}.ckpt" for n in files}, "foreign": tmp / "foreign.ckpt"}


@pytest.mark.parametrize("kind", ["truncated", "empty", "text", "foreign"])
def test_a_bad_checkpoint_is_named_by_eval_predict_and_resume(run, kind, capsys):
    tmp, config, run_dir = run
    path = _bad_files(tmp, run_dir / "checkpoints" / "last.ckpt")[kind]
    expected = "not a cvsuite checkpoint" if kind == "foreign" else "damaged or not a cvsuite checkpoint"
    image = next((tmp / "data" / "val").rglob("*.png"))
    commands = [
        ("eval", ["--ckpt", str(path)]),
        ("predict", ["--ckpt", str(path), "--input", str(image), "--output", str(tmp / "pred")]),
        ("train", ["--config", str(config), "--resume", str(path)]),
    ]
    for name, argv in commands:
        capsys.readouterr()
        assert tool(name).main(argv) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("error: ") and str(path) in err and expected in err, (name, err)
        assert "Traceback" not in err
    assert not (tmp / "pred").exists()


def test_a_damaged_weights_file_is_named(run, capsys):
    tmp, config, _ = run
    (tmp / "weights.pth").write_bytes(b"\x80\x02garbage")
    argv = ["--config", str(config), "--model.pretrained", "true", "--model.weights", str(tmp / "weights.pth")]
    argv += ["--trainer.default_root_dir", str(tmp / "never")]
    assert tool("train").main(argv) == 2
    err = capsys.readouterr().err
    assert "error: model.weights" in err and "weights.pth" in err and "damaged" in err
    assert not (tmp / "never").exists()


class Payload:
    """What a pickle that runs code on load would carry: a class torch's weights_only loader does not allow."""


def test_a_checkpoint_needing_more_trust_is_refused_with_a_clear_message(tmp_path):
    torch.save({CONFIG_KEY: {"task": "classification"}, "state_dict": {}, "extra": Payload()}, tmp_path / "x.ckpt")
    with pytest.raises(CheckpointError, match=r"holds Python objects beyond tensors .*Payload.*weights_only=True"):
        read_checkpoint(tmp_path / "x.ckpt")


def test_resuming_from_another_tasks_checkpoint_is_named(run, capsys):
    tmp, config, run_dir = run
    stored = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    stored[CONFIG_KEY] = {**stored[CONFIG_KEY], "task": "detection"}
    torch.save(stored, tmp / "detection.ckpt")
    assert tool("train").main(["--config", str(config), "--resume", str(tmp / "detection.ckpt")]) == 2
    err = capsys.readouterr().err
    assert "this is a detection checkpoint; the recipe's task is classification" in err
    assert "state_dict" not in err and "Traceback" not in err


def test_weights_of_another_model_in_a_checkpoint_are_named(run, capsys):
    tmp, config, run_dir = run
    stored = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    stored["state_dict"] = {k: v for k, v in stored["state_dict"].items() if not k.startswith("head.")}
    torch.save(stored, tmp / "headless.ckpt")
    assert tool("eval").main(["--ckpt", str(tmp / "headless.ckpt")]) == 2
    err = capsys.readouterr().err
    assert "headless.ckpt: its weights do not fit the ClassificationTask" in err and "head." in err


def test_checkpoints_load_with_weights_only(run):
    _, _, run_dir = run
    for name in ("best.ckpt", "last.ckpt"):
        stored = torch.load(run_dir / "checkpoints" / name, map_location="cpu", weights_only=True)
        assert stored[CONFIG_KEY]["task"] == "classification"


def test_only_our_errors_are_user_errors_and_a_bug_keeps_its_traceback(capsys):
    def bug():
        return {}["x"]

    assert cli.main_wrapper(bug) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError: 'x'" in err and "please report it" in err
    assert "error: " not in err

    def user():
        raise CheckpointError("--ckpt a.ckpt: checkpoint not found")

    assert cli.main_wrapper(user) == 2
    assert capsys.readouterr().err == "error: --ckpt a.ckpt: checkpoint not found\n"


def test_training_without_validation_steps_aside_from_best_and_refuses_early_stopping(tmp_path, caplog):
    data = write_class_folders(tmp_path / "data", per_class=4)
    trainer = {"max_epochs": 2, "limit_val_batches": 0}
    recipe = tiny_recipe(data, tmp_path / "run", run={"plots": False}, trainer=trainer)
    with pytest.raises(ConfigError, match="run.early_stopping_patience needs validation"):
        from_dict({**recipe, "run": {"early_stopping_patience": 1}})
    with caplog.at_level("WARNING", logger="cvsuite"):
        run_dir = train(from_dict(recipe))
    assert "training without validation" in caplog.text
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and not (run_dir / "checkpoints" / "best.ckpt").exists()
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1  # both epochs ran
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["checkpoint"].endswith("last.ckpt")


def test_predict_skips_an_unreadable_file_and_reports_it(run, tmp_path):
    tmp, _, run_dir = run
    folder = tmp_path / "images"
    folder.mkdir()
    good = sorted((tmp / "data" / "val").rglob("*.png"))[:2]
    for p in good:
        (folder / f"{p.parent.name}_{p.name}").write_bytes(p.read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.warns(UserWarning, match="broken.png"):
        predict(run_dir / "checkpoints" / "best.ckpt", folder, tmp_path / "out")
    rows = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert sorted(Path(r["path"]).name for r in rows) == sorted(f"{p.parent.name}_{p.name}" for p in good)
    skipped = json.loads((tmp_path / "out" / "skipped.json").read_text())
    assert [Path(s["path"]).name for s in skipped] == ["broken.png"] and skipped[0]["reason"]


def test_a_run_folder_stands_for_its_best_checkpoint(tmp_path):
    from cvsuite.checkpoint import CheckpointError, resolve

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert resolve(run) == run / "checkpoints" / "last.ckpt"  # no best one: the run trained without validation
    (run / "checkpoints" / "best.ckpt").write_bytes(b"x")
    assert resolve(run) == run / "checkpoints" / "best.ckpt"
    assert resolve(run / "checkpoints" / "last.ckpt") == run / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointError, match="a folder without checkpoints/best.ckpt"):
        resolve(tmp_path)
