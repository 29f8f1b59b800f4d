"""One CPU process against two (Lightning DDP, gloo) on the same recipe: throughput, and the validation metrics
the 2-process run logs against one process's tools/eval.py of its own checkpoint (they must be equal).

The recipe: the default backbone (tf_efficientnet_lite0, offline weights) fine-tuned on generated colour
classes at 64 px, `--epochs` epochs, batch 16 per process. On a 2-core machine two processes share the two cores
that one process already uses, so no speed-up is expected here; the point is that the numbers are right.

    python bench/ddp_cpu.py [--images 96] [--epochs 2]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
KEYS = ("accuracy", "f1", "auroc")
COLOURS = {"red": (200, 50, 50), "green": (50, 180, 60), "blue": (50, 60, 200)}


def write_data(root: Path, per_class: int) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", max(3, per_class // 4) + 1)):  # odd val: one padded sample
        for name, colour in COLOURS.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = np.clip(np.array(colour) + rng.normal(0, 60, (64, 64, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def train(recipe: Path, out: Path, devices: int) -> tuple[float, Path]:
    flags = ["--trainer.default_root_dir", str(out), "--trainer.accelerator", "cpu", "--trainer.devices", str(devices)]
    if devices > 1:
        flags += ["--trainer.strategy", "ddp"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // devices))}
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "tools/train.py", "--config", str(recipe), *flags],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start, out


def last_row(run: Path, epoch: int = -1) -> dict[str, str]:
    with (run / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))[epoch]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=96, help="training images per class")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_data(tmp / "data", args.images)
        recipe = tmp / "recipe.yaml"
        recipe.write_text(
            yaml.safe_dump(
                {
                    "task": "classification",
                    "data": {
                        "root": str(data),
                        "image_size": 64,
                        "batch_size": 16,
                        "num_workers": 0,
                        "augment": "light",
                    },
                    "optim": {"lr": 1e-3, "scheduler": "cosine"},
                    "run": {"plots": False},
                    "trainer": {"max_epochs": args.epochs, "enable_progress_bar": False, "num_sanity_val_steps": 0},
                }
            )
        )
        n_train = args.images * len(COLOURS) * args.epochs
        print(f"{os.cpu_count()} CPU cores; {args.images * 3} training images x {args.epochs} epochs, 64 px\n")
        print("| processes | wall s (incl. start-up) | train img/s | " + " | ".join(f"val_{k}" for k in KEYS) + " |")
        print("|---:|---:|---:|" + "---:|" * len(KEYS))
        runs = {}
        for devices in (1, 2):
            seconds, run = train(recipe, tmp / f"run{devices}", devices)
            row = last_row(run)
            runs[devices] = run
            print(
                f"| {devices} | {seconds:.1f} | {n_train / seconds:.1f} | "
                + " | ".join(f"{float(row[f'val_{k}']):.6f}" for k in KEYS)
                + " |",
                flush=True,
            )
        ckpt = runs[2] / "checkpoints" / "last.ckpt"
        out = subprocess.run(
            [sys.executable, "tools/eval.py", "--ckpt", str(ckpt)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            check=True,
            capture_output=True,
            text=True,
        )
        single = json.loads(out.stdout.strip().splitlines()[-1])
        # The row of the epoch last.ckpt holds (Lightning 2.6 rewrites last.ckpt only when best.ckpt improves).
        epoch = torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"]
        logged = last_row(runs[2], epoch)
        same = all(abs(float(logged[f"val_{k}"]) - single[k]) < 2e-6 for k in KEYS)
        shown = ", ".join(f"{k} {float(logged[f'val_{k}']):.6f}" for k in KEYS)
        print(f"\n2-process run, epoch {epoch} (the one last.ckpt holds) as logged: {shown}")
        print("tools/eval.py of its last.ckpt, 1 process: " + ", ".join(f"{k} {single[k]:.6f}" for k in KEYS))
        print(f"equal: {same} (num_samples {single['num_samples']})")
        return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
