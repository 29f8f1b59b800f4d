"""Every bench/ script imports: the benchmarks are run by hand, long after the code they import from has moved."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.parametrize("script", sorted(p.stem for p in BENCH.glob("*.py")))
def test_bench_script_imports(script, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # the scripts import each other as top-level modules
    monkeypatch.setattr(sys, "argv", [f"{script}.py", "--help"])
    importlib.import_module(script)  # an ImportError names the moved function
