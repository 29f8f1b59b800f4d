"""Write the demo's real two-class photo set (skimage's LFW subset: faces vs non-faces) to a folder.

python tools/make_demo_data.py data/faces
"""

from __future__ import annotations

import argparse
import sys

from cvsuite.demo_data import write_faces


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", nargs="?", default="data/faces")
    parser.add_argument("--size", type=int, default=64, help="side of the written images in pixels")
    args = parser.parse_args(argv)
    print(f"wrote {write_faces(args.root, args.size)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
