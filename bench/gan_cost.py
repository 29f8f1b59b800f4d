"""What a training step of the few-shot GAN recipe (`configs/generation/fewshot.yaml`) costs on this CPU, per
memory format, side by side in one run: one discriminator step and one generator step on
a batch of the recipe's size, the recipe's own data module and Lightning loop (`bench/probe.py`'s step timer).

Under `--run.budget` a cheaper step is more steps in the same minutes, which is what the recipe's samples were
shown to need (BENCHMARKS.md, "Generation: tiling artefacts as numbers").

    python bench/gan_cost.py --images FOLDER [--rounds 3] [--steps 12]

FOLDER: any folder of images (e.g. ``bench/generalise.py``'s ``WORK/data/raccoon_gan-64``). Interleaved rounds,
the median step of each probe, the fastest probe of each variant: neighbours on a shared machine come and go.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from probe import _probe_trainer, _StepTimer
from train_tool import REPO

from cvsuite.config import load_config
from cvsuite.tasks import get_spec

RECIPE = "configs/generation/fewshot.yaml"
VARIANTS = {
    "recipe before (NCHW)": ["--model.channels_last", "false"],
    "channels_last": ["--model.channels_last", "true"],
}


def step_seconds(images: Path, overrides: list[str], steps: int) -> float:
    """Median seconds of a training step (the first one, which pays for lazy initialisation, left out)."""
    cfg = load_config(str(REPO / RECIPE), ["--data.root", str(images), *overrides])
    spec = get_spec(cfg.task)
    dm = spec.build_datamodule(cfg, None)
    dm.setup("fit")
    module = spec.build_module(cfg, dm)
    timer = _StepTimer()
    trainer = _probe_trainer(cfg.trainer, max_steps=steps + 1, limit_val_batches=0, callbacks=[timer])
    trainer.fit(module, datamodule=dm)
    return statistics.median(timer.times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", required=True, type=Path)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=12)
    args = p.parse_args()
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, overrides in VARIANTS.items():
            seconds = step_seconds(args.images, overrides, args.steps)
            best[name] = min(best.get(name, seconds), seconds)
    base = best[next(iter(VARIANTS))]
    print("| variant | s/step | step vs recipe before | steps per minute |")
    print("|---|---:|---:|---:|")
    for name, seconds in best.items():
        print(f"| {name} | {seconds:.3f} | {seconds / base:.2f} | {60 / seconds:.0f} |")


if __name__ == "__main__":
    main()
