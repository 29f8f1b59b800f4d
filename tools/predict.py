"""Predict images (a file or a folder) with a checkpoint.

python tools/predict.py --ckpt runs/exp/checkpoints/best.ckpt --input photos/ --output preds/ [--topk 5]
"""

from __future__ import annotations

import argparse
import sys

from cvsuite.cli import main_wrapper, parse
from cvsuite.run import predict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--ckpt", required=True, help="checkpoint written by tools/train.py")
    parser.add_argument("--input", required=True, help="image file or folder")
    parser.add_argument("--output", required=True, help="folder for the predictions")
    parser.add_argument("--config", help="recipe YAML (default: the one stored in the checkpoint)")
    parser.add_argument("--topk", type=int, help="classification: how many classes per image (default 5)")
    args, overrides = parse(parser, argv)
    options = {"topk": args.topk} if args.topk else {}

    def run() -> None:
        out = predict(args.ckpt, args.input, args.output, args.config, overrides, **options)
        print(f"predictions: {out}")

    return main_wrapper(run)


if __name__ == "__main__":
    sys.exit(main())
