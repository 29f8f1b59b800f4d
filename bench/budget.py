"""Does a `--run.budget` run end on time? `tools/train.py` with the classification recipe on real photos (raccoon vs
background crops from ../shared/data/raccoon), for each budget: the whole process's wall time against the budget,
the plan it printed and the accuracy it reached.

    python bench/budget.py [--budgets 90s 3min] [--image-size 128] [--raccoon ../shared/data/raccoon]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import yaml
from train_tool import REPO, metrics, train_tool

from cvsuite.budget import parse_duration
from cvsuite.demo_data import write_raccoon_crops

RECIPE = "configs/classification/finetune.yaml"


def run(root: Path, out: Path, budget: str, size: int) -> tuple[float, str, dict, dict]:
    seconds, run_dir, stderr = train_tool(
        RECIPE, root, out, "--data.image_size", str(size), "--run.budget", budget,
        "--run.early_stopping_patience", "null",
    )  # fmt: skip
    plan = next((line.split("cvsuite: ", 1)[-1] for line in stderr.splitlines() if "budget plan" in line), "?")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    return seconds, plan, metrics(run_dir), config


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--raccoon", default=str(REPO.parent / "shared" / "data" / "raccoon"))
    p.add_argument("--budgets", nargs="+", default=["90s", "3min"])
    p.add_argument("--image-size", type=int, default=128)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cvsuite-budget-"))
    root = write_raccoon_crops(args.raccoon, tmp / "data", size=args.image_size)
    print("| budget | wall s (whole process) | wall / budget | epochs planned | val every | accuracy |")
    print("|---|---:|---:|---:|---:|---:|")
    for budget in args.budgets:
        seconds, plan, metrics, config = run(root, tmp / f"run-{budget}", budget, args.image_size)
        limit = parse_duration(budget)
        trainer = config["trainer"]
        print(
            f"| {budget} | {seconds:.1f} | {seconds / limit:.2f} | {trainer['max_epochs']} | "
            f"{trainer.get('check_val_every_n_epoch', 1)} | {metrics['accuracy']:.3f} |",
            flush=True,
        )
        print(f"  {plan}", file=sys.stderr)


if __name__ == "__main__":
    main()
