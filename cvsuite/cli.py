"""Argument parsing shared by tools/*.py: a few named flags, the rest are ``--section.key value`` overrides."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from cvsuite.config import ConfigError
from cvsuite.data.common import DatasetError
from cvsuite.models.backbone import WeightsNotFoundError

# Errors that are the user's to fix: print the message, not a traceback.
USER_ERRORS = (ConfigError, DatasetError, WeightsNotFoundError, FileNotFoundError, ValueError, KeyError)


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """Known flags, plus every remaining ``--section.key value`` as an override list."""
    args, rest = parser.parse_known_args(argv)
    return args, rest


def main_wrapper(fn: Callable[[], Any]) -> int:
    """Run `fn`; a user error exits 2 with its message instead of a traceback."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        fn()
    except USER_ERRORS as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


def print_json_last(obj: dict[str, Any]) -> None:
    """The contract of eval.py: exactly one JSON object, on the last stdout line."""
    sys.stdout.flush()
    print(json.dumps(obj, separators=(",", ":")), flush=True)
