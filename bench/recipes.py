"""Each task's default recipe against a careful plain PyTorch/timm reference, at the same wall-clock budget, on the
one real set per task the recipes were tuned on: a single-seed case of bench/generalise.py (which runs every set of
../shared/data over several seeds; its docstring says how each side runs and is scored).

- classification: raccoon vs background crops at the recipe's 224 px (`cvsuite.demo_data.write_raccoon_crops`,
  split by photo);
- detection: ../shared/data/raccoon (VOC) as an explicit seeded 80/20 train/val folder split (duplicates together);
- segmentation: ../shared/data/membrane (0 = membrane, 255 = cell) as an explicit seeded 24/6 folder split;
- generation: every annotated raccoon, cropped to a square around its box at 64 px (FID against all of them).

Each invocation runs afresh under --work/<UTC time>; the sets are written once under --work/data and reused.

    python bench/recipes.py [--tasks classification detection segmentation generation] [--budget 3min]
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from pathlib import Path

from bench_data import SHARED, build, write_segmentation_split  # noqa: F401  (imported from here by other benches)
from generalise import SIDES, TASKS, Case, data_size, run_all, table

from cvsuite.budget import parse_duration

TUNING = {
    "classification": "raccoon_crops",
    "detection": "raccoon",
    "segmentation": "membrane",
    "generation": "raccoon_gan",
}


def build_data(task: str, work: Path, raccoon: Path | None = None, membrane: Path | None = None) -> Path:
    """The tuning set of `task` written under ``work/data``, read from the folder that holds `raccoon` and
    `membrane` (default ../shared/data)."""
    shared = Path(raccoon or membrane).parent if raccoon or membrane else SHARED
    return build(TUNING[task], Path(work) / "data", data_size(task), shared)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    p.add_argument("--budget", default="3min", help="wall-clock budget of each side's whole process")
    p.add_argument("--seed", type=int, default=42, help="both sides' seed (42: the recipes' own)")
    p.add_argument("--shared", type=Path, default=SHARED, help="the real sets (../shared/data)")
    p.add_argument("--work", type=Path, default=Path("/tmp/recipes"), help="data and run folders go here")
    p.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    args = p.parse_args()
    budget_s = parse_duration(args.budget)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    print(f"budget {args.budget} ({budget_s:.0f} s) per side, {stamp} UTC, runs under {args.work}/{stamp}", flush=True)
    todo = [Case(task, TUNING[task], side, args.seed, budget_s) for task in args.tasks for side in args.sides]
    results = run_all(todo, args.work / stamp, args.shared, lock=None, data=args.work / "data")
    print(f"\nbudget {args.budget} per side (whole process, timed from outside), seed {args.seed}\n")
    print(table(results))


if __name__ == "__main__":
    main()
