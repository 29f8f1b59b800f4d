"""Evaluate a checkpoint on the validation split; the last stdout line is the metrics as one JSON object,
also written to <run>/eval_metrics.json (or --output); a readable table goes to stderr.

    python tools/eval.py --ckpt runs/exp/checkpoints/best.ckpt [--config RECIPE] [--data.root ROOT]
        [--predictions detections.json]

Same as `cvsuite eval ...`; `python tools/eval.py --help` lists the flags.
"""

from __future__ import annotations

import sys

from cvsuite.commands import tool_main


def main(argv: list[str] | None = None) -> int:
    return tool_main("eval", argv)


if __name__ == "__main__":
    sys.exit(main())
