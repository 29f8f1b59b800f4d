"""Train any cvsuite task from a recipe.

python tools/train.py --config configs/classification/finetune.yaml --data.root ROOT [--section.key value ...]
python tools/train.py --config ... --resume runs/exp/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import sys

from cvsuite.cli import main_wrapper, parse
from cvsuite.config import load_config
from cvsuite.run import train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--config", required=True, help="recipe YAML")
    parser.add_argument("--resume", help="checkpoint to continue from (e.g. <run>/checkpoints/last.ckpt)")
    args, overrides = parse(parser, argv)

    def run() -> None:
        run_dir = train(load_config(args.config, overrides), resume=args.resume)
        print(f"run folder: {run_dir}")

    return main_wrapper(run)


if __name__ == "__main__":
    sys.exit(main())
