"""Print `name==lower-bound` for the packages whose lower bounds CI checks, read from pyproject.toml (one source)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

CHECKED = ("lightning", "timm", "segmentation-models-pytorch", "albumentations", "torchmetrics")

text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
pins = []
for name in CHECKED:
    found = re.search(rf'"{re.escape(name)}>=([0-9][^",;\s]*)"', text)
    if not found:
        sys.exit(f"pyproject.toml: no '{name}>=X' lower bound")
    pins.append(f"{name}=={found.group(1)}")
print(" ".join(pins))
