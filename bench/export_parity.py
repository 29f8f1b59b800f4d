"""What `cvsuite export`'s parity check measures on real data sets of several shapes.

For each set: a short fine-tune of its task's recipe (one epoch, a few batches: the check is about the export, not
accuracy), then ONNX and TorchScript exports; prints the largest difference between the file and PyTorch, the images
checked (validation images plus the two odd, non-square resizes the check adds) and their sizes.

    python bench/export_parity.py --data ../shared/data --work /tmp/export-parity

A run folder that already holds ``checkpoints/best.ckpt`` is exported as it is (no training).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SETS = {
    # name: (task recipe, data folder, overrides)
    "raccoon": (
        "configs/detection/finetune.yaml",
        "raccoon",
        ["--data.image_size", "192", "--trainer.limit_train_batches", "8"],
    ),
    "weather4": (
        "configs/classification/finetune.yaml",
        "weather4",
        ["--data.image_size", "128", "--trainer.limit_train_batches", "8"],
    ),
    "dubai_aerial": (
        "configs/segmentation/finetune.yaml",
        "dubai_aerial",
        [
            "--data.image_size",
            "320",
            "--data.crop_size",
            "128",
            "--trainer.limit_train_batches",
            "6",
            "--trainer.check_val_every_n_epoch",
            "1",
            "--data.class_names",
            "[building, land, road, vegetation, water, unlabeled]",
        ],
    ),  # fmt: skip
}


def main(argv: list[str] | None = None) -> None:
    from cvsuite.config import load_config
    from cvsuite.export import export
    from cvsuite.run import train

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--work", default="/tmp/export-parity")
    p.add_argument("--sets", nargs="*", default=list(SETS))
    args = p.parse_args(argv)
    rows = []
    for name in args.sets:
        recipe, folder, overrides = SETS[name]
        run = Path(args.work) / name
        if not (run / "checkpoints" / "best.ckpt").is_file():
            extra = ["--data.root", str(Path(args.data) / folder), "--trainer.max_epochs", "1"]
            extra += ["--trainer.default_root_dir", str(run), "--run.verbose", "false"]
            train(load_config(recipe, overrides + extra))
        for fmt in ("onnx", "torchscript"):
            result = export(run, Path(args.work) / f"{name}_{fmt}", fmt)
            meta = json.loads(result.sidecar.read_text())
            images = sorted({f"{w}x{h}" for h, w in meta["input"]["checked_images"]})
            inputs = sorted({f"{w}x{h}" for h, w in meta["input"]["checked_sizes"]})
            rows.append((name, meta["task"], fmt, result.max_diff, result.num_images, images, inputs))
            print(f"{name} {fmt}: {result.summary()}; inputs {', '.join(inputs)}", flush=True)
    print("\n| set | task | format | max difference | images | image sizes (w x h) | input sizes |")
    print("|---|---|---|---:|---:|---|---|")
    for name, task, fmt, diff, n, images, inputs in rows:
        print(f"| {name} | {task} | {fmt} | {diff:.2e} | {n} | {', '.join(images)} | {', '.join(inputs)} |")


if __name__ == "__main__":
    main()
