"""Files a command writes, valid for standard readers and never half-written, and output paths checked before any
work starts.

- CSV goes through the `csv` module (a file named ``a,b.jpg`` is quoted, not split into two columns), UTF-8.
- JSON is strict: NaN and infinities (an undefined metric, e.g. R² of a constant target) are written as ``null``.
- A file name that is not valid UTF-8 (bytes from another encoding) is written with ``\\xNN`` escapes for the bytes
  that cannot be decoded (`display_path`), so the CSV/JSON stays valid UTF-8.
- Every file is written to a temporary name in its folder and renamed into place (`os.replace`, atomic on one
  filesystem): an error or a kill mid-write leaves the previous file or none, never a truncated one.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from cvsuite.errors import ConfigError


def display_path(path: str | os.PathLike) -> str:
    """`path` as text for a CSV or JSON file: as it is when it decodes as UTF-8, else with its undecodable bytes as
    ``\\xNN`` (Python keeps them as lone surrogates, which no UTF-8 file can hold)."""
    return _text(os.fspath(path))


def _text(text: str) -> str:
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that did not come from a file name's byte
        return text.encode("utf-8", "replace").decode("utf-8")


def json_safe(value: Any) -> Any:
    """`value` with NaN/±inf as None, tuples as lists, numpy scalars/arrays and paths as plain JSON types."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k) if not isinstance(k, (str, int, float, bool)) else k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, os.PathLike):
        return display_path(value)
    if isinstance(value, str):
        return _text(value)
    if hasattr(value, "tolist") and not isinstance(value, (bool, int)):  # numpy/torch scalars and arrays
        return json_safe(value.tolist())
    return value


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path next to `path` (same suffix, so writers that pick a format from it still do) that becomes
    `path` when the block ends without an error, and is removed when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".partial{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path: str | Path, newline: str | None = None) -> Iterator[IO[str]]:
    """A UTF-8 text file at `path`, written atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline=newline) as fh:
        yield fh


def write_text(path: str | Path, text: str) -> Path:
    with atomic_open(path) as fh:
        fh.write(text)
    return Path(path)


def write_json(path: str | Path, obj: Any, indent: int | None = 2, one_per_line: bool = False) -> Path:
    """Strict JSON (NaN/inf -> null). `one_per_line`: a list with one compact item per line (large prediction
    files stay readable without tens of MB of indentation)."""
    obj = json_safe(obj)
    if one_per_line and isinstance(obj, list):
        text = "[\n" + ",\n".join(json.dumps(x, allow_nan=False) for x in obj) + "\n]\n"
    else:
        text = json.dumps(obj, indent=indent, allow_nan=False) + "\n"
    return write_text(path, text)


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """A header and rows through `csv.writer` (quoting as needed); paths in the rows go through `display_path`."""
    with atomic_open(path, newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for row in rows:
            writer.writerow([display_path(v) if isinstance(v, (str, os.PathLike)) else v for v in row])
    return Path(path)


# ---- output paths, checked before any work --------------------------------------------------------------------
def _writable_parent(path: Path, flag: str) -> None:
    """The nearest existing folder above `path` must be a folder we can create files in."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{flag} {path}: {parent} is a file, not a folder; choose another place")
    try:
        with tempfile.TemporaryFile(dir=parent):  # os.access says yes to root on a read-only filesystem
            pass
    except OSError as err:
        raise ConfigError(f"{flag} {path}: cannot write in {parent} ({err.strerror}); choose another place") from err


def check_output_file(path: str | Path, flag: str) -> Path:
    """`path` can be written as a file (it may exist: it is replaced). Raises ConfigError naming `flag`."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; give a file name (e.g. {path / 'eval_metrics.json'})")
    _writable_parent(path, flag)
    return path


def check_output_folder(path: str | Path, flag: str) -> Path:
    """`path` is, or can be created as, a folder we can write in. Raises ConfigError naming `flag`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is a file; give a folder (it is created if missing)")
    if path.is_dir():
        try:
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as err:
            raise ConfigError(f"{flag} {path}: cannot write in this folder ({err.strerror})") from err
    else:
        _writable_parent(path, flag)
    return path
