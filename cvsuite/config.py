"""Recipes: a YAML file in data-flow order (task, data, model, optim, finetune, run, trainer) plus
``--section.key value`` overrides. Every key is checked against the dataclass of its section (or Lightning's
Trainer signature), so a misspelt key is an error with a "did you mean", never a silent no-op.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
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


def build_section(cls: type, values: dict[str, Any] | None, section: str) -> Any:
    """Instantiate dataclass `cls` from `values`, rejecting unknown keys and wrong types."""
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
    return cls(**kwargs)


# Trainer arguments whose annotation allows numbers Lightning would reject later (or silently misread).
TRAINER_MINIMUM = {
    "max_epochs": -1,
    "min_epochs": 0,
    "max_steps": -1,
    "min_steps": 0,
    "num_nodes": 1,
    "check_val_every_n_epoch": 1,
    "num_sanity_val_steps": -1,
    "log_every_n_steps": 0,
    "accumulate_grad_batches": 1,
    "reload_dataloaders_every_n_epochs": 0,
    "limit_train_batches": 0,
    "limit_val_batches": 0,
    "limit_test_batches": 0,
    "limit_predict_batches": 0,
    "overfit_batches": 0,
    "gradient_clip_val": 0,
}


def _trainer_section(values: dict[str, Any] | None) -> dict[str, Any]:
    """Lightning's Trainer arguments, checked against the annotations of ``Trainer.__init__`` (and a few lower
    bounds), so ``--trainer.max_epochs two`` fails here, naming the key, and not inside Lightning."""
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
        low = TRAINER_MINIMUM.get(key)
        if low is not None and isinstance(value, (int, float)) and not isinstance(value, bool) and value < low:
            raise ConfigError(f"'trainer.{key}' must be >= {low}, got {value!r}")
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
                raise ConfigError(f"Override '{arg}' needs a value")
            raw = args[i + 1]
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
    return Config(
        task=task,
        data=build_section(spec.data_config, raw.get("data"), "data"),
        model=build_section(spec.model_config, raw.get("model"), "model"),
        optim=build_section(OptimConfig, raw.get("optim"), "optim"),
        finetune=build_section(FinetuneConfig, raw.get("finetune"), "finetune"),
        run=build_section(RunConfig, raw.get("run"), "run"),
        trainer=_trainer_section(raw.get("trainer")),
    )


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    return raw


def load_config(path: str | Path | None, overrides: list[str] | None = None, base: dict | None = None) -> Config:
    """Read a recipe (or start from `base`, e.g. the config saved in a checkpoint) and apply overrides."""
    raw = read_yaml(path) if path else dict(base or {})
    raw = merge(raw, parse_overrides(overrides or []))
    return from_dict(raw, str(path or "checkpoint config"))
