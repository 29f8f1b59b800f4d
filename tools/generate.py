"""Write images sampled from a trained GAN checkpoint (its EMA generator), as PNGs at the trained size.

python tools/generate.py --ckpt runs/generation/fewshot/checkpoints/best.ckpt --num 100 --output samples/ [--seed 0]

Same as `cvsuite generate ...`; `python tools/generate.py --help` lists the flags.
"""

from __future__ import annotations

import sys

from cvsuite.commands import tool_main


def main(argv: list[str] | None = None) -> int:
    return tool_main("generate", argv)


if __name__ == "__main__":
    sys.exit(main())
