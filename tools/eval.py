"""Evaluate a checkpoint on the validation split; the last stdout line is the metrics as one JSON object,
also written to <run>/eval_metrics.json (or --output).

    python tools/eval.py --ckpt runs/exp/checkpoints/best.ckpt [--split val|test] [--data.root ROOT]
        [--data.val_root FOLDER] [--config RECIPE] [--predictions detections.json]

By default exactly the validation files stored in the checkpoint are scored; --split test scores ROOT/test,
--data.val_root a folder laid out like a split. The JSON says which ("split", "split_files", "data_root",
"num_samples").
"""

from __future__ import annotations

import argparse
import sys

from cvsuite.cli import main_wrapper, parse, print_json_last
from cvsuite.run import evaluate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--ckpt", required=True, help="checkpoint written by tools/train.py")
    parser.add_argument("--config", help="recipe YAML (default: the one stored in the checkpoint)")
    parser.add_argument("--output", help="JSON file to write (default: <run>/eval_metrics.json)")
    parser.add_argument("--split", default="val", choices=("val", "test"), help="val: the stored validation files")
    parser.add_argument("--predictions", help="also write the predictions here (detection: COCO results JSON)")
    args, overrides = parse(parser, argv)
    return main_wrapper(
        lambda: print_json_last(evaluate(args.ckpt, args.config, overrides, args.output, args.predictions, args.split))
    )


if __name__ == "__main__":
    sys.exit(main())
