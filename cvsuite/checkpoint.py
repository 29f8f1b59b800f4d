"""Reading checkpoint files: what a cvsuite checkpoint holds beyond Lightning's own keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# The resolved recipe, stored in every checkpoint so eval/predict/export need nothing else.
CONFIG_KEY = "cvsuite_config"


def read_checkpoint(ckpt: str | Path) -> dict[str, Any]:
    """The checkpoint's contents; raises a named error for a missing file or one that is not a cvsuite checkpoint."""
    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise FileNotFoundError(f"--ckpt {ckpt}: checkpoint not found")
    stored = torch.load(ckpt, map_location="cpu", weights_only=False)
    if CONFIG_KEY not in stored:
        raise ValueError(f"{ckpt}: not a cvsuite checkpoint (no '{CONFIG_KEY}' entry); train it with tools/train.py")
    return stored
