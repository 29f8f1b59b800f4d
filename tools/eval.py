"""Evaluate a checkpoint on the validation split; the last stdout line is the metrics as one JSON object,
also written to <run>/eval_metrics.json (or --output); a readable table goes to stderr.

    python tools/eval.py --ckpt runs/exp/checkpoints/best.ckpt [--split val|test] [--data.root ROOT]
        [--data.val_root FOLDER] [--config RECIPE] [--predictions detections.json]

By default exactly the validation files stored in the checkpoint are scored; --split test scores ROOT/test,
--data.val_root a folder laid out like a split. The JSON says which ("split", "split_files", "data_root",
"num_samples").
"""

from __future__ import annotations

import sys

from cvsuite.commands import tool_main


def main(argv: list[str] | None = None) -> int:
    return tool_main("eval", argv)


if __name__ == "__main__":
    sys.exit(main())
