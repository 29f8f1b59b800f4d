"""Export a checkpoint to TorchScript (<output>.pt) with a JSON sidecar (class names, input size, preprocessing).

python tools/export.py --ckpt runs/exp/checkpoints/best.ckpt --output exported/model
"""

from __future__ import annotations

import argparse
import sys

from cvsuite.cli import main_wrapper, parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--ckpt", required=True, help="checkpoint written by tools/train.py")
    parser.add_argument("--output", required=True, help="path without suffix; .pt and .json are written")
    parser.add_argument("--config", help="recipe YAML (default: the one stored in the checkpoint)")
    args, overrides = parse(parser, argv)

    def run() -> None:
        from cvsuite.export import export_torchscript

        print(f"exported: {export_torchscript(args.ckpt, args.output, args.config, overrides)}")

    return main_wrapper(run)


if __name__ == "__main__":
    sys.exit(main())
