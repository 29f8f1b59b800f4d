"""Classification, side by side in one run, on a real two-class photo set (raccoon vs background crops from
../shared/data/raccoon, 263 train / 80 val images):

1. accuracy: configs/classification/finetune.yaml as a user runs it, against a careful hand-written timm
   fine-tune (bench/plain_timm_finetune.py) with the same model, data, image size, batch size and epochs;
2. speed: the whole `tools/train.py` process against that plain PyTorch script doing the same steps (no
   freezing, same lr groups and schedule), as wall-clock seconds of both processes and their ratio.

    python bench/classification_finetune.py [--epochs 5] [--image-size 128] [--raccoon ../shared/data/raccoon]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cvsuite.demo_data import write_raccoon_crops

REPO = Path(__file__).resolve().parents[1]


def timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return time.perf_counter() - start, out.stdout


def ours(root: Path, run: Path, epochs: int, size: int, batch: int, *extra: str) -> tuple[float, dict]:
    cmd = [
        sys.executable,
        "tools/train.py",
        "--config",
        "configs/classification/finetune.yaml",
        "--data.root",
        str(root),
        "--trainer.max_epochs",
        str(epochs),
        "--data.image_size",
        str(size),
        "--data.batch_size",
        str(batch),
        "--trainer.default_root_dir",
        str(run),
        "--trainer.enable_progress_bar",
        "false",
        "--run.early_stopping_patience",
        "null",
        *extra,
    ]
    seconds, _ = timed(cmd)
    return seconds, json.loads((run / "metrics.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--raccoon", default=str(REPO.parent / "shared" / "data" / "raccoon"))
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cvsuite-bench-"))
    root = write_raccoon_crops(args.raccoon, tmp / "data", size=args.image_size)
    common = (args.epochs, args.image_size, args.batch_size)

    plain_cmd = [
        sys.executable,
        "bench/plain_timm_finetune.py",
        "--root",
        str(root),
        "--epochs",
        str(args.epochs),
        "--image-size",
        str(args.image_size),
        "--batch-size",
        str(args.batch_size),
        "--out",
        str(tmp / "plain.pth"),
    ]
    plain_s, plain_out = timed(plain_cmd)
    plain = json.loads(plain_out.strip().splitlines()[-1])
    # Same steps as the plain script: no frozen epoch, backbone at lr/10, 1 warm-up epoch then cosine.
    same_s, same = ours(root, tmp / "same", *common, "--finetune.freeze_epochs", "0")
    recipe_s, recipe = ours(root, tmp / "recipe", *common)

    print(
        f"data: {root} (train {sum(1 for _ in (root / 'train').rglob('*.png'))}, "
        f"val {sum(1 for _ in (root / 'val').rglob('*.png'))}); epochs {args.epochs}, "
        f"{args.image_size}px, batch {args.batch_size}"
    )
    print(
        f"val accuracy  finetune.yaml recipe: {recipe['accuracy']:.4f} ({recipe_s:.0f} s)   "
        f"hand-written timm: {plain['val_accuracy']:.4f} (best epoch {plain['best_val_accuracy']:.4f})"
    )
    print(
        f"process time  tools/train.py (same steps): {same_s:.1f} s   plain PyTorch: {plain_s:.1f} s   "
        f"speed ratio ours/plain = {plain_s / same_s:.3f}   (accuracy of that run {same['accuracy']:.4f})"
    )


if __name__ == "__main__":
    main()
