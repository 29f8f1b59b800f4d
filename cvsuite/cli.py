"""Argument parsing shared by tools/*.py: a few named flags, the rest are ``--section.key value`` overrides."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cvsuite.errors import TrainingInterrupted, UserError

# Our own error types (cvsuite.errors): the user's to fix, so print the message, not a traceback. Any other exception
# is a bug in cvsuite (or a library) and keeps its traceback.
USER_ERRORS = (UserError,)
BUG_NOTE = "This is a bug in cvsuite, not in your input: please report it with the traceback above."


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """Known flags, plus every remaining ``--section.key value`` as an override list."""
    args, rest = parser.parse_known_args(argv)
    return args, rest


PACKAGE = Path(__file__).resolve().parent


def format_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
) -> str:
    """``warning: <message>`` for cvsuite's own warnings (a skipped image, a clipped box): they name the file and
    what happened, and the source line that issued them says nothing to a user. Other libraries' keep theirs."""
    if issubclass(category, UserWarning) and Path(filename).resolve().is_relative_to(PACKAGE):
        return f"warning: {message}\n"
    return _python_format_warning(message, category, filename, lineno, line)


_python_format_warning = warnings.formatwarning


def main_wrapper(fn: Callable[[], Any]) -> int:
    """Run `fn`; our own errors exit 2 with `error: message`, an interrupted training run exits 128 + the signal
    number (130 SIGINT, 143 SIGTERM) saying how to resume, anything else exits 1 with its traceback."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    previous, warnings.formatwarning = warnings.formatwarning, format_warning
    try:
        fn()
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingInterrupted as err:
        print(f"interrupted: {err}", file=sys.stderr)
        return 128 + err.signum
    except Exception:
        traceback.print_exc()
        print(f"\n{BUG_NOTE}", file=sys.stderr)
        return 1
    finally:
        warnings.formatwarning = previous
    return 0


def print_json_last(obj: dict[str, Any]) -> None:
    """The contract of eval.py: exactly one JSON object, on the last stdout line."""
    sys.stdout.flush()
    print(json.dumps(obj, separators=(",", ":")), flush=True)
