"""Check a dataset before training: counts per class and split, image sizes, imbalance, broken files,
orphan labels, bad boxes or mask values, files in both splits. Exit 2 on errors.

python tools/check.py --config configs/detection/finetune.yaml --data.root ROOT

Same as `cvsuite check ...`; `python tools/check.py --help` lists the flags.
"""

from __future__ import annotations

import sys

from cvsuite.commands import tool_main


def main(argv: list[str] | None = None) -> int:
    return tool_main("check", argv)


if __name__ == "__main__":
    sys.exit(main())
