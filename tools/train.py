"""Train any cvsuite task from a recipe.

python tools/train.py --config configs/classification/finetune.yaml --data.root ROOT [--section.key value ...]
python tools/train.py --config ... --resume runs/exp/checkpoints/last.ckpt

Same as `cvsuite train ...`; `python tools/train.py --help` lists the flags.
"""

from __future__ import annotations

import sys

from cvsuite.commands import tool_main


def main(argv: list[str] | None = None) -> int:
    return tool_main("train", argv)


if __name__ == "__main__":
    sys.exit(main())
