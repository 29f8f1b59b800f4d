"""The offline backbones side by side: `configs/classification/finetune.yaml` with `tf_efficientnet_lite0`, `lite1`
and `lite2` (all three from their PyPI wheels, no download) on real photos (raccoon vs background crops from
../shared/data/raccoon), same epochs and image size; wall time of each whole `tools/train.py` process and the
accuracy it reached.

    python bench/backbones.py [--epochs 5] [--image-size 128]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from train_tool import REPO, metrics, train_tool

from cvsuite.demo_data import write_raccoon_crops

BACKBONES = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--raccoon", default=str(REPO.parent / "shared" / "data" / "raccoon"))
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--image-size", type=int, default=128)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cvsuite-backbones-"))
    root = write_raccoon_crops(args.raccoon, tmp / "data", size=args.image_size)
    print(f"{args.epochs} epochs at {args.image_size} px")
    print("| backbone | wall s (whole process) | time vs lite0 | accuracy | AUROC |")
    print("|---|---:|---:|---:|---:|")
    base = None
    for name in BACKBONES:
        seconds, run_dir, _ = train_tool(
            "configs/classification/finetune.yaml", root, tmp / name, "--model.backbone", name,
            "--data.image_size", str(args.image_size), "--trainer.max_epochs", str(args.epochs),
            "--run.early_stopping_patience", "null",
        )  # fmt: skip
        base = base or seconds
        m = metrics(run_dir)
        print(
            f"| {name} | {seconds:.1f} | {seconds / base:.2f}x | {m['accuracy']:.3f} | {m['auroc']:.3f} |", flush=True
        )


if __name__ == "__main__":
    main()
