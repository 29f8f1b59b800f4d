"""Classification end to end on generated data: training lowers the loss and leaves the run folder,
eval JSON, predict output, checkpoint round-trip, freeze -> unfreeze across a resume, the CLI contract."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml

from cvsuite.config import from_dict
from cvsuite.run import evaluate, load_checkpoint, predict, train
from tests.conftest import tiny_recipe

REPO = Path(__file__).resolve().parents[1]


def rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from tests.conftest import write_class_folders

    tmp = tmp_path_factory.mktemp("cls")
    data = write_class_folders(tmp / "data", per_class=8)
    recipe = tiny_recipe(data, tmp / "run", trainer={"max_epochs": 3})
    return data, train(from_dict(recipe))


def test_training_lowers_loss_and_writes_the_run_folder(trained):
    data, run_dir = trained
    for name in (
        "config.yaml",
        "metrics.csv",
        "metrics.json",
        "curves.png",
        "confusion_matrix.png",
        "pr_curve.png",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
    ):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    epochs = rows(run_dir)
    assert [int(r["epoch"]) for r in epochs] == [1, 2, 3]  # as the epoch lines count
    assert float(epochs[-1]["train_loss"]) < float(epochs[0]["train_loss"])
    assert {"val_loss", "val_accuracy", "val_f1", "val_auroc", "lr_head", "lr_backbone"} <= set(epochs[0])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.9  # red vs blue is easy
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["task"] == "classification"


def test_a_second_run_never_overwrites_the_first(trained, tmp_path):
    data, run_dir = trained
    recipe = tiny_recipe(data, run_dir, trainer={"max_epochs": 1, "limit_train_batches": 1})
    second = train(from_dict(recipe))
    assert second == run_dir.with_name(run_dir.name + "-2")
    assert len(rows(run_dir)) == 3


def test_eval_matches_training_metrics_and_checkpoint_round_trip(trained, tmp_path):
    data, run_dir = trained
    best = run_dir / "checkpoints" / "best.ckpt"
    metrics = evaluate(best)
    stored = json.loads((run_dir / "metrics.json").read_text())
    for key in ("accuracy", "precision", "recall", "f1", "auroc", "average_precision"):
        assert metrics[key] == pytest.approx(stored[key]), key
    assert metrics["confusion_matrix"] == stored["confusion_matrix"]
    assert json.loads((run_dir / "eval_metrics.json").read_text())["accuracy"] == metrics["accuracy"]

    module, cfg, _ = load_checkpoint(best)
    again, _, _ = load_checkpoint(best)
    images = [torch.randint(0, 255, (32, 32, 3), dtype=torch.uint8).numpy() for _ in range(3)]
    assert torch.allclose(module.predict_images(images), again.predict_images(images))
    assert list(module.hparams.class_names) == ["blue", "red"]


@pytest.mark.parametrize(
    ("trainer", "reads_checkpoint"),
    [
        ({"max_epochs": 1}, False),  # the only validation is the best and the last thing trained: weights in memory
        ({"max_epochs": 2, "max_steps": 4}, True),  # a step after the best validation: best.ckpt is read back
    ],
)
def test_final_evaluation_scores_the_best_checkpoint_with_or_without_reading_it(
    colour_data, tmp_path, monkeypatch, trainer, reads_checkpoint
):
    import cvsuite.run

    loaded = []
    real_load, real_weights = cvsuite.run.load_module, cvsuite.run._load_weights
    monkeypatch.setattr(cvsuite.run, "load_module", lambda *a, **k: loaded.append(a[1]) or real_load(*a, **k))
    # best.ckpt's weights read into the module that trained (`_load_weights`), or into a new one (`load_module`)
    monkeypatch.setattr(cvsuite.run, "_load_weights", lambda m, p: loaded.append(p) or real_weights(m, p))
    run_dir = train(from_dict(tiny_recipe(colour_data, tmp_path / "run", trainer=trainer)))
    best = run_dir / "checkpoints" / "best.ckpt"
    assert [Path(p) for p in loaded] == ([best] if reads_checkpoint else [])
    stored = json.loads((run_dir / "metrics.json").read_text())
    assert stored["steps_done"] == trainer.get("max_steps", 3) and Path(stored["checkpoint"]) == best
    evaluate(best, output=str(tmp_path / "again.json"))  # the checkpoint alone, in a fresh module
    again = json.loads((tmp_path / "again.json").read_text())
    for key in ("accuracy", "precision", "recall", "f1", "auroc", "average_precision"):
        assert stored[key] == pytest.approx(again[key], abs=1e-6), key
    assert stored["per_class"] == again["per_class"] and stored["confusion_matrix"] == again["confusion_matrix"]
    # When each phase of the run ended, in seconds from its start, in the order they happen.
    timings = stored["timings"]
    assert list(timings) == ["data", "model", "first_step", "training", "final_evaluation", "plots"]
    assert list(timings.values()) == sorted(timings.values()) and timings["data"] >= 0


def test_predict_writes_topk_csv_json_and_grid(trained, tmp_path):
    data, run_dir = trained
    out = predict(run_dir / "checkpoints" / "best.ckpt", data / "val", tmp_path / "pred", topk=2)
    assert out.name == "predictions.csv"
    preds = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert len(preds) == 16 and len(preds[0]["topk"]) == 2
    correct = sum(Path(p["path"]).parent.name == p["topk"][0]["label"] for p in preds)
    assert correct >= 15
    assert abs(sum(t["score"] for t in preds[0]["topk"]) - 1) < 1e-4
    assert (tmp_path / "pred" / "predictions.png").stat().st_size > 1000
    header = (tmp_path / "pred" / "predictions.csv").read_text().splitlines()[0]
    assert header == "path,label_1,score_1,label_2,score_2"


def _backbone(ckpt: Path) -> dict[str, torch.Tensor]:
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("backbone.")}


def test_freeze_then_unfreeze_across_a_resume(colour_data, tmp_path):
    recipe = tiny_recipe(
        colour_data,
        tmp_path / "run",
        finetune={"freeze_epochs": 2},
        trainer={"max_epochs": 1, "limit_train_batches": 2},
    )
    run_dir = train(from_dict(recipe))
    last = run_dir / "checkpoints" / "last.ckpt"
    after_epoch0 = _backbone(last)
    head0 = torch.load(last, weights_only=False)["state_dict"]["head.1.weight"]

    # Resume to epoch 2: epoch 1 is still frozen (BatchNorm statistics included); the head keeps learning.
    recipe["trainer"]["max_epochs"] = 2
    assert train(from_dict(recipe), resume=last) == run_dir
    state = torch.load(last, weights_only=False)
    assert state["epoch"] == 1  # index of the last complete epoch (last.ckpt is written at its end)
    after_epoch1 = _backbone(last)
    assert all(torch.equal(after_epoch0[k], after_epoch1[k]) for k in after_epoch0)
    assert not torch.equal(head0, state["state_dict"]["head.1.weight"])

    # Resume to epoch 3: the backbone is unfrozen and moves.
    recipe["trainer"]["max_epochs"] = 3
    train(from_dict(recipe), resume=last)
    after_epoch2 = _backbone(last)
    assert any(not torch.equal(after_epoch1[k], after_epoch2[k]) for k in after_epoch1)
    assert [int(r["epoch"]) for r in rows(run_dir)] == [1, 2, 3]


@pytest.mark.parametrize(
    "extra",
    [
        {"model": {"loss": "focal", "class_weights": "balanced"}, "trainer": {"precision": "bf16-mixed"}},
        {"optim": {"optimizer": "sgd", "nesterov": True, "scheduler": "step", "step_size": 1, "l1_head": 1e-4}},
        {
            "optim": {"optimizer": "rmsprop", "lr": 1e-3, "scheduler": "cosine", "warmup_epochs": 0.5},
            "finetune": {"layer_decay": 0.7, "backbone_lr_mult": 0.5},
        },
        {"data": {"mixup_alpha": 0.2, "cutmix_alpha": 1.0}, "run": {"ema_decay": 0.9, "early_stopping_patience": 1}},
        {"finetune": {"freeze_backbone": True}, "trainer": {"accumulate_grad_batches": 2, "gradient_clip_val": 1.0}},
    ],
    ids=["focal-balanced-bf16", "sgd-step-l1", "rmsprop-layerdecay", "mixup-ema-earlystop", "frozen-accum-clip"],
)
def test_training_choices_run_end_to_end(colour_data, tmp_path, extra):
    recipe = tiny_recipe(colour_data, tmp_path / "run", **extra)
    recipe["trainer"].update(max_epochs=2, limit_train_batches=2)
    recipe["run"]["plots"] = False
    run_dir = train(from_dict(recipe))
    assert len(rows(run_dir)) >= 1
    assert json.loads((run_dir / "metrics.json").read_text())["num_samples"] == 24


def _tool(name: str):
    """Import tools/<name>.py as a module: the same main(argv) the command line runs, without a new process."""
    spec = importlib.util.spec_from_file_location(f"tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_contract(trained, tmp_path, capsys):
    data, run_dir = trained
    code = _tool("train").main(["--config", str(REPO / "configs/classification/finetune.yaml"), "--data.rooot", "x"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Unknown config key 'data.rooot'. Did you mean 'root'?" in err and "Traceback" not in err

    ckpt = str(run_dir / "checkpoints" / "best.ckpt")
    assert _tool("eval").main(["--ckpt", ckpt, "--output", str(tmp_path / "m.json"), "--data.num_workers", "0"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {
        "accuracy",
        "precision",
        "recall",
        "f1",
        "auroc",
        "average_precision",
        "per_class",
        "confusion_matrix",
    } <= set(last)
    assert json.loads((tmp_path / "m.json").read_text())["accuracy"] == last["accuracy"]

    assert _tool("eval").main(["--ckpt", str(tmp_path / "nope.ckpt")]) == 2
    assert "nope.ckpt: checkpoint not found" in capsys.readouterr().err
    assert (
        _tool("predict").main(["--ckpt", ckpt, "--input", str(data / "val" / "red"), "--output", str(tmp_path / "p")])
        == 0
    )
    assert (tmp_path / "p" / "predictions.json").is_file()
