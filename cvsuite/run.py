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
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml

from cvsuite.checkpoint import CONFIG_KEY, read_checkpoint
from cvsuite.config import Config, load_config
from cvsuite.data.common import DatasetError, list_images
from cvsuite.distributed import check_trainer, end_process_group, global_rank, shared_run_dir
from cvsuite.plots import curves_plot
from cvsuite.tasks import TaskSpec, get_spec
from cvsuite.trainer import build_trainer

log = logging.getLogger("cvsuite")


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


def train(cfg: Config, resume: str | Path | None = None) -> Path:
    """Fit the recipe's task; returns the run folder.

    Args:
        resume: a ``last.ckpt`` (or any checkpoint) to continue from, mid-schedule: optimiser, scheduler, epoch
            and the freeze/unfreeze state carry on; the run writes into that checkpoint's run folder.
    """
    check_trainer(cfg)  # devices/strategy/precision that cannot work here: named before anything is written
    L.seed_everything(cfg.run.seed, workers=True, verbose=False)
    spec = get_spec(cfg.task)
    if resume:
        resume = Path(resume)
        if not resume.is_file():
            raise FileNotFoundError(f"--resume {resume}: checkpoint not found")
        run_dir = run_dir_of(resume)
        module = spec.module_class.load_from_checkpoint(resume, map_location="cpu", pretrained=False)
        dm = spec.build_datamodule(cfg, module)
    else:
        dm = spec.build_datamodule(cfg, None)
    dm.setup("fit")  # before the run folder exists: a dataset error leaves nothing behind
    if not resume:
        module = spec.build_module(cfg, dm)
        run_dir = shared_run_dir(cfg.trainer["default_root_dir"], new_run_dir)  # same folder on every rank
    if global_rank() == 0:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    trainer, ckpt = build_trainer(cfg, spec, run_dir)
    trainer.fit(module, datamodule=dm, ckpt_path=str(resume) if resume else None)
    end_process_group()
    if not trainer.is_global_zero:  # under DDP only rank 0 writes the run folder
        return run_dir
    best = ckpt.best_model_path or ckpt.last_model_path
    if best and trainer.state.status == "finished":
        metrics = _evaluate_module(
            spec.module_class.load_from_checkpoint(best, map_location="cpu", pretrained=False),
            spec,
            cfg,
            dm,
            run_dir,
            plots=cfg.run.plots,
        )
        metrics["checkpoint"] = str(best)
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if cfg.run.plots and (run_dir / "metrics.csv").exists():
        curves_plot(run_dir / "metrics.csv", run_dir / "curves.png")
    return run_dir


def run_dir_of(ckpt: str | Path) -> Path:
    ckpt = Path(ckpt).resolve()
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def load_checkpoint(ckpt: str | Path, config: str | Path | None = None, overrides: list[str] | None = None):
    """(module, cfg, spec) from a checkpoint alone; `config`/`overrides` change e.g. data.root or the device."""
    stored = read_checkpoint(ckpt)
    cfg = load_config(config, overrides, base=stored[CONFIG_KEY])
    spec = get_spec(cfg.task)
    if stored[CONFIG_KEY]["task"] != cfg.task:
        raise ValueError(f"{ckpt} is a {stored[CONFIG_KEY]['task']} checkpoint; the config says task {cfg.task}")
    # pretrained=False: the trained weights come from the checkpoint; nothing needs downloading.
    module = spec.module_class.load_from_checkpoint(ckpt, map_location="cpu", pretrained=False)
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
) -> dict[str, Any]:
    """Metrics of `ckpt` on the validation split of the (possibly overridden) data; written to
    ``<run>/eval_metrics.json`` (or `output`) and returned. With `predictions`, the task also writes its raw
    predictions there (``module.write_predictions``; detection: a COCO results JSON)."""
    module, cfg, spec = load_checkpoint(ckpt, config, overrides)
    write_predictions = getattr(module, "write_predictions", None)
    if predictions and write_predictions is None:
        raise ValueError(f"--predictions: the {cfg.task} task has no predictions file to write")
    dm = spec.build_datamodule(cfg, module)
    dm.setup("validate")
    run_dir = run_dir_of(ckpt)
    metrics = _evaluate_module(module, spec, cfg, dm, run_dir, plots=False)
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
            raise ValueError(f"--{name} does not apply to {cfg.task} checkpoints")
    inputs = Path(inputs)
    if inputs.is_dir():
        paths = list_images(inputs)
        if not paths:
            raise DatasetError(f"--input {inputs}: folder holds no images")
    elif inputs.is_file():
        paths = [inputs]
    else:
        raise FileNotFoundError(f"--input {inputs}: no such file or folder")
    if torch.cuda.is_available() and cfg.trainer.get("accelerator") in ("auto", "gpu", "cuda"):
        module = module.cuda()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return spec.predict(module.eval(), paths, Path(output), cfg, **options)
