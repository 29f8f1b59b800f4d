"""Export a checkpoint to ONNX (DIR/model.onnx) or TorchScript (DIR/model.pt) with a JSON sidecar, then
check the exported model against PyTorch on real images (exit 1 above the tolerance; the file is kept).

python tools/export.py --ckpt runs/exp/checkpoints/best.ckpt --format onnx --output exported/

Same as `cvsuite export ...`; `python tools/export.py --help` lists the flags.
"""

from __future__ import annotations

import sys

from cvsuite.commands import tool_main


def main(argv: list[str] | None = None) -> int:
    return tool_main("export", argv)


if __name__ == "__main__":
    sys.exit(main())
