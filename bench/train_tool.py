"""What the bench scripts share: run `tools/train.py` as a user does, timed as a whole process."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def train_tool(
    recipe: str, root: Path, out: Path, *overrides: str, timeout: float | None = None
) -> tuple[float, Path, str]:
    """(wall seconds of the whole process, run folder, its stderr) of ``tools/train.py --config recipe``; exits
    with the command and its stderr when it fails or runs past `timeout` seconds."""
    cmd = [sys.executable, "tools/train.py", "--config", recipe, "--data.root", str(root),
           "--trainer.default_root_dir", str(out), "--quiet", *overrides]  # fmt: skip
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        stderr = (err.stderr or b"").decode(errors="replace")  # bytes here, whatever text= says
        sys.exit(f"{' '.join(cmd)}:\n{stderr[-3000:]}\ntimed out after {timeout:.0f} s")
    seconds = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    run_dir = Path(proc.stdout.strip().splitlines()[-1].split("run folder: ", 1)[-1])
    return seconds, run_dir, proc.stderr


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def write_gan_crops(src: str | Path, folder: str | Path, size: int = 64) -> Path:
    """Every annotated object of a VOC set (``images/*.jpg``, ``annotations/*.xml``) as a ``size`` px PNG: a square
    around its box (side = the box's longer side, shifted and clipped to stay inside the photo), so the object keeps
    its aspect ratio and the frame holds a little context. Returns `folder`."""
    src, folder = Path(src), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for xml in sorted((src / "annotations").glob("*.xml")):
        tree = ET.parse(xml).getroot()
        image = Image.open(src / "images" / tree.findtext("filename")).convert("RGB")
        for k, obj in enumerate(tree.iter("object")):
            x0, y0, x1, y1 = (float(obj.findtext(f"bndbox/{c}")) for c in ("xmin", "ymin", "xmax", "ymax"))
            side = min(max(x1 - x0, y1 - y0), image.width, image.height)
            left = min(max(0.0, (x0 + x1 - side) / 2), image.width - side)
            top = min(max(0.0, (y0 + y1 - side) / 2), image.height - side)
            crop = image.crop((round(left), round(top), round(left + side), round(top + side)))
            crop.resize((size, size), Image.LANCZOS).save(folder / f"{xml.stem}_{k}.png")
    return folder
