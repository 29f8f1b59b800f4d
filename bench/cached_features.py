"""The frozen phase with and without `finetune.cache_features`, side by side in one run: `tools/train.py` with
`configs/classification/finetune.yaml` on real photos (raccoon vs background crops from ../shared/data/raccoon),
the backbone frozen for the first `--freeze` of `--epochs` epochs; wall time of each whole process and the
accuracy it reached.

    python bench/cached_features.py [--epochs 6] [--freeze 3] [--image-size 128]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from train_tool import REPO, metrics, train_tool

from cvsuite.demo_data import write_raccoon_crops


def run(root: Path, out: Path, args: argparse.Namespace, cache: bool) -> tuple[float, dict]:
    seconds, run_dir, _ = train_tool(
        "configs/classification/finetune.yaml", root, out, "--data.image_size", str(args.image_size),
        "--trainer.max_epochs", str(args.epochs), "--finetune.freeze_epochs", str(args.freeze),
        "--finetune.freeze_share", "null",
        "--finetune.cache_features", str(cache).lower(), "--run.early_stopping_patience", "null",
    )  # fmt: skip
    return seconds, metrics(run_dir)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--raccoon", default=str(REPO.parent / "shared" / "data" / "raccoon"))
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--freeze", type=int, default=3)
    p.add_argument("--image-size", type=int, default=128)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cvsuite-cache-"))
    root = write_raccoon_crops(args.raccoon, tmp / "data", size=args.image_size)
    results = {cache: run(root, tmp / f"run-{cache}", args, cache) for cache in (False, True)}
    print(f"{args.epochs} epochs, backbone frozen for the first {args.freeze}, {args.image_size} px")
    print("| frozen phase | wall s (whole process) | accuracy | auroc |")
    print("|---|---:|---:|---:|")
    for cache, (seconds, m) in results.items():
        name = "cached features" if cache else "backbone every step"
        print(f"| {name} | {seconds:.1f} | {m['accuracy']:.3f} | {m['auroc']:.3f} |")
    print(f"speed-up of the whole run: {results[False][0] / results[True][0]:.2f}x")


if __name__ == "__main__":
    main()
