"""What a segmentation training step costs on this CPU, per decoder width and memory format, and what each buys in
a fixed wall-clock budget: the recipe's default (`configs/segmentation/finetune.yaml`) against cheaper variants,
on the ISBI membrane slices of ../shared/data (512x512 grey, 24 train / 6 val, seeded).

1. cost: seconds per training step (batch of data.batch_size crops) and per validation image, measured with the
   cost probe (`bench/probe.py`, `measure`), each as a ratio to the default, side by side in one run;
2. quality (with --budget): `tools/train.py --run.budget B` for each variant, mIoU of the best checkpoint on the
   whole validation split.

    python bench/segmentation_cost.py [--budget 2min] [--membrane ../shared/data/membrane]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench_data import write_segmentation_split
from probe import measure
from train_tool import REPO, metrics, train_tool

from cvsuite.config import load_config
from cvsuite.tasks import get_spec

RECIPE = "configs/segmentation/finetune.yaml"
VARIANTS = {
    "default (unet, width 128)": [],
    "unet, width 64": ["--model.decoder_width", "64"],
    "fpn, width 128": ["--model.decoder", "fpn"],
    "unet, width 128, channels_last": ["--model.channels_last", "true"],
    "unet, width 64, channels_last": ["--model.decoder_width", "64", "--model.channels_last", "true"],
}


def cost(root: Path, overrides: list[str]) -> tuple[float, float]:
    """(seconds per training step, seconds per validation image)."""
    cfg = load_config(str(REPO / RECIPE), ["--data.root", str(root), *overrides])
    spec = get_spec(cfg.task)
    dm = spec.build_datamodule(cfg, None)
    dm.setup("fit")
    step_s, _, val_batch_s, _ = measure(spec.build_module(cfg, dm), dm, cfg.trainer)
    return step_s, val_batch_s / cfg.data.batch_size


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--membrane", default=str(REPO.parent / "shared" / "data" / "membrane"))
    p.add_argument("--budget", default=None, help="also train each variant for this wall-clock budget")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cvsuite-segcost-"))
    root = write_segmentation_split(Path(args.membrane), tmp / "data")
    # Interleaved rounds, fastest of each: the first measurements pay the process's warm-up, and neighbours come
    # and go; side by side in one run is what makes the ratios fair.
    costs: dict[str, tuple[float, float]] = {}
    for _ in range(args.rounds):
        for name, overrides in VARIANTS.items():
            step_s, val_s = cost(root, overrides)
            old = costs.get(name, (step_s, val_s))
            costs[name] = (min(old[0], step_s), min(old[1], val_s))
    head = "| variant | s/step | step vs default | s/val image | val vs default |"
    print(head + (" mIoU | wall s |" if args.budget else ""))
    print("|---|---:|---:|---:|---:|" + ("---:|---:|" if args.budget else ""))
    base = costs[next(iter(VARIANTS))]
    for i, (name, overrides) in enumerate(VARIANTS.items()):
        step_s, val_s = costs[name]
        row = f"| {name} | {step_s:.3f} | {step_s / base[0]:.2f} | {val_s:.3f} | {val_s / base[1]:.2f} |"
        if args.budget:
            seconds, run_dir, _ = train_tool(RECIPE, root, tmp / f"run-{i}", "--run.budget", args.budget, *overrides)
            row += f" {metrics(run_dir)['miou']:.3f} | {seconds:.0f} |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
