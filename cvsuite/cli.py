"""Argument parsing shared by tools/*.py: a few named flags, the rest are ``--section.key value`` overrides."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from collections.abc import Callable
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


def main_wrapper(fn: Callable[[], Any]) -> int:
    """Run `fn`; our own errors exit 2 with `error: message`, an interrupted training run exits 128 + the signal
    number (130 SIGINT, 143 SIGTERM) saying how to resume, anything else exits 1 with its traceback."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
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
    return 0


def print_json_last(obj: dict[str, Any]) -> None:
    """The contract of eval.py: exactly one JSON object, on the last stdout line."""
    sys.stdout.flush()
    print(json.dumps(obj, separators=(",", ":")), flush=True)
