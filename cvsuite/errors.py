"""The errors a user can act on, in one module that every layer raises and the CLI maps to exit codes.

`UserError` and its subclasses are the user's to fix (a recipe key, a file, a checkpoint): the CLI prints
``error: <message>`` and exits 2. `Failed` means a command ran but its result must not be used (an export that fails
its parity check): ``error: <message>``, exit 1. Any other exception is a bug and keeps its traceback.
This module imports nothing from cvsuite, so library code can raise these without importing the CLI.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input the user can fix; the message names the key, file or flag and what to do."""


class ConfigError(UserError):
    """A recipe, override or flag names an unknown key or gives a value of the wrong type or range."""


class ChoiceError(ConfigError, KeyError):
    """An unknown name where the recipe picks one of several (decoder, loss, generator...); also a KeyError."""

    __str__ = ValueError.__str__  # KeyError's would quote the message


class DatasetError(UserError):
    """The data on disk cannot be used as it is; the message names the file and what to do."""


class CheckFailed(DatasetError):
    """The dataset check found errors (listed above the message)."""


class CheckpointError(UserError):
    """A checkpoint that cannot be used: missing, damaged, not a cvsuite checkpoint, or made for another task."""


class WeightsNotFoundError(UserError, RuntimeError):
    """Pretrained weights were asked for and none could be found."""


class Failed(Exception):
    """A command ran but its result is not usable (e.g. an export that fails its parity check): exit 1."""


class ExportMismatch(Failed):
    """The exported model's outputs differ from PyTorch's by more than the tolerance (the file is kept)."""


class TrainingInterrupted(Exception):
    """Training stopped on SIGINT (Ctrl+C) or SIGTERM (scheduler, ``kill``). ``signum`` is the signal, for the exit
    status (128 + signum)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
