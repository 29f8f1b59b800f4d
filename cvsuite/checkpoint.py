"""Reading checkpoint files: what a cvsuite checkpoint holds beyond Lightning's own keys, loaded safely.

Checkpoints are read with ``torch.load(weights_only=True)``: tensors, numbers, strings, lists and dicts only, so a
file from elsewhere cannot run code when opened. Everything cvsuite stores fits that; a class that ever needs to be
stored goes into `SAFE_GLOBALS` (registered with ``torch.serialization.add_safe_globals``).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from cvsuite.errors import CheckpointError  # noqa: F401  (importable from here too)

# The resolved recipe, stored in every checkpoint so eval/predict/export need nothing else.
CONFIG_KEY = "cvsuite_config"
# A validation that scored the checkpoint's own weights (its step, batches and metrics): written by tasks whose
# validation is their whole evaluation (the GAN's FID/KID), read back by a run's final evaluation.
VALIDATION_KEY = "cvsuite_validation"

# Classes (beyond torch's own allow-list) that cvsuite checkpoints may hold. None today: hparams are plain dicts.
SAFE_GLOBALS: list[Any] = []
torch.serialization.add_safe_globals(SAFE_GLOBALS)


def resolve(path: str | Path, what: str = "--ckpt") -> Path:
    """A checkpoint file, or a run folder standing for its ``checkpoints/best.ckpt`` (``last.ckpt`` when the run
    kept no best one, e.g. it trained without validation)."""
    path = Path(path)
    if not path.is_dir():
        return path
    for name in ("best.ckpt", "last.ckpt"):
        for candidate in (path / "checkpoints" / name, path / name):
            if candidate.is_file():
                return candidate
    raise CheckpointError(f"{what} {path}: a folder without checkpoints/best.ckpt or last.ckpt; give a .ckpt file")


def load_file(path: str | Path, what: str = "--ckpt") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with a named error for each way a file can be unusable.

    Args:
        what: how the user named the file (``--ckpt``, ``--resume``, ``model.weights``), for the message.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{what} {path}: the file is empty: damaged or not a cvsuite checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = _unsafe_globals(path)
        if not unsafe:
            raise CheckpointError(f"{what} {path}: cannot be read: damaged or not a cvsuite checkpoint") from err
        # The file is readable but asks for more trust than a checkpoint should: it would run code from these names.
        raise CheckpointError(
            f"{what} {path}: holds Python objects beyond tensors and plain values ({', '.join(unsafe[:5])}), so it "
            "was not loaded (torch.load weights_only=True). cvsuite checkpoints never need these; if you trust the "
            "file, load it yourself with torch.load(weights_only=False) and save only its tensors."
        ) from err
    except Exception as err:  # garbage makes the unpickler fail in any way (IndexError, KeyError, EOFError...)
        raise CheckpointError(
            f"{what} {path}: cannot be read ({type(err).__name__}): damaged or not a cvsuite checkpoint (e.g. "
            "truncated by an interrupted copy)"
        ) from err


def _unsafe_globals(path: Path) -> list[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a zip checkpoint at all: nothing to name
        return []


def read_checkpoint(ckpt: str | Path, what: str = "--ckpt", task: str | None = None) -> dict[str, Any]:
    """The checkpoint's contents; a `CheckpointError` for a missing, damaged or non-cvsuite file, or (with `task`)
    a checkpoint of another task."""
    stored = load_file(ckpt, what)
    if not isinstance(stored, dict) or CONFIG_KEY not in stored or "state_dict" not in stored:
        raise CheckpointError(
            f"{what} {ckpt}: not a cvsuite checkpoint (no '{CONFIG_KEY}' entry); train it with tools/train.py"
        )
    stored_task = stored[CONFIG_KEY].get("task")
    if task is not None and stored_task != task:
        raise CheckpointError(f"{what} {ckpt}: this is a {stored_task} checkpoint; the recipe's task is {task}")
    return stored


def load_module(module_class: type, ckpt: str | Path, what: str = "--ckpt", task: str | None = None, **kwargs: Any):
    """``module_class.load_from_checkpoint`` (weights_only, on the CPU) after `read_checkpoint`'s checks, so a bad
    file or a checkpoint of another task gets a named error rather than a state-dict dump."""
    read_checkpoint(ckpt, what, task)
    try:
        return module_class.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True, **kwargs)
    except RuntimeError as err:  # load_state_dict: missing/unexpected keys or other shapes
        raise CheckpointError(
            f"{what} {ckpt}: its weights do not fit the {module_class.__name__} this recipe builds "
            f"({' '.join(str(err).split())[:400]}); was it trained with another model.* setting or cvsuite version?"
        ) from err
