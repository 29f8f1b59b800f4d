"""Recipes: a YAML file in data-flow order (task, data, model, optim, finetune, run, trainer) plus
``--section.key value`` overrides. Every key is checked against the dataclass of its section (or Lightning's
Trainer signature), so a misspelt key is an error with a "did you mean", never a silent no-op.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from cvsuite.errors import ChoiceError, ConfigError  # noqa: F401  (importable from here too)

SECTIONS = ("task", "data", "model", "optim", "finetune", "run", "trainer")
# The Trainer arguments that the run owns; a recipe setting them would be silently replaced.
TRAINER_OWNED = ("callbacks", "logger", "enable_checkpointing")


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule, shared by every task."""

    optimizer: Literal["sgd", "rmsprop", "adam", "adamw"] = "adamw"
    lr: float = 1e-3
    momentum: float = 0.9  # sgd, rmsprop
    nesterov: bool = False  # sgd
    betas: tuple[float, float] = field(default_factory=lambda: [0.9, 0.999])  # adam, adamw (kept as a list)
    weight_decay: float = 0.01  # L2 (decoupled for adamw)
    no_decay_norm_bias: bool = True  # no weight decay on norm layers and biases
    l1_head: float = 0.0  # L1 penalty on the new head's weights
    scheduler: Literal["none", "step", "cosine"] = "cosine"
    warmup_epochs: float = 0.0  # linear warm-up in front of the schedule, in epochs (older recipes; see warmup_share)
    # Linear warm-up over this share of the schedule (0.1 = the first 10 % of the optimiser steps, or of the training
    # time under run.budget): the same shape for 3 epochs or 30. null = warmup_epochs. Set one of the two.
    warmup_share: float | None = None
    step_size: int = 10  # step: epochs between decays
    gamma: float = 0.1  # step: decay factor
    min_lr_ratio: float = 0.01  # cosine: final lr / lr


@dataclass
class FinetuneConfig:
    """Transfer-learning controls, shared by every task."""

    freeze_backbone: bool = False  # frozen for the whole run
    freeze_epochs: int = 0  # frozen for the first N epochs, then trained (older recipes; see freeze_share)
    # Frozen for this share of the schedule (0.1 = the first 10 % of the optimiser steps, or of the training time under
    # run.budget), then trained; whole epochs (at least one) with cache_features. null = freeze_epochs. Set one.
    freeze_share: float | None = None
    backbone_lr_mult: float = 1.0  # backbone lr = optim.lr * this
    layer_decay: float | None = None  # layer-wise lr decay inside the backbone (e.g. 0.75)
    bn_eval_when_frozen: bool = True  # keep BatchNorm statistics fixed while the backbone is frozen
    # Frozen epochs train the new head on the backbone's pooled features of the un-augmented training images,
    # computed once instead of every step (classification): linear-probe speed for the frozen phase.
    cache_features: bool = False


@dataclass
class RunConfig:
    """What happens around training: seeding, checkpoint selection, early stopping, EMA."""

    seed: int = 42
    monitor: str | None = None  # metric for best checkpoint / early stopping; None = the task's default
    mode: Literal["min", "max"] | None = None  # None = the task's default
    early_stopping_patience: int | None = None  # epochs without improvement; None = off
    ema_decay: float | None = None  # EMA of weights (e.g. 0.999); None = off
    plots: bool = True
    verbose: bool = True  # progress bar and one line per epoch; false (or --quiet) for scripts
    # Wall-clock budget of the whole process ("15min", "90s", "1h", or seconds): warm-up, cosine, freeze and validation
    # follow the share of the training time spent, against a deadline that leaves room for the final evaluation and
    # the exit. null = epoch-based (trainer.max_epochs).
    budget: str | float | None = None


TRAINER_DEFAULTS: dict[str, Any] = {
    "max_epochs": 10,
    "accelerator": "auto",
    "devices": 1,
    "precision": "32-true",
    "default_root_dir": "runs/exp",
    "log_every_n_steps": 10,
    # Lightning's table counts parameters before the backbone is frozen and FLOPs only for models that set
    # example_input_array (ours do not: it would read "0"); true shows it anyway.
    "enable_model_summary": False,
}


@dataclass
class Config:
    task: str
    data: Any
    model: Any
    optim: OptimConfig
    finetune: FinetuneConfig
    run: RunConfig
    trainer: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"task": self.task}
        for name in SECTIONS[1:-1]:
            out[name] = dataclasses.asdict(getattr(self, name))
        out["trainer"] = dict(self.trainer)
        return out


def _did_you_mean(key: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


def _unknown(where: str, key: str, options: typing.Iterable[str]) -> ConfigError:
    options = sorted(options)
    return ConfigError(
        f"Unknown config key '{where}{key}'.{_did_you_mean(key, options)} Valid keys: {', '.join(options)}"
    )


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint) if a is not type(None))
    if origin in (list, tuple, dict):
        return f"{origin.__name__}"
    return getattr(hint, "__name__", str(hint))


def _check_literal(value: Any, hint: Any, key: str) -> Any:
    choices = typing.get_args(hint)
    if value in choices and type(value) in {type(c) for c in choices}:
        return value
    if isinstance(value, str):
        # Choice names are lower-case; "AdamW" means "adamw".
        lowered = {str(c).lower(): c for c in choices}
        if value.lower() in lowered:
            return lowered[value.lower()]
    names = [str(c) for c in choices]
    hint_text = _did_you_mean(str(value), names) if isinstance(value, str) else ""
    raise ConfigError(f"'{key}' must be one of {', '.join(names)}, got {value!r}.{hint_text}")


def _check_sequence(value: Any, hint: Any, key: str) -> list[Any]:
    """Lists are checked element by element; ``tuple[float, float]`` also fixes the length. Kept as a list (the
    recipe is YAML and Lightning stores hyperparameters as plain types)."""
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"'{key}' must be a list, got {value!r} ({type(value).__name__})")
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            kinds = ", ".join(_type_name(a) for a in args)
            raise ConfigError(f"'{key}' must be a list of {len(args)} values ({kinds}), got {value!r}")
        return [_check_type(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
    item = args[0] if args else Any
    return [_check_type(v, item, f"{key}[{i}]") for i, v in enumerate(value)]


def _check_type(value: Any, hint: Any, key: str) -> Any:
    """Return value converted to `hint` where that is lossless (int -> float, "1e-4" -> float), else raise a
    ConfigError naming the key and what it accepts."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        arms = typing.get_args(hint)
        if value is None:
            if type(None) in arms:
                return None
            raise ConfigError(f"'{key}' may not be null; it must be {_type_name(hint)}")
        errors = []
        for arm in arms:
            if arm is type(None):
                continue
            try:
                return _check_type(value, arm, key)
            except ConfigError as err:
                errors.append(str(err))
        if len(errors) == 1:
            raise ConfigError(errors[0])
        raise ConfigError(f"'{key}' must be {_type_name(hint)}, got {value!r}")
    if hint is Any:
        return value
    if origin is Literal:
        return _check_literal(value, hint, key)
    base = origin or hint
    if base in (list, tuple):
        return _check_sequence(value, hint, key)
    if base is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' must be a mapping, got {value!r} ({type(value).__name__})")
        return value
    if base is float and isinstance(value, str):
        # YAML 1.1 reads "1e-4" (no dot) as a string; accept what Python reads as a number.
        try:
            return float(value)
        except ValueError:
            pass
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base is bool and not isinstance(value, bool):
        raise ConfigError(f"'{key}' must be true or false, got {value!r}")
    if base is int and isinstance(value, bool):
        raise ConfigError(f"'{key}' must be an integer, got {value!r}")
    if isinstance(base, type) and not isinstance(value, base):
        raise ConfigError(f"'{key}' must be {getattr(base, '__name__', base)}, got {value!r} ({type(value).__name__})")
    return value


@dataclass(frozen=True)
class Range:
    """The numbers a key accepts: ``low``/``high`` bounds (None = unbounded), each included unless ``*_open``, and
    a few special values besides (``num_workers: -1`` = one per spare core)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    also: tuple[float, ...] = ()

    def __contains__(self, value: float) -> bool:
        if value in self.also:
            return True
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        low, high = _number(self.low), _number(self.high)
        if self.low is not None and self.high is not None:
            text = f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        elif self.low is not None:
            text = f"{'>' if self.low_open else '>='} {low}"
        else:
            text = f"{'<' if self.high_open else '<='} {high}"
        return text + "".join(f", or {_number(v)}" for v in self.also)


def _number(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


POSITIVE, AT_LEAST_ONE, NON_NEGATIVE = Range(0, low_open=True), Range(1), Range(0)
FRACTION, PROBABILITY = Range(0, 1, high_open=True), Range(0, 1)  # [0, 1) and [0, 1]
# The numbers each key accepts, for every task whose section has the key (list elements too: model.class_weights).
# Checked as the recipe is read, so a bad value stops the command before any data is read or file written.
RANGES: dict[str, Range] = {
    "data.batch_size": AT_LEAST_ONE,
    "data.image_size": AT_LEAST_ONE,
    "data.crop_size": AT_LEAST_ONE,
    "data.crops_per_image": AT_LEAST_ONE,
    "data.class_crops": PROBABILITY,
    "data.num_workers": Range(0, also=(-1,)),
    "data.val_fraction": Range(0, 1, low_open=True, high_open=True),
    "data.mixup_alpha": NON_NEGATIVE,
    "data.cutmix_alpha": NON_NEGATIVE,
    "data.min_visibility": PROBABILITY,
    "data.min_box_size": NON_NEGATIVE,
    "data.images_per_epoch": AT_LEAST_ONE,
    "data.max_real_images": AT_LEAST_ONE,
    "data.num_classes": AT_LEAST_ONE,
    "data.ignore_index": Range(0, 65535),
    "model.dropout": FRACTION,
    "model.drop_path_rate": FRACTION,
    "model.label_smoothing": FRACTION,
    "model.focal_gamma": NON_NEGATIVE,
    "model.class_weights": NON_NEGATIVE,
    "model.class_weight_power": NON_NEGATIVE,
    "model.score_thresh": PROBABILITY,
    "model.nms_iou": PROBABILITY,
    "model.draw_score_thresh": PROBABILITY,
    "model.max_detections": AT_LEAST_ONE,
    "model.fpn_channels": AT_LEAST_ONE,
    "model.head_convs": NON_NEGATIVE,
    "model.box_loss_weight": POSITIVE,
    "model.center_sampling_radius": POSITIVE,
    "model.frozen_levels": NON_NEGATIVE,
    "model.huber_delta": POSITIVE,
    "model.dice_weight": NON_NEGATIVE,
    "model.decoder_width": AT_LEAST_ONE,
    "model.latent_dim": AT_LEAST_ONE,
    "model.g_channels": AT_LEAST_ONE,
    "model.d_channels": AT_LEAST_ONE,
    "model.d_input_size": AT_LEAST_ONE,
    "model.d_lr": POSITIVE,
    "model.d_betas": FRACTION,
    "model.ada_target": PROBABILITY,
    "model.ada_interval": AT_LEAST_ONE,
    "model.ada_ramp_images": AT_LEAST_ONE,
    "model.ema_decay": FRACTION,
    "model.feature_input_size": AT_LEAST_ONE,
    "model.kid_subset_size": Range(2),
    "model.grid_size": AT_LEAST_ONE,
    "optim.lr": POSITIVE,
    "optim.momentum": FRACTION,
    "optim.betas": FRACTION,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.l1_head": NON_NEGATIVE,
    "optim.warmup_epochs": NON_NEGATIVE,
    "optim.step_size": AT_LEAST_ONE,
    "optim.gamma": POSITIVE,
    "optim.min_lr_ratio": PROBABILITY,
    "finetune.freeze_epochs": NON_NEGATIVE,
    "finetune.backbone_lr_mult": NON_NEGATIVE,
    "finetune.layer_decay": Range(0, 1, low_open=True),
    "run.seed": Range(0, 2**32 - 1),
    "run.early_stopping_patience": NON_NEGATIVE,
    "run.ema_decay": Range(0, 1, low_open=True, high_open=True),
}


# What run.monitor may name: the validation scalars each task logs (tests/test_hostile_inputs.py checks them against
# the metrics.csv of real runs), besides any ``*_loss``. Lower is better for losses, errors and distances.
MONITORS: dict[str, tuple[str, ...]] = {
    "classification": ("val_accuracy", "val_precision", "val_recall", "val_f1", "val_auroc", "val_average_precision"),
    "detection": tuple(f"val_{k}" for k in ("map", "map_50", "map_75", "map_small", "map_medium", "map_large"))
    + tuple(f"val_{k}" for k in ("mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large")),
    "segmentation": ("val_miou", "val_dice", "val_pixel_accuracy"),
    "regression": ("val_mae", "val_rmse", "val_r2"),
    "generation": ("val_fid", "val_kid"),
}
LOWER_IS_BETTER = re.compile(r"(^|_)(loss|mae|rmse|fid|kid)(_|$)")


def _check_monitor(cfg: Config, default_mode: str) -> None:
    monitor, mode = cfg.run.monitor, cfg.run.mode or default_mode
    if monitor is None:
        return
    known = MONITORS.get(cfg.task, ())
    if monitor not in known and not re.fullmatch(r"(train|val)_\w*loss", monitor):
        raise ConfigError(
            f"'run.monitor' must name a metric the {cfg.task} task logs: {', '.join(known)} or a *_loss; got "
            f"{monitor!r}.{_did_you_mean(monitor, known)}"
        )
    lower = bool(LOWER_IS_BETTER.search(monitor))
    if mode == ("max" if lower else "min"):
        better = "lower" if lower else "higher"
        raise ConfigError(
            f"'run.mode' is {mode} but {monitor} is better when {better}: best.ckpt and early stopping would keep "
            f"the worst epoch. Set --run.mode {'min' if lower else 'max'}"
        )


def _check_range(value: Any, key: str) -> None:
    """`value` (a number, or a list of them) within ``RANGES[key]``; anything else was checked by type already."""
    allowed = RANGES.get(key)
    if allowed is None:
        return
    for i, v in enumerate(value if isinstance(value, list) else [value]):
        if isinstance(v, (int, float)) and not isinstance(v, bool) and (math.isnan(v) or v not in allowed):
            where = f"{key}[{i}]" if isinstance(value, list) else key
            raise ConfigError(f"'{where}' must be {allowed}, got {v!r}")


def build_section(cls: type, values: dict[str, Any] | None, section: str) -> Any:
    """Instantiate dataclass `cls` from `values`, rejecting unknown keys, wrong types and numbers out of range."""
    values = values or {}
    if not isinstance(values, dict):
        raise ConfigError(f"Config section '{section}' must be a mapping of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise _unknown(f"{section}.", key, names)
        kwargs[key] = _check_type(value, hints[key], f"{section}.{key}")
        _check_range(kwargs[key], f"{section}.{key}")
    return cls(**kwargs)


# Trainer arguments whose annotation allows numbers Lightning would reject later (or silently misread).
TRAINER_RANGES: dict[str, Range] = {
    "max_epochs": Range(1, also=(-1,)),  # -1: no epoch limit (then trainer.max_steps or early stopping ends it)
    "min_epochs": NON_NEGATIVE,
    "max_steps": Range(1, also=(-1,)),
    "min_steps": NON_NEGATIVE,
    "num_nodes": AT_LEAST_ONE,
    "check_val_every_n_epoch": AT_LEAST_ONE,
    "num_sanity_val_steps": Range(0, also=(-1,)),
    "log_every_n_steps": NON_NEGATIVE,
    "accumulate_grad_batches": AT_LEAST_ONE,
    "reload_dataloaders_every_n_epochs": NON_NEGATIVE,
    "limit_train_batches": NON_NEGATIVE,
    "limit_val_batches": NON_NEGATIVE,
    "limit_test_batches": NON_NEGATIVE,
    "limit_predict_batches": NON_NEGATIVE,
    "overfit_batches": NON_NEGATIVE,
    "gradient_clip_val": NON_NEGATIVE,
}


# Lightning reads a float as a share of the batches and an int as a count.
FRACTION_OR_COUNT = ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches")


def _trainer_section(values: dict[str, Any] | None) -> dict[str, Any]:
    """Lightning's Trainer arguments, checked against the annotations of ``Trainer.__init__`` (and the ranges above),
    so ``--trainer.max_epochs two`` or ``0`` fails here, naming the key, and not inside Lightning."""
    from lightning.pytorch import Trainer

    hints = typing.get_type_hints(Trainer.__init__)
    allowed = set(inspect.signature(Trainer.__init__).parameters) - {"self"}
    out = dict(TRAINER_DEFAULTS)
    for key, value in (values or {}).items():
        if key in TRAINER_OWNED:
            raise ConfigError(f"'trainer.{key}' is set by cvsuite (see the run section and README); remove it")
        if key not in allowed:
            raise _unknown("trainer.", key, allowed)
        if key in hints:
            value = _check_trainer_value(value, hints[key], f"trainer.{key}")
        bounds = TRAINER_RANGES.get(key)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if bounds is not None and number and (math.isnan(value) or value not in bounds):
            raise ConfigError(f"'trainer.{key}' must be {bounds}, got {value!r}")
        if key in FRACTION_OR_COUNT and isinstance(value, float) and value > 1:
            raise ConfigError(f"'trainer.{key}' must be a fraction in [0, 1] or a count (an integer), got {value!r}")
        out[key] = value
    return out


def _check_trainer_value(value: Any, hint: Any, key: str) -> Any:
    """Like `_check_type`, but an int stays an int where the annotation also allows it (Lightning reads
    ``limit_val_batches: 1`` as one batch and ``1.0`` as all of them)."""
    arms = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if isinstance(value, int) and not isinstance(value, bool) and int in arms:
        return value
    return _check_type(value, hint, key)


def parse_overrides(args: list[str]) -> dict[str, dict[str, Any]]:
    """``["--data.root", "X", "--trainer.max_epochs=3"]`` -> ``{"data": {"root": "X"}, "trainer": {...}}``.

    Values are read as YAML, so numbers, booleans, null, lists and mappings work as in the recipe file.
    """
    out: dict[str, dict[str, Any]] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"Unexpected argument '{arg}': overrides look like --section.key value")
        name, eq, raw = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args):
                raise ConfigError(f"Override '{arg}' needs a value: {arg} VALUE")
            raw = args[i + 1]
            if raw.startswith("--") and raw[2:].partition("=")[0].partition(".")[0] in SECTIONS:
                # "--data.batch_size --trainer.max_epochs 1": the value was left out, not "--trainer.max_epochs".
                raise ConfigError(f"Override '{arg}' needs a value: {arg} VALUE (it is followed by {raw})")
            i += 1
        i += 1
        section, dot, key = name.partition(".")
        if section not in SECTIONS:
            raise _unknown("", section, SECTIONS)
        value = yaml.safe_load(raw) if raw != "" else None
        if section == "task":
            out["task"] = value
            continue
        if not dot or not key:
            raise ConfigError(f"Override '{arg}' must name a key, like --{section}.<key> value")
        out.setdefault(section, {})[key] = value
    return out


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for section, values in overrides.items():
        if isinstance(values, dict):
            out.setdefault(section, {})
            out[section] = {**(out[section] or {}), **values}
        else:
            out[section] = values
    return out


def from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    """Validate a raw mapping into a Config; the task's own sections come from its TaskSpec."""
    from cvsuite.tasks import TASK_MODULES, get_spec

    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a recipe is a mapping with sections {', '.join(SECTIONS)}")
    for key in raw:
        if key not in SECTIONS:
            raise _unknown("", key, SECTIONS)
    task = raw.get("task")
    if task not in TASK_MODULES:
        raise ConfigError(f"{source}: 'task' must be one of {', '.join(TASK_MODULES)}, got {task!r}")
    spec = get_spec(task)
    cfg = Config(
        task=task,
        data=build_section(spec.data_config, raw.get("data"), "data"),
        model=build_section(spec.model_config, raw.get("model"), "model"),
        optim=build_section(OptimConfig, raw.get("optim"), "optim"),
        finetune=build_section(FinetuneConfig, raw.get("finetune"), "finetune"),
        run=build_section(RunConfig, raw.get("run"), "run"),
        trainer=_trainer_section(raw.get("trainer")),
    )
    check_combinations(cfg)
    _check_monitor(cfg, spec.mode)
    return cfg


def check_combinations(cfg: Config) -> None:
    """Keys that are each valid but cannot work together, named before anything runs."""
    trainer, run = cfg.trainer, cfg.run
    limit = trainer.get("limit_val_batches")
    if run.early_stopping_patience is not None and limit is not None and float(limit) == 0:
        raise ConfigError(
            "run.early_stopping_patience needs validation, but trainer.limit_val_batches is 0 (training without "
            "validation): set run.early_stopping_patience: null, or let the run validate"
        )
    endless = trainer.get("max_epochs") == -1 and trainer.get("max_steps", -1) == -1
    if endless and run.early_stopping_patience is None and run.budget is None:
        raise ConfigError(
            "trainer.max_epochs is -1 (no limit) and nothing else ends the run: set trainer.max_epochs >= 1, "
            "trainer.max_steps, run.early_stopping_patience or run.budget"
        )
    subset = getattr(cfg.data, "val_subset", None)
    if isinstance(subset, float) and not 0 < subset <= 1:
        raise ConfigError(f"'data.val_subset' must be a fraction in (0, 1] or a count >= 1, got {subset!r}")
    if isinstance(subset, int) and subset < 1:
        raise ConfigError(f"'data.val_subset' must be a count >= 1 or a fraction in (0, 1], got {subset!r}")
    if cfg.task == "detection" and cfg.data.image_size % 32:
        raise ConfigError(
            f"'data.image_size' must be a multiple of 32 for detection (the deepest feature stride), got "
            f"{cfg.data.image_size}"
        )
    frozen = cfg.finetune.freeze_share or cfg.finetune.freeze_epochs or cfg.finetune.freeze_backbone
    if cfg.finetune.cache_features and not frozen:
        raise ConfigError(
            "finetune.cache_features applies to a frozen phase, and this recipe has none: set finetune.freeze_share "
            "(or freeze_epochs, freeze_backbone), or drop cache_features"
        )
    if getattr(cfg.data, "class_crops", 0) and cfg.data.train_transforms:
        raise ConfigError(
            "data.class_crops places the preset pipeline's crops, and data.train_transforms replaces that pipeline: "
            "set data.class_crops 0 (the segmentation recipe sets 0.5) or drop data.train_transforms"
        )
    if run.budget is not None:
        from cvsuite.budget import parse_duration

        parse_duration(run.budget)  # "10 minutes", 0 or -5 are named here, not after the data is read


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a text file ({err.reason}); a recipe is a UTF-8 YAML file") from err
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: a recipe is a mapping of sections ({', '.join(SECTIONS)}), but this file holds a "
            f"{type(raw).__name__}; see configs/<task>/*.yaml"
        )
    return raw


def load_config(path: str | Path | None, overrides: list[str] | None = None, base: dict | None = None) -> Config:
    """Read a recipe (or start from `base`, e.g. the config saved in a checkpoint) and apply overrides."""
    raw = read_yaml(path) if path else dict(base or {})
    raw = merge(raw, parse_overrides(overrides or []))
    return from_dict(raw, str(path or "checkpoint config"))
