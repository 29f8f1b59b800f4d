"""Predict images (a file or a folder) with a checkpoint.

python tools/predict.py --ckpt runs/exp/checkpoints/best.ckpt --input photos/ --output preds/ [--topk 5]

Same as `cvsuite predict ...`; `python tools/predict.py --help` lists the flags.
"""

from __future__ import annotations

import sys

from cvsuite.commands import tool_main


def main(argv: list[str] | None = None) -> int:
    return tool_main("predict", argv)


if __name__ == "__main__":
    sys.exit(main())
