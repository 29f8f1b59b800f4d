"""Train, evaluate and predict for every task: the run folder and its artifacts (the Trainer and its callbacks
are in `cvsuite.trainer`).

Run folder (``trainer.default_root_dir``)::

    config.yaml              resolved recipe
    checkpoints/best.ckpt    best on run.monitor; checkpoints/last.ckpt for resuming
    metrics.csv              one row per epoch: train_loss, val_loss, val_<metric>..., lr
    metrics.json             full metrics of the best checkpoint on the validation split (same as eval.py)
    curves.png               train/val loss and metrics per epoch, plus the task's own figures
    tensorboard/             TensorBoard logs
"""

from __future__ import annotations

import inspect
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml

from cvsuite.checkpoint import CONFIG_KEY, load_module, read_checkpoint, resolve
from cvsuite.config import Config, ConfigError, from_dict, merge, parse_overrides, read_yaml
from cvsuite.data.common import DatasetError, drop_unreadable, list_images
from cvsuite.distributed import check_trainer, end_process_group, global_rank, shared_run_dir
from cvsuite.plots import curves_plot
from cvsuite.tasks import TaskSpec, get_spec
from cvsuite.trainer import build_trainer, interrupted

log = logging.getLogger("cvsuite")

# What eval/predict/export may change in a checkpoint's recipe: where the data is, how it is loaded and on what
# device; tasks add their own (TaskSpec.eval_keys, e.g. detection thresholds). Everything else describes the
# trained model or its training and is refused rather than silently ignored.
EVAL_KEYS = (
    "data.root",
    "data.val_root",
    "data.train_csv",
    "data.val_csv",
    "data.rederive_split",
    "data.batch_size",
    "data.num_workers",
    "data.check_images",
    "trainer.accelerator",
    "trainer.precision",
    "run.plots",
)
# Checkpoint hparams that older checkpoints (before the datamodule stored its state) carried as data facts.
LEGACY_DATA_FACTS = ("class_names", "eval_pipeline", "multilabel", "ignore_index", "value_map")


def new_run_dir(root: str | Path) -> Path:
    """`root`, or `root-2`, `root-3`... when `root` already holds a run: a new run never overwrites old work."""
    root = Path(root)
    candidate, n = root, 1
    while (candidate / "config.yaml").exists():
        n += 1
        candidate = root.with_name(f"{root.name}-{n}")
    if candidate != root:
        log.warning("%s holds an earlier run; writing this one to %s", root, candidate)
    candidate.mkdir(parents=True, exist_ok=True)
    return candidate


def train(cfg: Config, resume: str | Path | None = None, started: float | None = None) -> Path:
    """Fit the recipe's task; returns the run folder.

    Args:
        resume: a ``last.ckpt`` (or any checkpoint) to continue from, mid-schedule: optimiser, scheduler, epoch
            and the freeze/unfreeze state carry on; the run writes into that checkpoint's run folder.
        started: Unix time from which ``run.budget`` counts (default: now; ``cvsuite train`` passes the start of
            its process).
    """
    started = time.time() if started is None else started
    check_trainer(cfg)  # devices/strategy/precision that cannot work here: named before anything is written
    L.seed_everything(cfg.run.seed, workers=True, verbose=False)
    spec = get_spec(cfg.task)
    if resume:
        resume = Path(resume)
        run_dir = run_dir_of(resume)
        module = load_module(spec.module_class, resume, "--resume", task=cfg.task, pretrained=False)
        # The stored contract: same classes, preprocessing and validation files as before the interruption.
        dm = spec.build_datamodule(cfg, data_state(read_checkpoint(resume), module))
    else:
        dm = spec.build_datamodule(cfg, None)
    dm.setup("fit")  # before the run folder exists: a dataset error leaves nothing behind
    if cfg.run.budget is not None:
        from cvsuite import budget

        if resume:
            cfg = budget.resumed_config(cfg, read_checkpoint(resume)[CONFIG_KEY])
        else:
            cfg, _ = budget.budget_config(cfg, spec, dm, started)
            L.seed_everything(cfg.run.seed, workers=True, verbose=False)  # the probe drew from the generators
    if not resume:
        module = spec.build_module(cfg, dm)
        run_dir = shared_run_dir(cfg.trainer["default_root_dir"], new_run_dir)  # same folder on every rank
    if global_rank() == 0:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    trainer, ckpt, last = build_trainer(cfg, spec, run_dir)
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=str(resume) if resume else None, weights_only=True)
    except (KeyboardInterrupt, SystemExit) as err:  # Lightning's graceful stop on SIGINT / SIGTERM
        raise interrupted(trainer, last, err) from None
    end_process_group()
    if not trainer.is_global_zero:  # under DDP only rank 0 writes the run folder
        return run_dir
    best = ckpt.best_model_path or ckpt.last_model_path
    if best and trainer.state.status == "finished":
        metrics = _evaluate_module(
            load_module(spec.module_class, best, pretrained=False),
            spec,
            cfg,
            dm,
            run_dir,
            plots=cfg.run.plots,
        )
        metrics.update(dm.describe())
        metrics["checkpoint"] = str(best)
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if cfg.run.plots and (run_dir / "metrics.csv").exists():
        curves_plot(run_dir / "metrics.csv", run_dir / "curves.png")
    return run_dir


def run_dir_of(ckpt: str | Path) -> Path:
    ckpt = Path(ckpt).resolve()
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def data_state(stored: dict[str, Any], module=None) -> dict[str, Any] | None:
    """The datamodule state (`cvsuite.data.base`) saved in a checkpoint; for a checkpoint from before it was
    stored, the data facts its hparams carried (no validation file list: the split is derived again)."""
    for value in stored.values():
        if isinstance(value, dict) and "val_files" in value and "version" in value:
            # The epoch a resumed run starts with (Lightning's own count), for the training sampler's order.
            progress = stored.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
            return {**value, "resume_epoch": int(progress.get("processed", stored.get("epoch", -1) + 1))}
    hp = module.hparams if module is not None else stored.get("hyper_parameters", {})
    legacy = {k: hp[k] for k in LEGACY_DATA_FACTS if k in hp and hp[k] is not None}
    if legacy:
        log.warning("checkpoint predates the stored data contract: the validation split is derived again")
    return legacy or None


def _changed_keys(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    keys = []
    for section, values in after.items():
        if isinstance(values, dict):
            old = before.get(section) or {}
            keys += [f"{section}.{k}" for k, v in values.items() if old.get(k) != v]
        elif before.get(section) != values:
            keys.append(section)
    return keys


def checkpoint_config(stored: dict[str, Any], config: str | Path | None, overrides: list[str] | None, spec) -> Config:
    """The checkpoint's recipe with `config` (a YAML file) and `overrides` merged onto it. Only the declared
    eval settings may differ (`EVAL_KEYS` and the task's own); anything else would not change the trained model,
    so it is refused rather than accepted and ignored."""
    base = stored[CONFIG_KEY]
    raw = merge(base, read_yaml(config)) if config else dict(base)
    raw = merge(raw, parse_overrides(overrides or []))
    cfg = from_dict(raw, str(config or "checkpoint config"))
    reference = from_dict(base, "checkpoint config").to_dict()
    allowed = set(EVAL_KEYS) | set(spec.eval_keys)
    refused = [k for k in _changed_keys(reference, cfg.to_dict()) if k not in allowed]
    if refused:
        raise ConfigError(
            f"{', '.join(refused)}: cannot change a trained model at eval/predict/export (the checkpoint fixes it; "
            f"train again to change it). Settings that may change here: {', '.join(sorted(allowed))}"
        )
    return cfg


def load_run(ckpt: str | Path, config: str | Path | None = None, overrides: list[str] | None = None):
    """(module, cfg, spec, data state) from a checkpoint alone; `config`/`overrides` may change the declared eval
    settings (data location, batch size, device, detection thresholds)."""
    ckpt = resolve(ckpt)
    stored = read_checkpoint(ckpt)
    task = stored[CONFIG_KEY].get("task")
    spec = get_spec(task)
    cfg = checkpoint_config(stored, config, overrides, spec)
    # pretrained=False: the trained weights come from the checkpoint; nothing needs downloading.
    module = load_module(spec.module_class, ckpt, task=task, pretrained=False)
    if spec.apply_eval_settings is not None:
        spec.apply_eval_settings(module, cfg)
    state = data_state(stored, module)
    module.data_contract = state or {}  # the preprocessing predict_images uses (`data.base.inference_pipeline`)
    return module, cfg, spec, state


def load_checkpoint(ckpt: str | Path, config: str | Path | None = None, overrides: list[str] | None = None):
    """(module, cfg, spec) from a checkpoint alone; see `load_run`."""
    module, cfg, spec, _ = load_run(ckpt, config, overrides)
    return module, cfg, spec


def _evaluate_module(module, spec: TaskSpec, cfg: Config, dm, run_dir: Path | None, plots: bool) -> dict[str, Any]:
    trainer = L.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator=cfg.trainer.get("accelerator", "auto"),
        devices=1,
        precision=cfg.trainer.get("precision", "32-true"),
        default_root_dir=str(run_dir) if run_dir else None,
    )
    trainer.validate(module, datamodule=dm, verbose=False)
    if plots and run_dir is not None:
        spec.save_plots(module, run_dir)
    return dict(module.last_metrics)


def evaluate(
    ckpt: str | Path,
    config: str | Path | None = None,
    overrides: list[str] | None = None,
    output: str | None = None,
    predictions: str | None = None,
    split: str = "val",
) -> dict[str, Any]:
    """Metrics of `ckpt` on exactly the validation files stored in it (or, deliberately, on ``ROOT/test`` with
    ``split="test"``, ``data.val_root`` or another ``data.root``); written to ``<run>/eval_metrics.json`` (or
    `output`) and returned, with ``split``, ``split_files``, ``data_root`` and ``num_samples`` saying what was
    scored. With `predictions`, the task also writes its raw predictions there (detection: COCO results JSON)."""
    ckpt = resolve(ckpt)
    module, cfg, spec, state = load_run(ckpt, config, overrides)
    write_predictions = getattr(module, "write_predictions", None)
    if predictions and write_predictions is None:
        raise ConfigError(f"--predictions: the {cfg.task} task has no predictions file to write")
    dm = spec.build_datamodule(cfg, state, split)
    dm.setup("validate")
    run_dir = run_dir_of(ckpt)
    metrics = _evaluate_module(module, spec, cfg, dm, run_dir, plots=False)
    metrics.update(dm.describe())
    metrics["checkpoint"] = str(ckpt)
    if predictions:
        metrics["predictions"] = str(write_predictions(predictions))
    out = Path(output) if output else run_dir / "eval_metrics.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=2))
    return metrics


def predict(
    ckpt: str | Path,
    inputs: str | Path,
    output: str | Path,
    config: str | Path | None = None,
    overrides: list[str] | None = None,
    **options: Any,
) -> Path:
    """Predict every image in `inputs` (a file or a folder, searched recursively) into `output`."""
    module, cfg, spec = load_checkpoint(ckpt, config, overrides)
    accepted = inspect.signature(spec.predict).parameters
    for name in options:
        if name not in accepted:
            raise ConfigError(f"--{name} does not apply to {cfg.task} checkpoints")
    inputs = Path(inputs)
    if inputs.is_dir():
        paths = list_images(inputs)
        if not paths:
            raise DatasetError(f"--input {inputs}: folder holds no images")
    elif inputs.is_file():
        paths = [inputs]
    else:
        raise ConfigError(f"--input {inputs}: no such file or folder")
    paths, skipped = drop_unreadable(paths)  # warns per file; the others are still predicted
    if not paths:
        raise DatasetError(f"--input {inputs}: no readable image ({skipped[0][0]}: {skipped[0][1]})")
    if torch.cuda.is_available() and cfg.trainer.get("accelerator") in ("auto", "gpu", "cuda"):
        module = module.cuda()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = spec.predict(module.eval(), paths, Path(output), cfg, **options)
    if skipped:
        report = [{"path": str(p), "reason": reason} for p, reason in skipped]
        (Path(output) / "skipped.json").write_text(json.dumps(report, indent=2))
    return result
