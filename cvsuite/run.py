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

import contextlib
import copy
import csv
import inspect
import json
import logging
import signal
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.utilities.exceptions import SIGTERMException

from cvsuite import schedule
from cvsuite.checkpoint import CONFIG_KEY, VALIDATION_KEY, load_module, read_checkpoint, resolve
from cvsuite.config import Config, ConfigError, from_dict, merge, parse_overrides, read_yaml
from cvsuite.data.common import IMAGE_EXTENSIONS, DatasetError, drop_unreadable, list_images
from cvsuite.distributed import check_trainer, device_count, end_process_group, global_rank, shared_run_dir
from cvsuite.outputs import check_output_file, check_output_folder, display_path, write_json, write_text
from cvsuite.tasks import TaskSpec, get_spec
from cvsuite.trainer import PhaseTimes, SignalStop, StopRequested, build_trainer, interrupted

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
# Recipe keys that only steer training (besides whole sections): see `training_only`.
TRAINING_SECTIONS = ("optim", "finetune", "run", "trainer")
TRAINING_KEYS = (
    "data.augment",
    "data.train_transforms",
    "data.mixup_alpha",
    "data.cutmix_alpha",
    "data.val_subset",
    "data.crop_size",
    "data.crops_per_image",
    "data.class_crops",
    "data.images_per_epoch",
    "data.hflip",
    "data.cache",
    "model.pretrained",
    "model.weights",
    "model.loss",
    "model.label_smoothing",
    "model.focal_gamma",
    "model.class_weights",
    "model.class_weight_power",
    "model.dice_weight",
    "model.huber_delta",
    "model.box_loss_weight",
    "model.center_sampling_radius",
    "model.frozen_levels",
    "model.dropout",
    "model.drop_path_rate",
)
# Checkpoint hparams that older checkpoints (before the datamodule stored its state) carried as data facts.
LEGACY_DATA_FACTS = ("class_names", "eval_pipeline", "multilabel", "ignore_index", "value_map")


def new_run_dir(root: str | Path) -> Path:
    """`root`, or `root-2`, `root-3`... when `root` already holds a run: a new run never overwrites old work."""
    root = check_output_folder(root, "trainer.default_root_dir")
    candidate, n = root, 1
    while (candidate / "config.yaml").exists() or (candidate.exists() and not candidate.is_dir()):
        n += 1
        candidate = root.with_name(f"{root.name}-{n}")
    if candidate != root:
        log.warning("%s holds an earlier run; writing this one to %s", root, candidate)
    candidate.mkdir(parents=True, exist_ok=True)
    return candidate


def check_fit_data(cfg: Config, dm: Any) -> None:
    """After ``dm.setup("fit")``, before the run folder exists: the splits can train and validate this recipe.

    One image per class with ``data.val_fraction`` 0.2 leaves the validation split empty; Lightning would then stop
    at the first epoch's end (the monitored metric was never logged), with the run folder written.
    """
    from cvsuite.trainer import validates

    check_output_folder(cfg.trainer["default_root_dir"], "trainer.default_root_dir")
    root = getattr(cfg.data, "root", None)
    train_set, val_set = getattr(dm, "train_set", None), getattr(dm, "val_set", None)
    if train_set is not None and len(train_set) == 0:
        raise DatasetError(f"data.root {root}: no training images")
    if val_set is not None and len(val_set) == 0 and validates(cfg):
        spec = get_spec(cfg.task)
        monitor = cfg.run.monitor or spec.monitor
        raise DatasetError(
            f"data.root {root}: the validation split is empty ({len(train_set or [])} training images; a class with "
            f"one image gives none to a data.val_fraction split), so {monitor} (run.monitor) cannot be measured. Add "
            "images or a val/ split, raise data.val_fraction, or train without validation: "
            "--trainer.limit_val_batches 0"
        )


# What `--resume` may change in the checkpoint's recipe (each documented in README, "Resuming a run"); anything
# else would silently train another recipe on top of this one, and is refused.
RESUME_KEYS = (
    "trainer.max_epochs",  # extend an epoch-based schedule (the cosine stretches from the step reached)
    "data.root",  # the data moved: the stored validation files are looked up under the new root
    "data.num_workers",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.num_nodes",
    "run.budget",  # a budget run: a new budget for this process, for the rest of its schedule
    "run.verbose",
    "run.plots",
)


def resume_config(ckpt: str | Path, config: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """The recipe stored in `ckpt` (``--resume CKPT`` alone is a whole command), with `config` (a YAML file) and
    `overrides` merged onto it; only `RESUME_KEYS` may differ from the stored recipe."""
    recipe = read_yaml(config) if config else {}
    task = recipe.get("task") if isinstance(recipe, dict) else None
    stored = read_checkpoint(ckpt, "--resume", task=task)[CONFIG_KEY]
    raw = merge(stored, recipe) if config else dict(stored)
    cfg = from_dict(merge(raw, parse_overrides(overrides or [])), str(config or f"{ckpt} (its stored recipe)"))
    check_resume(stored, cfg)
    return cfg


def check_resume(stored: dict[str, Any], cfg: Config) -> None:
    """A `ConfigError` naming every key where `cfg` differs from the checkpoint's recipe `stored`, except
    `RESUME_KEYS`; and for a change of ``run.budget`` between a budget run and an epoch-based one."""
    reference = from_dict(stored, "the checkpoint's recipe").to_dict()
    refused = [k for k in _changed_keys(reference, cfg.to_dict()) if k not in RESUME_KEYS]
    if refused:
        raise ConfigError(
            f"{', '.join(refused)}: --resume continues the checkpoint's own recipe, and these would change it "
            f"(--resume CKPT alone needs no --config or overrides). On a resume only {', '.join(RESUME_KEYS)} may "
            "change; to train another recipe from these weights, start a new run with --model.weights CKPT"
        )
    before, after = (stored.get("run") or {}).get("budget"), cfg.run.budget
    if (before is None) != (after is None):
        raise ConfigError(
            "run.budget: this run was trained by epochs; extend it with --trainer.max_epochs, or start a new run "
            "with a budget"
            if before is None
            else f"run.budget: this run follows a budget ({before}); give --run.budget again to change it, not null"
        )


def _legacy_budget(cfg: Config, checkpoint: dict[str, Any]) -> Config:
    """A budget run from before the clock (its checkpoint holds planned epochs, no clock state) continues its
    planned epochs without a time limit, as it was written to."""
    states = checkpoint.get("callbacks") or {}
    if cfg.run.budget is None or any("BudgetClock" in str(key) for key in states):
        return cfg
    log.warning(
        "--resume: this budget run predates the clock; it continues its planned %s epochs",
        cfg.trainer.get("max_epochs"),
    )
    out = copy.deepcopy(cfg)
    out.run.budget = None
    out.trainer.pop("max_time", None)
    return out


def train(
    cfg: Config | None = None,
    resume: str | Path | None = None,
    started: float | None = None,
    marks: dict[str, float] | None = None,
) -> Path:
    """Fit the recipe's task; returns the run folder. Every run ends with the final evaluation into metrics.json
    (the best checkpoint, else the last weights), with ``stopped_by`` and the epochs and steps done, also one
    stopped by the budget's deadline, early stopping, or a first Ctrl+C / SIGTERM (then `TrainingInterrupted` is
    raised after it, with the command to continue).

    Args:
        cfg: the recipe; with `resume` it may be left out (the checkpoint's own recipe), and may differ from it
            only in `RESUME_KEYS`.
        resume: a ``last.ckpt`` (or any checkpoint) to continue from, mid-schedule: optimiser, scheduler, epoch,
            the freeze state and a budget run's clock carry on; the run writes into that checkpoint's run folder.
        started: Unix time from which ``run.budget`` counts (default: now; ``cvsuite train`` passes the start of
            its process).
        marks: phases done before this call, name -> Unix time (``cvsuite train``: its imports, the dataset check);
            metrics.json's ``timings`` lists them with the run's own, in seconds from `started`.
    """
    started = time.time() if started is None else started
    phases = PhaseTimes(started, marks)
    stored = None
    if resume:
        resume = resolve(resume, "--resume")
        stored = read_checkpoint(resume, "--resume")
        cfg = resume_config(resume) if cfg is None else cfg
        check_resume(stored[CONFIG_KEY], cfg)
        cfg = _legacy_budget(cfg, stored)
    elif cfg is None:
        raise ConfigError("train: give a recipe, or a checkpoint to resume")
    check_trainer(cfg)  # devices/strategy/precision that cannot work here: named before anything is written
    schedule.shares(asdict(cfg.optim), asdict(cfg.finetune), int(cfg.trainer.get("max_epochs") or 1))
    L.seed_everything(cfg.run.seed, workers=True, verbose=False)
    spec = get_spec(cfg.task)
    if resume:
        run_dir = run_dir_of(resume)
        module = load_module(spec.module_class, resume, "--resume", task=cfg.task, pretrained=False)
        # The stored contract: same classes, preprocessing and validation files as before the interruption.
        dm = spec.build_datamodule(cfg, data_state(stored, module))
    else:
        dm = spec.build_datamodule(cfg, None)
    dm.setup("fit")  # before the run folder exists: a dataset error leaves nothing behind
    if not resume:
        check_fit_data(cfg, dm)  # an empty split or an unwritable run folder, before anything is written
    phases.mark("data")
    if not resume:
        module = spec.build_module(cfg, dm)
        run_dir = shared_run_dir(cfg.trainer["default_root_dir"], new_run_dir)  # same folder on every rank
    phases.mark("model")
    if global_rank() == 0:
        write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    clock = _budget_clock(cfg, dm, started) if cfg.run.budget is not None else None
    one_process = device_count(cfg.trainer.get("devices", 1), True) == 1 and int(cfg.trainer.get("num_nodes") or 1) == 1
    stop = SignalStop()
    with stop if one_process else contextlib.nullcontext(stop):
        # phases first: its first step is marked before a stop requested during that step is raised
        extra = [c for c in (phases, clock, stop if one_process else None) if c is not None]
        trainer, ckpt, last = build_trainer(cfg, spec, run_dir, extra=extra, clocked=clock is not None)
        signum = None
        try:
            trainer.fit(module, datamodule=dm, ckpt_path=str(resume) if resume else None, weights_only=True)
        except StopRequested as err:
            signum = err.signum
        except (KeyboardInterrupt, SystemExit) as err:  # Lightning's own stop on SIGINT / SIGTERM
            signum = signal.SIGTERM if isinstance(err, SIGTERMException) else (stop.signum or signal.SIGINT)
            if stop.count > 1:
                raise interrupted(signum, run_dir / "checkpoints" / "last.ckpt", None) from None
        phases.mark("training")
        if signum is None:
            end_process_group()
        else:
            _leave_process_group()
        if not trainer.is_global_zero:  # under DDP only rank 0 writes the run folder
            return run_dir
        try:
            scored = _final_evaluation(trainer, module, spec, cfg, dm, run_dir, ckpt, clock, signum, phases)
        except (KeyboardInterrupt, SystemExit):
            raise interrupted(stop.signum or signal.SIGINT, run_dir / "checkpoints" / "last.ckpt", None) from None
    signum = signum or stop.signum
    if signum is not None:
        raise interrupted(signum, run_dir / "checkpoints" / "last.ckpt", scored)
    return run_dir


def _budget_clock(cfg: Config, dm, started: float):
    from cvsuite.budget import BudgetClock

    val_batches = _limited(dm.val_batches(training=True), cfg.trainer.get("limit_val_batches"))
    return BudgetClock(
        cfg.run.budget,
        started,
        asdict(cfg.optim),
        asdict(cfg.finetune),
        int(cfg.trainer.get("max_epochs") or 1),
        val_batches,
        dm.val_batches(training=False),
        plots=cfg.run.plots,
    )


def _limited(batches: int, limit: Any) -> int:
    """Batches per pass under a trainer ``limit_*_batches`` (an int count or a float fraction)."""
    if limit is None:
        return batches
    if isinstance(limit, float) and limit <= 1.0:
        return max(1, int(batches * limit)) if limit > 0 else 0
    return min(batches, int(limit))


def _leave_process_group() -> None:
    """After a stopped distributed fit: close the process group without waiting for ranks that may be gone."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def _stopped_by(trainer: L.Trainer, clock, signum: int | None) -> str:
    if signum is not None:
        return signal.Signals(signum).name
    if clock is not None and (clock.stopped or clock.progress >= 1.0):
        return "deadline"
    stopper = trainer.early_stopping_callback
    if stopper is not None and stopper.stopped_epoch > 0:
        return "early_stopping"
    if trainer.max_steps not in (None, -1) and trainer.global_step >= trainer.max_steps:
        return "max_steps"
    return "max_epochs"


def _final_evaluation(trainer, module, spec, cfg, dm, run_dir, ckpt, clock, signum, phases: PhaseTimes) -> str:
    """metrics.json of the best checkpoint, else of the last weights (last.ckpt, or the module as training left
    it when no epoch ended), with the run's ``timings``; returns what it scored. A checkpoint that carries its own
    validation of the whole split (`_stored_validation`) is not scored again: its metrics are read back."""
    t0 = time.time()
    best = ckpt.best_model_path or ckpt.last_model_path
    if best and Path(best).is_file() and signum is None and _holds_module_weights(ckpt, best, trainer, cfg):
        evaluated, scored = module, Path(best).name  # the same weights, without reading them back
    elif best and Path(best).is_file() and trainer.world_size == 1 and _load_weights(module, best):
        evaluated, scored = module, Path(best).name  # the checkpoint's weights in the module trained here
    elif best and Path(best).is_file():
        evaluated, scored = load_module(spec.module_class, best, pretrained=False), Path(best).name
    else:
        evaluated, scored = module, "the last weights (no checkpoint was written yet)"
    stored = _stored_validation(evaluated, best, dm) if best and Path(best).is_file() else None
    if stored is not None:
        evaluated.last_metrics = dict(stored["metrics"])
        log.info("final evaluation: %s's own validation at step %d (the whole split)", scored, stored["step"])
    metrics = _evaluate_module(
        evaluated, spec, cfg, dm, run_dir, plots=cfg.run.plots, phases=phases, validate=stored is None
    )
    metrics.update(dm.describe())
    # The GAN steps its two optimisers once each per batch, and each step counts in global_step.
    per_batch = 1 if module.automatic_optimization else max(1, len(trainer.optimizers))
    steps_per_epoch = max(1, trainer.num_training_batches) / max(1, trainer.accumulate_grad_batches) * per_batch
    epochs = round(trainer.global_step / steps_per_epoch, 2) if trainer.num_training_batches else 0.0
    stopped_by = _stopped_by(trainer, clock, signum)
    metrics.update(
        checkpoint=str(best) if best and Path(best).is_file() else None,
        stopped_by=stopped_by,
        epochs_done=epochs,
        steps_done=int(trainer.global_step),
        timings=phases.seconds(),
    )
    write_json(run_dir / "metrics.json", metrics)  # NaN (undefined) -> null
    if cfg.run.plots and (run_dir / "metrics.csv").exists():
        from cvsuite.plots import curves_plot  # matplotlib: imported by the runs that draw

        curves_plot(run_dir / "metrics.csv", run_dir / "curves.png")
    if clock is not None:
        log.info(clock.summary(epochs, time.time() - t0, stopped_by))
    return scored


def _stored_validation(module: L.LightningModule, path: str, dm) -> dict[str, Any] | None:
    """The validation that checkpoint `path` carries of its own weights (the same step) on the whole validation
    split, for a task whose validation is its whole evaluation (``validation_is_evaluation``); else None."""
    if not getattr(module, "validation_is_evaluation", False):
        return None
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    stored = state.get(VALIDATION_KEY)
    if not stored or stored.get("step") != state.get("global_step"):
        return None
    return stored if stored.get("batches") == dm.val_batches(training=False) else None


def _holds_module_weights(ckpt, path: str, trainer: L.Trainer, cfg: Config) -> bool:
    """Whether checkpoint `path` holds exactly the weights the module has now: this single process wrote it at the
    current step (the best validation was the last thing trained), and no weight averaging swaps other weights in."""
    written = getattr(ckpt, "written_step", None)
    return (
        cfg.run.ema_decay is None
        and trainer.world_size == 1
        and written is not None
        and written == trainer.global_step
        and getattr(ckpt, "_last_checkpoint_saved", None) == path
    )


def _load_weights(module: L.LightningModule, path: str) -> bool:
    """Load checkpoint `path`'s weights into `module`, the module of the run that wrote it (the same recipe built
    both): what ``load_from_checkpoint`` gives, without building a second module and reading the file twice
    (`load_module` checks it first). False when they do not fit; `load_module` then names the problem."""
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["state_dict"]
    try:
        module.load_state_dict(state)
    except RuntimeError:  # another architecture: never from this run, but `load_module` names the problem
        return False
    return True


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


def training_only(key: str) -> bool:
    """Whether ``section.key`` only steers training (schedule, optimiser, augmentation, loss, run folder): it cannot
    change a trained model, so a recipe file's value is ignored at eval/predict/export."""
    return key.partition(".")[0] in TRAINING_SECTIONS or key in TRAINING_KEYS


def checkpoint_config(stored: dict[str, Any], config: str | Path | None, overrides: list[str] | None, spec) -> Config:
    """The checkpoint's recipe with `config` (a YAML file) and `overrides` merged onto it.

    Only the declared eval settings may differ (`EVAL_KEYS` and the task's own). A recipe file's training-only keys
    (`training_only`: the recipe the model was trained with, say, with another ``trainer.max_epochs``) are ignored
    with one note; an explicit override of one, and any other key (the model or its inputs), is refused rather than
    accepted and ignored.
    """
    base = stored[CONFIG_KEY]
    reference = from_dict(base, "checkpoint config").to_dict()
    allowed = set(EVAL_KEYS) | set(spec.eval_keys)
    from_file = read_yaml(config) if config else {}
    task = from_file.get("task", base.get("task"))
    if task != base.get("task"):
        raise ConfigError(
            f"--config {config} is a {task} recipe, but the checkpoint is a {base.get('task')} model: pass a "
            f"{base.get('task')} recipe, or leave --config out (the checkpoint holds its own recipe)"
        )
    ignored = []
    if from_file:
        file_cfg = from_dict(merge(base, from_file), str(config)).to_dict()
        for key in _changed_keys(reference, file_cfg):
            if training_only(key) and key not in allowed:
                section, _, name = key.partition(".")
                values = from_file.get(section)
                if isinstance(values, dict):
                    from_file[section] = {k: v for k, v in values.items() if k != name}
                else:  # "optim:" left empty: the section's defaults, which the checkpoint's values replace
                    from_file.pop(section, None)
                ignored.append(key)
    raw = merge(merge(base, from_file), parse_overrides(overrides or []))
    cfg = from_dict(raw, str(config or "checkpoint config"))
    refused = [k for k in _changed_keys(reference, cfg.to_dict()) if k not in allowed]
    if refused:
        training = all(training_only(k) for k in refused)
        raise ConfigError(
            f"{', '.join(refused)}: cannot change a trained model at eval/predict/export"
            f"{' (settings of training only)' if training else ''}: the checkpoint fixes the model; train again to "
            f"change it. Settings that may change here: {', '.join(sorted(allowed))}"
        )
    if ignored:
        log.info("note: --config %s: training settings ignored (the model is trained): %s", config, ", ".join(ignored))
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


def _evaluate_module(
    module,
    spec: TaskSpec,
    cfg: Config,
    dm,
    run_dir: Path | None,
    plots: bool,
    phases: PhaseTimes | None = None,
    validate: bool = True,
) -> dict[str, Any]:
    """`module`'s metrics on the whole validation split (with `validate` False: its `last_metrics` as they are),
    then its plots."""
    if validate:
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
    if phases is not None:
        phases.mark("final_evaluation")
    if plots and run_dir is not None:
        spec.save_plots(module, run_dir)
        if phases is not None:
            phases.mark("plots")
    return dict(module.last_metrics)


def eval_output(ckpt: str | Path, output: str | Path | None = None) -> Path:
    """Where `evaluate` writes its metrics: `output`, or ``<run>/eval_metrics.json``."""
    return Path(output) if output else run_dir_of(resolve(ckpt)) / "eval_metrics.json"


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
    scored. With `predictions`, the task also writes its raw predictions there (detection: COCO results JSON).
    Undefined metrics (NaN) are ``null`` in the file."""
    ckpt = resolve(ckpt)
    out = check_output_file(eval_output(ckpt, output), "--output")
    if predictions:
        check_output_file(predictions, "--predictions")
    module, cfg, spec, state = load_run(ckpt, config, overrides)
    write_predictions = getattr(module, "write_predictions", None)
    if predictions and write_predictions is None:
        raise ConfigError(f"--predictions: the {cfg.task} task has no predictions file to write")
    dm = spec.build_datamodule(cfg, state, split)
    dm.setup("validate")
    metrics = _evaluate_module(module, spec, cfg, dm, run_dir_of(ckpt), plots=False)
    metrics.update(dm.describe())
    metrics["checkpoint"] = str(ckpt)
    if predictions:
        metrics["predictions"] = str(write_predictions(predictions))
    write_json(out, metrics)
    return metrics


@dataclass
class PredictReport:
    """What `predict_report` did: the main output file, the images read, and those skipped with why."""

    path: Path
    read: int
    skipped: list[tuple[Path, str]]
    summary: str = ""

    def line(self) -> str:
        """One line for people: ``predict: 19 image(s) predicted into OUT/predictions.csv; 1 skipped (listed in
        OUT/skipped.json); top-1: cat 12, dog 7``."""
        text = f"predict: {self.read} image(s) predicted into {self.path}"
        if self.skipped:
            text += f"; {len(self.skipped)} skipped (listed in {self.path.parent / 'skipped.json'})"
        return text + (f"; {self.summary}" if self.summary else "")


def _check_inputs(inputs: Path) -> list[Path]:
    if inputs.is_dir():
        paths = list_images(inputs)
        if not paths:
            raise DatasetError(f"--input {inputs}: folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        return paths
    if inputs.is_file():
        return [inputs]
    raise ConfigError(f"--input {inputs}: no such file or folder")


def predict_report(
    ckpt: str | Path,
    inputs: str | Path,
    output: str | Path,
    config: str | Path | None = None,
    overrides: list[str] | None = None,
    **options: Any,
) -> PredictReport:
    """Predict every image in `inputs` (a file or a folder, searched recursively) into `output`. Unreadable or
    unsupported images (truncated, floating-point, above `max_image_pixels`) are skipped with a warning each and
    listed in ``output/skipped.json`` (an empty list when none was)."""
    output = check_output_folder(output, "--output")
    for name, value in options.items():
        if name == "topk" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"--topk must be an integer >= 1, got {value!r}")
    paths = _check_inputs(Path(inputs))
    module, cfg, spec = load_checkpoint(ckpt, config, overrides)
    accepted = inspect.signature(spec.predict).parameters
    for name in options:
        if name not in accepted:
            raise ConfigError(f"--{name} does not apply to {cfg.task} checkpoints")
    paths, skipped = drop_unreadable(paths)  # warns per file; the others are still predicted
    if not paths:
        raise DatasetError(f"--input {inputs}: no readable image ({skipped[0][0]}: {skipped[0][1]})")
    if torch.cuda.is_available() and cfg.trainer.get("accelerator") in ("auto", "gpu", "cuda"):
        module = module.cuda()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = Path(spec.predict(module.eval(), paths, output, cfg, **options))
    write_json(output / "skipped.json", [{"path": display_path(p), "reason": reason} for p, reason in skipped])
    return PredictReport(result, len(paths), skipped, prediction_summary(cfg, result))


def predict(
    ckpt: str | Path,
    inputs: str | Path,
    output: str | Path,
    config: str | Path | None = None,
    overrides: list[str] | None = None,
    **options: Any,
) -> Path:
    """`predict_report`, returning the main output file (predictions.csv, detections.json, ...)."""
    return predict_report(ckpt, inputs, output, config, overrides, **options).path


def prediction_summary(cfg: Config, path: Path) -> str:
    """A few words on what was predicted, read back from the file the task wrote: the most frequent top-1 classes,
    the boxes per class above ``model.draw_score_thresh``, the mean pixel share per class, or the mean per target."""
    try:
        if cfg.task == "classification":
            counts = Counter(r["topk"][0]["label"] for r in json.loads((path.parent / "predictions.json").read_text()))
            return "top-1: " + _counts(counts)
        if cfg.task == "detection":
            least = cfg.model.draw_score_thresh
            rows = json.loads(path.read_text())
            counts = Counter(d["label"] for r in rows for d in r["detections"] if d["score"] >= least)
            return f"boxes scoring >= {least:g}: " + (_counts(counts) if counts else "none")
        if cfg.task in ("segmentation", "regression"):
            with path.open(encoding="utf-8", newline="") as fh:
                rows = list(csv.DictReader(fh))
            columns = [c for c in rows[0] if c.startswith("fraction_")] if cfg.task == "segmentation" else None
            columns = columns if columns is not None else [c for c in rows[0] if c != "path"]
            means = {c.removeprefix("fraction_"): sum(float(r[c]) for r in rows) / len(rows) for c in columns}
            what = "mean pixel share" if cfg.task == "segmentation" else "mean"
            return f"{what}: " + ", ".join(f"{k} {v:.3g}" for k, v in list(means.items())[:8])
    except (OSError, ValueError, KeyError, IndexError, ZeroDivisionError):
        return ""
    return ""


def _counts(counts: Counter) -> str:
    top = counts.most_common(8)
    more = f", {len(counts) - len(top)} more" if len(counts) > len(top) else ""
    return ", ".join(f"{name} {n}" for name, n in top) + more
