"""What the bench scripts share: run `tools/train.py` as a user does, timed as a whole process."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def train_tool(recipe: str, root: Path, out: Path, *overrides: str) -> tuple[float, Path, str]:
    """(wall seconds of the whole process, run folder, its stderr) of ``tools/train.py --config recipe``."""
    cmd = [sys.executable, "tools/train.py", "--config", recipe, "--data.root", str(root),
           "--trainer.default_root_dir", str(out), "--quiet", *overrides]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    run_dir = Path(proc.stdout.strip().splitlines()[-1].split("run folder: ", 1)[-1])
    return seconds, run_dir, proc.stderr


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())
